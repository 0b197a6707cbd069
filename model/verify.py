"""Check an exported ONNX file: onnxruntime's output against the numpy reference on fixed inputs.

The reference runs on the weights stored in the file itself and the architecture named by its
model card, so a wrong graph (missing LRN, wrong groups, transposed fc weights) shows as a difference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs installed
from onnx import numpy_helper

from model import reference
from model.architecture import SPECS, AlexNetWeights, ArchitectureSpec, LayerWeights
from model.errors import VerificationError
from model.metadata import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelCardError, Preprocessing

TOLERANCE = 1e-5
# Half precision keeps ~3 significant digits through eight layers; measured up to ~5e-4 on seeded inputs.
FP16_TOLERANCE = 2e-3
DEFAULT_BATCH = 4


@dataclass(frozen=True)
class VerifyReport:
    path: Path
    card: ModelCard
    batch: int
    max_abs_diff: float
    same_top1: bool
    seconds: float

    @property
    def tolerance(self) -> float:
        return FP16_TOLERANCE if self.card.precision == "fp16" else TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff < self.tolerance and self.same_top1

    def lines(self) -> list[str]:
        verdict = "OK" if self.passed else "FAILED"
        return [
            f"verified   {self.path}: {verdict}",
            f"model      {self.card.architecture}, {self.card.weights} weights",
            f"trained    {str(self.card.trained).lower()}",
            f"precision  {self.card.precision}",
            f"max |diff| {self.max_abs_diff:.3g} over {self.batch} images (tolerance {self.tolerance:g})",
            f"top-1      {'identical' if self.same_top1 else 'DIFFERENT'}",
            f"time       {self.seconds:.1f} s",
        ]


def verify_model(path: Path, *, batch: int = DEFAULT_BATCH, seed: int = 0) -> VerifyReport:
    """Run `path` in onnxruntime (CPU) and the numpy reference on `batch` seeded images."""
    started = time.perf_counter()
    try:
        model = onnx.load(str(path))
    except OSError as error:
        raise VerificationError(f"cannot read {path}: {error.strerror}") from None
    except DecodeError:
        raise VerificationError(f"{path} is not an ONNX model") from None
    try:
        card = ModelCard.from_props({prop.key: prop.value for prop in model.metadata_props})
    except ModelCardError as error:
        raise VerificationError(f"{path}: {error}") from None
    images = sample_images(card.preprocessing, batch, seed)
    weights = weights_from_model(model, SPECS[card.architecture])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images})[0], dtype=np.float64)
    expected = reference.forward(weights, images)
    return VerifyReport(
        path=path,
        card=card,
        batch=batch,
        max_abs_diff=float(np.abs(actual - expected).max()),
        same_top1=bool((actual.argmax(axis=1) == expected.argmax(axis=1)).all()),
        seconds=time.perf_counter() - started,
    )


def sample_images(preprocessing: Preprocessing, batch: int, seed: int) -> npt.NDArray[np.float32]:
    """Seeded uniform RGB pixels, preprocessed as the card says (crop size, scale, order, mean, std)."""
    size = preprocessing.input_size
    pixels = np.random.default_rng(seed).uniform(0.0, 255.0, size=(batch, size, size, 3))
    scaled = pixels * (preprocessing.pixel_scale / 255.0)
    if preprocessing.channel_order == "BGR":
        scaled = scaled[..., ::-1]
    normalised = (scaled - np.array(preprocessing.mean)) / np.array(preprocessing.std)
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2), dtype=np.float32)


def weights_from_model(model: onnx.ModelProto, spec: ArchitectureSpec) -> AlexNetWeights:
    """The weights stored as the graph's initializers, named `conv1.weight` … `fc8.bias`."""
    # Half-precision files are checked against the reference run on their own (rounded) weights.
    arrays = {
        tensor.name: numpy_helper.to_array(tensor).astype(np.float32, copy=False) for tensor in model.graph.initializer
    }
    try:
        layers = {
            name: LayerWeights(weight=arrays[f"{name}.weight"], bias=arrays[f"{name}.bias"])
            for name in spec.layer_names
        }
    except KeyError as missing:
        raise VerificationError(f"the model has no initializer {missing.args[0]}") from None
    return AlexNetWeights(spec=spec, layers=layers)
