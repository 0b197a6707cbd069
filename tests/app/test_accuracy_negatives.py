"""The accuracy bar catches the classic bugs: each deliberately broken pipeline on real photos falls below it.

Run in process on the service's own pure functions (decode, preprocess, rank) and its onnxruntime owner, with
the trained stand-in; the bug is put into the model card's preprocessing or the label list, never shipped.
Channel order and mean run on every fifth photo (100) to save time: their bar is the reference's accuracy on
those same photos minus the issue's 0.5 points, and they miss it by more than 10 points. The resize policy
costs only about 2 points, within a subset's noise, so it runs on all 500 against the issue's own bar;
shifting the labels needs no inference and uses all 500 too.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from app.inference import OnnxModel, load_model
from app.postprocessing import ranked
from app.preprocessing import decode_image, preprocess
from app.runtime import prepare_image
from model.metadata import Label, Preprocessing
from tests.app.service_support import service_settings
from tests.app.standin import BAR_MARGIN, TOP1_BAR, TOP5, TOP5_BAR, Photo, accuracy

SUBSET_STRIDE = 5
CHUNK = 50  # photos decoded, preprocessed and run at a time, so no more than this many are held decoded


@dataclass(frozen=True)
class Breakage:
    broken_preprocessing: Callable[[Preprocessing], Preprocessing]
    stride: int  # every stride-th photo (1: all 500)


BREAKAGES = {
    "RGB instead of BGR": Breakage(lambda pre: replace(pre, channel_order="RGB"), SUBSET_STRIDE),
    "no mean subtraction": Breakage(lambda pre: replace(pre, mean=(0.0, 0.0, 0.0)), SUBSET_STRIDE),
    "shorter-side resize instead of both sides": Breakage(lambda pre: replace(pre, resize_policy="shorter_side"), 1),
}
LABELS_SHIFTED = "labels shifted by one"

RankedWnids = list[list[str]]


def ranked_wnids(probabilities: npt.NDArray[np.float32], labels: tuple[Label, ...]) -> RankedWnids:
    return [[label.wnid for label, _ in ranked(row, labels, TOP5)] for row in probabilities]


def run_broken(model: OnnxModel, photos: list[Photo]) -> dict[str, RankedWnids]:
    """Each breakage's answers on its photos: one decode per photo, the broken preprocessing, batched runs."""
    settings = service_settings(Path(""))
    card = model.card
    answers: dict[str, RankedWnids] = {name: [] for name in BREAKAGES}

    def decoded(position: int) -> Image.Image:
        return decode_image(photos[position].read(), max_pixels=settings.max_image_pixels).image

    with ThreadPoolExecutor() as pool:
        for start in range(0, len(photos), CHUNK):
            positions = range(start, min(start + CHUNK, len(photos)))
            images = list(pool.map(decoded, positions))
            for name, breakage in BREAKAGES.items():
                pre = breakage.broken_preprocessing(card.preprocessing)
                picked = [image for i, image in zip(positions, images, strict=True) if i % breakage.stride == 0]
                tensors = np.stack(list(pool.map(lambda image, pre=pre: preprocess(image, pre), picked)))
                answers[name] += ranked_wnids(model.run(tensors), card.labels)
    return answers


@pytest.fixture(scope="module")
def standin(standin_model_path: Path) -> OnnxModel:
    return load_model(service_settings(standin_model_path))


@pytest.fixture(scope="module")
def broken(standin: OnnxModel, photos: list[Photo], reference: npt.NDArray[np.float32]) -> dict[str, RankedWnids]:
    answers = run_broken(standin, photos)
    labels = standin.card.labels
    # Class i named by class i+1's label: the right probabilities, the wrong names.
    shifted = tuple(replace(label, wnid=labels[(label.index + 1) % len(labels)].wnid) for label in labels)
    answers[LABELS_SHIFTED] = ranked_wnids(reference, shifted)
    return answers


def test_the_fixture_pipeline_is_the_servers(standin: OnnxModel, photos: list[Photo]) -> None:
    # What run_broken calls in pieces is what the server calls for every upload.
    data = photos[0].read()
    settings = service_settings(Path(""))
    tensor, _, _ = prepare_image(data, standin.card.preprocessing, settings)
    image = decode_image(data, max_pixels=settings.max_image_pixels).image
    np.testing.assert_array_equal(preprocess(image, standin.card.preprocessing), tensor)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [*BREAKAGES, LABELS_SHIFTED])
def test_broken_pipeline_falls_below_the_bar(
    broken: dict[str, RankedWnids],
    standin: OnnxModel,
    photos: list[Photo],
    reference: npt.NDArray[np.float32],
    breakage: str,
) -> None:
    stride = BREAKAGES[breakage].stride if breakage in BREAKAGES else 1
    judged = photos[::stride]
    right = accuracy(ranked_wnids(reference[::stride], standin.card.labels), judged)
    if stride == 1:
        top1_bar, top5_bar = TOP1_BAR, TOP5_BAR
    else:
        top1_bar, top5_bar = right.top1 - BAR_MARGIN, right.top5 - BAR_MARGIN
    assert right.meets(top1_bar, top5_bar), f"the right pipeline misses its own bar: {right.describe()}"

    found = accuracy(broken[breakage], judged)

    assert found.top1 < top1_bar and found.top5 < top5_bar, (
        f"{breakage}: {found.describe()}, not below the bar {top1_bar:.1%} / {top5_bar:.1%}"
    )
