"""The trained stand-in for AlexNet, and the real photos it is judged on. For tests only.

No trained AlexNet can be downloaded here, so `../shared/data` (next to the repository; its README.md says
what is in it) holds SqueezeNet 1.0 from Caffe, trained on ImageNet, with exactly the BVLC AlexNet's input
contract (227x227, BGR, mean-subtracted, sorted-wnid labels), and 500 ImageNet photos, one per class. The
tests attach the project's own BVLC model card to a copy of that network, so the service serves it as it
would serve the real BVLC export and never learns it is not AlexNet. Nothing outside tests/ does this.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from bench.standin import STANDIN_SHA256, STANDIN_SOURCE
from model.export import source_card
from model.labels import imagenet_labels
from model.metadata import ModelCard
from model.sources import SOURCES
from tests.app.reference_preprocessing import bvlc_reference_tensor

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_DATA_RELATIVE = "../shared/data"
PHOTO_DIR = SHARED_DATA / "imagenet-sample"
SQUEEZENET = STANDIN_SOURCE
SQUEEZENET_SHA256 = STANDIN_SHA256
STANDIN_FILENAME = "standin-squeezenet1.0-as-bvlc-alexnet.onnx"
PHOTO_COUNT = 500
GREYSCALE_PHOTO_COUNT = 9
TENCH = "n01440764"  # the first class; the stand-in names its photo right

# The README's reference scores (top-1 63.8%, top-5 84.2%) minus 0.5 points: the bar.
TOP1_BAR = 0.633
TOP5_BAR = 0.837
BAR_MARGIN = 0.005
# The service must reproduce the reference's probabilities per photo to this.
PROBABILITY_TOLERANCE = 1e-4

TOP5 = 5
REFERENCE_BATCH = 50


def shared_data_missing() -> str | None:
    """Why the real-photo tests cannot run here (a fresh clone without the shared folder), or None."""
    if SQUEEZENET.is_file() and PHOTO_DIR.is_dir():
        return None
    return (
        f"the shared test data folder {SHARED_DATA} ({SHARED_DATA_RELATIVE} from the repository root) is absent: "
        "the tests on real photos with the trained stand-in network are skipped"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_squeezenet() -> None:
    found = file_sha256(SQUEEZENET)
    assert found == SQUEEZENET_SHA256, f"{SQUEEZENET} has sha256 {found}, not the {SQUEEZENET_SHA256} its README gives"


def bvlc_model_card(weights_sha256: str, *, trained: bool) -> ModelCard:
    """The card `python -m model export --weights bvlc` writes, for these weights."""
    source = SOURCES["bvlc"]
    assert source.file is not None
    return source_card(source, weights_sha256=weights_sha256, trained=trained, source_url=source.file.url)


def write_standin(output: Path, *, trained: bool = True) -> ModelCard:
    """Copy the shared SqueezeNet to `output` with the BVLC model card in its `metadata_props`."""
    model = onnx.load(str(SQUEEZENET))
    assert not model.metadata_props, f"{SQUEEZENET} already carries metadata; its README says it has none"
    card = bvlc_model_card(SQUEEZENET_SHA256, trained=trained)
    onnx.helper.set_model_props(model, card.to_props())
    onnx.save(model, str(output))
    return card


@cache
def sorted_wnids() -> tuple[str, ...]:
    """Ground truth's class order: all 1000 ImageNet-1k wnids sorted, as the data README defines it."""
    return tuple(sorted(label.wnid for label in imagenet_labels()))


@dataclass(frozen=True)
class Photo:
    path: Path
    wnid: str
    # The file name's label: the class's first name, spaces as underscores ("great_white_shark").
    name: str

    @property
    def index(self) -> int:
        return sorted_wnids().index(self.wnid)

    def read(self) -> bytes:
        return self.path.read_bytes()


def photo_of(photos: list[Photo], wnid: str) -> Photo:
    (found,) = [photo for photo in photos if photo.wnid == wnid]
    return found


def sample_photos() -> list[Photo]:
    """The shared photos, named `<wnid>_<label>.JPEG`, in sorted order."""
    photos = []
    for path in sorted(PHOTO_DIR.glob("*.JPEG")):
        wnid, _, name = path.stem.partition("_")
        photos.append(Photo(path=path, wnid=wnid, name=name))
    return photos


def first_name(label: str) -> str:
    """How the photo files spell a class: its first name, spaces as underscores."""
    return label.split(",")[0].strip().replace(" ", "_")


@dataclass(frozen=True)
class Accuracy:
    photos: int
    top1: float
    top5: float

    def meets(self, top1_bar: float, top5_bar: float) -> bool:
        return self.top1 >= top1_bar and self.top5 >= top5_bar

    def describe(self) -> str:
        return f"{self.photos} photos, top-1 {self.top1:.1%}, top-5 {self.top5:.1%}"


def accuracy(ranked_wnids: list[list[str]], photos: list[Photo]) -> Accuracy:
    """Top-1 and top-5 of answers given as each photo's wnids, most probable first."""
    assert len(ranked_wnids) == len(photos) > 0
    top1 = sum(answer[0] == photo.wnid for answer, photo in zip(ranked_wnids, photos, strict=True))
    top5 = sum(photo.wnid in answer[:TOP5] for answer, photo in zip(ranked_wnids, photos, strict=True))
    return Accuracy(photos=len(photos), top1=top1 / len(photos), top5=top5 / len(photos))


def top5_wnids(probabilities: npt.NDArray[np.float32]) -> list[list[str]]:
    """Each row's five most probable classes as wnids, by the ground truth's sorted-wnid order."""
    wnids = sorted_wnids()
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP5]
    return [[wnids[int(index)] for index in row] for row in order]


def reference_probabilities(images: list[bytes]) -> npt.NDArray[np.float32]:
    """[N, 1000]: the independent reference preprocessing, run by onnxruntime on the raw shared network."""
    session = ort.InferenceSession(str(SQUEEZENET), providers=["CPUExecutionProvider"])
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        tensors = np.concatenate(list(pool.map(bvlc_reference_tensor, images)))
    batches = [
        session.run(["probabilities"], {"image": tensors[start : start + REFERENCE_BATCH]})[0]
        for start in range(0, len(tensors), REFERENCE_BATCH)
    ]
    probabilities: npt.NDArray[np.float32] = np.concatenate(batches)
    return probabilities
