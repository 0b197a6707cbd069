"""Half-precision export: float16 inside, float32 at the edges, verified against the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from app.config import Settings
from app.inference import load_model
from model.export import ExportSummary, export_model
from model.metadata import INPUT_NAME, OUTPUT_NAME, ModelCard
from model.verify import FP16_TOLERANCE, sample_images, verify_model


@pytest.fixture(scope="module")
def half_model(tmp_path_factory: pytest.TempPathFactory) -> ExportSummary:
    output = tmp_path_factory.mktemp("fp16") / "alexnet-fp16.onnx"
    return export_model("random", output=output, cache_dir=output.parent, progress=False, precision="fp16")


def test_weights_are_half_and_edges_are_float(half_model: ExportSummary, served_model: ExportSummary) -> None:
    model = onnx.load(str(half_model.output))
    assert {tensor.data_type for tensor in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    card = ModelCard.from_props({prop.key: prop.value for prop in model.metadata_props})
    assert card.precision == "fp16"
    assert card.weights_sha256 == served_model.weights_sha256  # the same weights, only stored in half
    assert half_model.size_bytes < 0.55 * served_model.size_bytes


def test_half_model_verifies(half_model: ExportSummary) -> None:
    report = verify_model(half_model.output)
    assert report.passed, report.lines()
    assert report.tolerance == FP16_TOLERANCE


def test_half_model_agrees_with_full_precision(half_model: ExportSummary, served_model: ExportSummary) -> None:
    card = ModelCard.from_props(
        {prop.key: prop.value for prop in onnx.load(str(served_model.output), load_external_data=False).metadata_props}
    )
    images = sample_images(card.preprocessing, batch=4, seed=3)
    providers = ["CPUExecutionProvider"]
    full = ort.InferenceSession(str(served_model.output), providers=providers).run([OUTPUT_NAME], {INPUT_NAME: images})
    half = ort.InferenceSession(str(half_model.output), providers=providers).run([OUTPUT_NAME], {INPUT_NAME: images})
    assert half[0].dtype == np.float32
    assert float(np.abs(half[0] - full[0]).max()) < FP16_TOLERANCE
    assert (half[0].argmax(axis=1) == full[0].argmax(axis=1)).all()


def test_files_without_a_precision_key_are_float32(served_model: ExportSummary) -> None:
    props = {
        prop.key: prop.value for prop in onnx.load(str(served_model.output), load_external_data=False).metadata_props
    }
    del props["alexnet.precision"]
    assert ModelCard.from_props(props).precision == "fp32"


def test_the_service_loads_a_half_model(half_model: ExportSummary, tmp_path: Path) -> None:
    model = load_model(Settings(model_path=half_model.output, providers=["CPUExecutionProvider"]))
    assert model.card.precision == "fp16"
    probabilities = model.run(np.zeros((2, 3, 227, 227), dtype=np.float32))
    assert probabilities.shape == (2, 1000)
    assert probabilities.dtype == np.float32
