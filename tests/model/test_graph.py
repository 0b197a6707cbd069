from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from model.architecture import TORCHVISION_ALEXNET
from model.export import ExportSummary
from model.graph import OPSET, check_pooling_rounding
from model.labels import imagenet_labels
from model.metadata import (
    BVLC_PREPROCESSING,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_NAME,
    ModelCard,
)
from model.verify import sample_images


@pytest.fixture(scope="module")
def random_model(random_export: ExportSummary) -> onnx.ModelProto:
    return onnx.load(str(random_export.output))


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def test_opset_and_io_signature_with_dynamic_batch(random_model: onnx.ModelProto) -> None:
    assert [(opset.domain, opset.version) for opset in random_model.opset_import] == [("", OPSET)]
    assert OPSET >= 17
    (image,) = random_model.graph.input
    (probabilities,) = random_model.graph.output
    assert (image.name, _dims(image)) == (INPUT_NAME, ["N", 3, 227, 227])
    assert (probabilities.name, _dims(probabilities)) == (OUTPUT_NAME, ["N", NUM_CLASSES])
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_bvlc_layer_order_is_conv_relu_lrn_pool(random_model: onnx.ModelProto) -> None:
    ops = [node.op_type for node in random_model.graph.node]
    assert ops[:8] == ["Conv", "Relu", "LRN", "MaxPool", "Conv", "Relu", "LRN", "MaxPool"]
    assert ops[-3:] == ["Relu", "Gemm", "Softmax"]
    groups = [
        next(attribute.i for attribute in node.attribute if attribute.name == "group")
        for node in random_model.graph.node
        if node.op_type == "Conv"
    ]
    assert groups == [1, 2, 1, 2, 2]


def test_metadata_is_a_complete_model_card(random_model: onnx.ModelProto) -> None:
    card = ModelCard.from_props({prop.key: prop.value for prop in random_model.metadata_props})
    assert (card.architecture, card.weights, card.trained) == ("bvlc_alexnet", "random", False)
    assert card.preprocessing == BVLC_PREPROCESSING
    assert card.labels == imagenet_labels()


@pytest.mark.parametrize("batch", [1, 3])
def test_runs_with_any_batch_size(random_export: ExportSummary, batch: int) -> None:
    session = onnxruntime.InferenceSession(str(random_export.output), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: sample_images(BVLC_PREPROCESSING, batch, seed=5)})
    assert probabilities.shape == (batch, NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), np.ones(batch), rtol=1e-5)


def test_pooling_rounding_check_rejects_sizes_where_caffe_would_differ() -> None:
    check_pooling_rounding(TORCHVISION_ALEXNET, 224)
    with pytest.raises(ValueError, match="conv1 pool: Caffe gives 28, ONNX gives 27"):
        check_pooling_rounding(TORCHVISION_ALEXNET, 227)
