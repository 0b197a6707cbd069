"""The model under test: a given ONNX file, or seeded random weights exported once and cached.

Speed does not depend on the weights' values, so untrained weights measure the same network; the
report says so wherever it shows numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from model.export import export_model
from model.metadata import ModelCard

logger = logging.getLogger(__name__)

CACHED_MODEL_NAME = "alexnet-random.onnx"
UNTRAINED_NOTE = "random (untrained) weights: predictions are noise; the figures measure speed only"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    weights: str
    trained: bool
    sha256: str
    size_bytes: int
    note: str


def prepare_model(given: Path | None, cache_dir: Path) -> ModelFile:
    """`given` as is, else the cached random-weights export (built now if missing)."""
    path = given if given is not None else cache_dir / CACHED_MODEL_NAME
    if given is None and not path.is_file():
        logger.info("exporting a random-weights AlexNet to %s", path)
        export_model("random", output=path, progress=False)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; omit --model to build a random-weights one")
    card = read_card(path)
    return ModelFile(
        path=path,
        weights=card.weights,
        trained=card.trained,
        sha256=card.weights_sha256,
        size_bytes=path.stat().st_size,
        note="trained weights" if card.trained else UNTRAINED_NOTE,
    )


def read_card(path: Path) -> ModelCard:
    # Metadata only: a CPU session is the cheapest way to read it without another dependency.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelCard.from_props(dict(session.get_modelmeta().custom_metadata_map))
