"""Occlusion sensitivity's pure parts: cells, variants, baselines, scores, region names, the overlay PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.config import MAX_EXPLAIN_GRID
from app.explain import (
    NORMALISATION,
    OVERLAY_SCALE,
    Cell,
    baseline_fill,
    cell_edges,
    explanation_response,
    image_as_seen,
    most_important_cell,
    normalised_scores,
    occluded_variants,
    probability_drops,
    region_name,
    render_overlay,
    text_alternative,
)
from app.preprocessing import to_tensor
from app.schemas import ClassScore, ExplainTimingMs, ModelSummary, PredictResponse, TimingMs
from model.labels import imagenet_labels
from model.metadata import BVLC_PREPROCESSING, TORCHVISION_PREPROCESSING, Preprocessing
from tests.app.sample_images import scene

CARDS = pytest.mark.parametrize("pre", [BVLC_PREPROCESSING, TORCHVISION_PREPROCESSING], ids=["bvlc", "torchvision"])
SIZE = BVLC_PREPROCESSING.input_size


def _photo_tensor(pre: Preprocessing) -> np.ndarray:
    return to_tensor(scene(SIZE, SIZE, seed=3), pre)


@pytest.mark.parametrize("grid", [2, 3, 7, MAX_EXPLAIN_GRID])
def test_cells_tile_the_input_with_sizes_within_one_pixel(grid: int) -> None:
    edges = cell_edges(SIZE, grid)
    sizes = np.diff(edges)
    assert (edges[0], edges[-1], len(edges)) == (0, SIZE, grid + 1)
    assert sizes.max() - sizes.min() <= 1


def test_cell_edges_at_the_default_grid() -> None:
    assert cell_edges(SIZE, 7) == [0, 32, 65, 97, 130, 162, 195, 227]


@CARDS
def test_each_variant_replaces_exactly_its_own_cell(pre: Preprocessing) -> None:
    tensor = _photo_tensor(pre)
    fill = np.array([7.0, -8.0, 9.0], dtype=np.float32)
    grid = 3
    variants = occluded_variants(tensor, grid, fill)
    edges = cell_edges(SIZE, grid)
    assert variants.shape == (grid * grid, 3, SIZE, SIZE)
    covered = np.zeros((SIZE, SIZE), dtype=np.int64)
    for index, variant in enumerate(variants):
        row, column = divmod(index, grid)
        changed = np.any(variant != tensor, axis=0)
        expected = np.zeros((SIZE, SIZE), dtype=bool)
        expected[edges[row] : edges[row + 1], edges[column] : edges[column + 1]] = True
        assert np.array_equal(changed, expected)
        assert np.array_equal(variant[:, expected], np.repeat(fill[:, None], expected.sum(), axis=1))
        covered += changed
    assert np.array_equal(covered, np.ones((SIZE, SIZE), dtype=np.int64))


@CARDS
def test_mean_baseline_is_zero_and_black_baseline_is_a_black_photo(pre: Preprocessing) -> None:
    assert np.array_equal(baseline_fill("mean", pre), np.zeros(3, dtype=np.float32))
    black = to_tensor(Image.new("RGB", (SIZE, SIZE), (0, 0, 0)), pre)
    np.testing.assert_allclose(black[:, 0, 0], baseline_fill("black", pre), rtol=1e-6)


@CARDS
def test_image_as_seen_inverts_the_normalisation(pre: Preprocessing) -> None:
    photo = scene(SIZE, SIZE, seed=5)
    assert np.array_equal(np.asarray(image_as_seen(to_tensor(photo, pre), pre)), np.asarray(photo))


def test_scores_are_drops_divided_by_the_largest_absolute_drop() -> None:
    drops = probability_drops(0.5, np.array([0.1, 0.5, 0.7, 0.3], dtype=np.float32), 2)
    np.testing.assert_allclose(drops, [[0.4, 0.0], [-0.2, 0.2]], atol=1e-7)
    scores, scale = normalised_scores(drops)
    assert scale == pytest.approx(0.4)
    np.testing.assert_allclose(scores, [[1.0, 0.0], [-0.5, 0.5]], atol=1e-6)


def test_a_negative_drop_can_set_the_scale() -> None:
    scores, scale = normalised_scores(np.array([[0.1, -0.4]], dtype=np.float32))
    assert scale == pytest.approx(0.4)
    np.testing.assert_allclose(scores, [[0.25, -1.0]], atol=1e-6)


def test_no_change_gives_all_zero_scores() -> None:
    scores, scale = normalised_scores(np.zeros((3, 3), dtype=np.float32))
    assert (scale, scores.tolist()) == (0.0, [[0.0] * 3] * 3)


def test_the_most_important_cell_is_the_largest_drop_first_on_a_tie() -> None:
    drops = np.array([[0.1, 0.3], [0.3, -0.9]], dtype=np.float32)
    assert most_important_cell(drops) == Cell(row=0, column=1)


def test_region_names_on_a_three_by_three_grid() -> None:
    names = [[region_name(Cell(row, column), 3) for column in range(3)] for row in range(3)]
    assert names == [
        ["top-left", "top-centre", "top-right"],
        ["centre-left", "centre", "centre-right"],
        ["bottom-left", "bottom-centre", "bottom-right"],
    ]


@pytest.mark.parametrize(
    ("cell", "grid", "name"),
    [
        (Cell(3, 0), 7, "centre-left"),
        (Cell(0, 6), 7, "top-right"),
        (Cell(2, 4), 7, "centre"),
        (Cell(1, 1), 2, "bottom-right"),
        (Cell(0, 0), 2, "top-left"),
    ],
)
def test_region_names_on_other_grids(cell: Cell, grid: int, name: str) -> None:
    assert region_name(cell, grid) == name


def test_text_alternative_names_the_region_and_the_drop() -> None:
    drops = np.zeros((7, 7), dtype=np.float32)
    drops[3, 1] = 0.375
    assert text_alternative("tabby, tabby cat", drops) == (
        "The centre-left of the image matters most for 'tabby, tabby cat': hiding it (row 4, column 2 of 7) "
        "lowers its probability by 37.5 points."
    )


def test_text_alternative_says_when_the_largest_drop_is_tiny() -> None:
    drops = np.zeros((3, 3), dtype=np.float32)
    drops[0, 2] = 0.0004
    assert text_alternative("giant panda", drops) == (
        "The top-right of the image matters most for 'giant panda': hiding it (row 1, column 3 of 3) "
        "lowers its probability by less than 0.1 points (no single cell matters much)."
    )


def test_text_alternative_when_no_cell_lowers_the_probability() -> None:
    assert text_alternative("abacus", np.full((2, 2), -0.1, dtype=np.float32)) == (
        "No region matters for 'abacus': hiding any one of the 2×2 cells does not lower its probability."
    )


def _overlay(scores: np.ndarray, warnings: list[str]) -> tuple[Image.Image, Image.Image]:
    photo = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    png = render_overlay(photo, scores, label="abacus", text="The top-left matters most.", warnings=warnings)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return photo, Image.open(io.BytesIO(png)).convert("RGB")


def test_overlay_paints_supporting_cells_red_and_opposing_cells_blue() -> None:
    scores = np.array([[1.0, -1.0], [0.0, 0.5]], dtype=np.float32)
    _, overlay = _overlay(scores, [])
    side = SIZE * OVERLAY_SCALE
    assert overlay.width == side
    assert overlay.height > side  # the legend sits below the photo
    quarter = side // 4
    supporting = overlay.getpixel((quarter, quarter + 10))
    opposing = overlay.getpixel((3 * quarter, quarter))
    untouched = overlay.getpixel((quarter, 3 * quarter))
    half = overlay.getpixel((3 * quarter, 3 * quarter))
    assert untouched == (128, 128, 128)
    assert isinstance(supporting, tuple) and isinstance(opposing, tuple) and isinstance(half, tuple)
    assert supporting[0] > 200 and supporting[2] < 100
    assert opposing[2] > 200 and opposing[0] < 100
    assert 128 < half[0] < supporting[0]
    # The most important cell is outlined (yellow) so the text alternative's region can be found.
    assert overlay.getpixel((0, 0)) == (255, 255, 0)


def test_overlay_legend_carries_the_warnings() -> None:
    scores = np.zeros((2, 2), dtype=np.float32)
    _, plain = _overlay(scores, [])
    _, warned = _overlay(scores, ["the model has random, untrained weights: its predictions are noise"])
    assert warned.height > plain.height


def test_explanation_response_explains_the_requested_target() -> None:
    labels = imagenet_labels()
    original = np.zeros(1000, dtype=np.float32)
    original[[3, 7]] = [0.6, 0.3]
    occluded = np.tile(original, (4, 1))
    occluded[2, 7] = 0.1  # hiding the bottom-left cell lowers class 7 by 0.2
    occluded[1, 7] = 0.35
    score = ClassScore(index=3, wnid=labels[3].wnid, label=labels[3].label, probability=0.6)
    prediction = PredictResponse(
        top1=score,
        top5=[score],
        predictions=[score],
        model=ModelSummary(name="bvlc_alexnet", weights="random", sha256="0", trained=False),
        timing_ms=TimingMs(decode=0, preprocess=0, queue=0, inference=0, total=0, batch_size=5),
        warnings=["untrained"],
    )
    timing = ExplainTimingMs(decode=0, preprocess=0, occlusion=0, inference=0, render=0, total=0, rows=5)
    response = explanation_response(
        prediction,
        original,
        occluded,
        target=7,
        grid=2,
        baseline="black",
        labels=labels,
        input_size=SIZE,
        timing=timing,
    )
    assert response.target.model_dump() == {
        "index": 7,
        "wnid": labels[7].wnid,
        "label": labels[7].label,
        "probability": pytest.approx(0.3),
    }
    assert response.method.model_dump() == {
        "name": "occlusion",
        "grid": 2,
        "baseline": "black",
        "input_size": SIZE,
        "normalisation": NORMALISATION,
    }
    np.testing.assert_allclose(response.scores, [[0.0, -0.25], [1.0, 0.0]], atol=1e-6)
    assert response.max_abs_drop == pytest.approx(0.2)
    assert response.region == "bottom-left"
    assert response.text == text_alternative(labels[7].label, np.array([[0.0, -0.05], [0.2, 0.0]], dtype=np.float32))
    assert response.warnings == ["untrained"]
