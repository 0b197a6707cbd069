"""The trained SqueezeNet 1.0 from ../shared/data, served as a STAND-IN for the BVLC AlexNet.

It has the BVLC AlexNet's input contract (227×227 BGR, mean-subtracted, 0-255) but no model card, so this
attaches the card `python -m model export --weights bvlc` writes, with the stand-in's own sha256. For the
benchmark only: a trained network whose answers can judge a decoding shortcut. It is not AlexNet.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import onnx

from model.export import source_card, write_atomically
from model.metadata import ModelCard
from model.sources import SOURCES

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STANDIN_SOURCE = SHARED_DATA / "squeezenet1.0" / "squeezenet1.0.onnx"
PHOTOS_DIR = SHARED_DATA / "imagenet-sample"
STANDIN_NAME = "squeezenet1.0-standin.onnx"
# The README's sha256 of the shared file: a different file would not be the stand-in the figures describe.
STANDIN_SHA256 = "479d40ac74d260cb3fe5bcaa79f67367f8e81a93281b21c8819ef89d071e07bf"


class StandInMissingError(FileNotFoundError):
    """The shared data folder (or a file in it) is absent, e.g. in a fresh clone elsewhere."""


def standin_card(sha256: str) -> ModelCard:
    """The BVLC model card as the exporter writes it, with the stand-in's digest in place of the weights'."""
    source = SOURCES["bvlc"]
    if source.file is None:
        raise RuntimeError("the bvlc source has no weights file")
    return source_card(source, weights_sha256=sha256, trained=True, source_url=source.file.url)


def standin_model(cache_dir: Path, source: Path = STANDIN_SOURCE) -> Path:
    """The stand-in with the BVLC card attached, written once under `cache_dir`."""
    if not source.is_file():
        raise StandInMissingError(f"{source} is absent: the trained stand-in comes with ../shared/data")
    output = cache_dir / STANDIN_NAME
    if output.is_file():
        return output
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != STANDIN_SHA256:
        raise ValueError(f"{source} has sha256 {digest}, not the stand-in's {STANDIN_SHA256}")
    model = onnx.load_from_string(data)
    onnx.helper.set_model_props(model, standin_card(digest).to_props())
    logger.info("writing the stand-in with the BVLC model card to %s", output)
    write_atomically(model, output)
    return output
