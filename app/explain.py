"""Occlusion sensitivity: which parts of the image, hidden, lower the target class's probability. Pure functions.

The S×S input the model sees is cut into `grid`×`grid` cells (`cell_edges`: sizes differ by at most one
pixel). Variant k (row-major, top-left first) is the input with cell k replaced by the baseline:
- `mean`: the model card's mean colour, which is exactly zero after normalisation;
- `black`: pixel value 0, normalised as the card prescribes.

A cell's drop is p(target | original) - p(target | variant). The score grid is the drops divided by the
largest absolute drop, so scores lie in [-1, 1]: 1 marks the cell whose occlusion lowers the target's
probability most, a negative score a cell whose occlusion raised it; all zeros if no cell changed it. The
largest absolute drop is returned beside the grid, so the raw drops are `score * max_abs_drop`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from app.schemas import Baseline, ClassScore, ExplainResponse, ExplainTimingMs, ExplanationMethod, PredictResponse
from model.metadata import Label, Preprocessing

FloatArray = npt.NDArray[np.float32]

BASELINES: tuple[Baseline, ...] = get_args(Baseline)
DEFAULT_BASELINE: Baseline = "mean"
METHOD: Literal["occlusion"] = "occlusion"
NORMALISATION = "drop / max(|drop|): 1 = the cell whose occlusion lowers the target's probability most"

# Below this drop (0.1 percentage points) the text says no single cell matters much.
SMALL_DROP = 0.001
# Three bands per axis name the region a cell lies in, as a person would say it.
_ROW_NAMES = ("top", "centre", "bottom")
_COLUMN_NAMES = ("left", "centre", "right")

# Overlay: scores are painted as translucent colour, red where occluding lowers the probability (the cell
# supports the target), blue where it raises it; the photo is enlarged so a cell is easy to see.
OVERLAY_SCALE = 2
_MAX_ALPHA = 170
_RAISES = (40, 90, 255)
_LOWERS = (255, 30, 30)
_LEGEND_BACKGROUND = (255, 255, 255)
_LEGEND_TEXT = (0, 0, 0)
_WARNING_TEXT = (170, 0, 0)
_FONT_SIZE = 13
_LINE_HEIGHT = 18
_MARGIN = 6
_BAR_HEIGHT = 12
_OUTLINE = (255, 255, 0)


@dataclass(frozen=True)
class Cell:
    row: int
    column: int


@dataclass(frozen=True)
class Explained:
    """An explanation's JSON answer, and its overlay PNG when one was asked for."""

    response: ExplainResponse
    overlay_png: bytes | None


def cell_edges(size: int, grid: int) -> list[int]:
    """Pixel boundaries of `grid` cells along a side of `size` pixels: grid + 1 values from 0 to size."""
    return [int(edge) for edge in np.rint(np.linspace(0, size, grid + 1))]


def baseline_fill(baseline: Baseline, pre: Preprocessing) -> FloatArray:
    """The normalised value [3] (in the card's channel order) that replaces an occluded cell."""
    if baseline == "mean":
        return np.zeros(3, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return (np.float32(0.0) - mean) / std


def occluded_variants(tensor: FloatArray, grid: int, fill: FloatArray) -> FloatArray:
    """The grid² copies of `tensor` [3, S, S], each with one cell (row-major) set to `fill` [3]."""
    size = tensor.shape[-1]
    edges = cell_edges(size, grid)
    variants = np.repeat(tensor[np.newaxis], grid * grid, axis=0)
    patch = fill.astype(np.float32).reshape(3, 1, 1)
    for row in range(grid):
        for column in range(grid):
            top, bottom = edges[row], edges[row + 1]
            left, right = edges[column], edges[column + 1]
            variants[row * grid + column, :, top:bottom, left:right] = patch
    return variants


def probability_drops(original: float, occluded: FloatArray, grid: int) -> FloatArray:
    """The target's probability drop [grid, grid] for each variant's target probability in `occluded` [grid²]."""
    return (np.float32(original) - occluded.astype(np.float32)).reshape(grid, grid)


def normalised_scores(drops: FloatArray) -> tuple[FloatArray, float]:
    """(drops / max |drop|, max |drop|); all zeros when nothing changed (see the module docstring)."""
    scale = float(np.max(np.abs(drops)))
    if scale == 0.0:
        return np.zeros_like(drops, dtype=np.float32), 0.0
    return (drops / np.float32(scale)).astype(np.float32), scale


def most_important_cell(drops: FloatArray) -> Cell:
    """The cell whose occlusion lowers the target's probability most (the first, row-major, on a tie)."""
    row, column = np.unravel_index(int(np.argmax(drops)), drops.shape)
    return Cell(row=int(row), column=int(column))


def region_name(cell: Cell, grid: int) -> str:
    """Where a cell lies in words: "top-left", "centre", "bottom-centre" and so on (by the cell's centre)."""
    row_name = _ROW_NAMES[_band(cell.row, grid)]
    column_name = _COLUMN_NAMES[_band(cell.column, grid)]
    if row_name == column_name == "centre":
        return "centre"
    return f"{row_name}-{column_name}"


def _band(index: int, grid: int) -> int:
    return min(2, int(3 * (index + 0.5) / grid))


def text_alternative(label: str, drops: FloatArray) -> str:
    """One sentence naming the most important region, for screen readers and anyone not seeing the heatmap."""
    grid = drops.shape[0]
    cell = most_important_cell(drops)
    drop = float(drops[cell.row, cell.column])
    if drop <= 0.0:
        return (
            f"No region matters for {label!r}: hiding any one of the {grid}×{grid} cells "
            "does not lower its probability."
        )
    return (
        f"The {region_name(cell, grid)} of the image matters most for {label!r}: hiding it "
        f"(row {cell.row + 1}, column {cell.column + 1} of {grid}) lowers its probability by {_points(drop)}."
    )


def _points(drop: float) -> str:
    if drop < SMALL_DROP:
        # Scores are normalised, so a map of tiny drops looks as strong as any other: say how small they are.
        return f"less than {SMALL_DROP * 100:.1f} points (no single cell matters much)"
    return f"{drop * 100:.1f} points"


def image_as_seen(tensor: FloatArray, pre: Preprocessing) -> Image.Image:
    """The RGB crop the model saw, recovered from its normalised tensor [3, S, S] (the inverse of `to_tensor`)."""
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    pixels = (tensor * std + mean) * np.float32(255.0 / pre.pixel_scale)
    if pre.channel_order == "BGR":
        pixels = pixels[::-1]
    rgb = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def render_overlay(image: Image.Image, scores: FloatArray, *, label: str, text: str, warnings: list[str]) -> bytes:
    """A PNG: the crop as the model saw it, enlarged, the score grid painted over it, and a legend below."""
    grid = scores.shape[0]
    width, height = image.width * OVERLAY_SCALE, image.height * OVERLAY_SCALE
    photo = image.resize((width, height), Image.Resampling.NEAREST).convert("RGBA")
    heat = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(heat)
    xs = [edge * OVERLAY_SCALE for edge in cell_edges(image.width, grid)]
    ys = [edge * OVERLAY_SCALE for edge in cell_edges(image.height, grid)]
    for row in range(grid):
        for column in range(grid):
            score = float(scores[row, column])
            colour = _LOWERS if score > 0 else _RAISES
            alpha = int(round(_MAX_ALPHA * min(1.0, abs(score))))
            draw.rectangle((xs[column], ys[row], xs[column + 1] - 1, ys[row + 1] - 1), fill=(*colour, alpha))
    if float(np.max(scores)) > 0.0:
        cell = most_important_cell(scores)
        box = (xs[cell.column], ys[cell.row], xs[cell.column + 1] - 1, ys[cell.row + 1] - 1)
        draw.rectangle(box, outline=(*_OUTLINE, 255), width=2)
    overlaid = Image.alpha_composite(photo, heat).convert("RGB")
    legend = _legend(width, label=label, text=text, warnings=warnings)
    canvas = Image.new("RGB", (width, height + legend.height), _LEGEND_BACKGROUND)
    canvas.paste(overlaid, (0, 0))
    canvas.paste(legend, (0, height))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def _legend(width: int, *, label: str, text: str, warnings: list[str]) -> Image.Image:
    font = ImageFont.load_default(_FONT_SIZE)
    lines = [(f"Occlusion sensitivity for {label!r}", _LEGEND_TEXT)]
    lines += [(line, _LEGEND_TEXT) for line in _wrapped(text, font, width - 2 * _MARGIN)]
    for warning in warnings:
        lines += [(line, _WARNING_TEXT) for line in _wrapped(f"Warning: {warning}", font, width - 2 * _MARGIN)]
    height = _MARGIN + _BAR_HEIGHT + _LINE_HEIGHT + len(lines) * _LINE_HEIGHT + _MARGIN
    legend = Image.new("RGB", (width, height), _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(legend)
    bar_left, bar_right = _MARGIN, width - _MARGIN
    for x in range(bar_left, bar_right):
        # -1 (blue: hiding raises the probability) through white to +1 (red: hiding lowers it).
        position = 2.0 * (x - bar_left) / max(1, bar_right - bar_left - 1) - 1.0
        colour = _LOWERS if position > 0 else _RAISES
        strength = min(1.0, abs(position)) * _MAX_ALPHA / 255.0
        blended = tuple(int(round(255 + (channel - 255) * strength)) for channel in colour)
        draw.line((x, _MARGIN, x, _MARGIN + _BAR_HEIGHT), fill=blended)
    y = _MARGIN + _BAR_HEIGHT + 2
    draw.text((bar_left, y), "hiding raises it", fill=_LEGEND_TEXT, font=font)
    draw.text((bar_right, y), "hiding lowers it", fill=_LEGEND_TEXT, font=font, anchor="ra")
    y += _LINE_HEIGHT
    for line, colour in lines:
        draw.text((bar_left, y), line, fill=colour, font=font)
        y += _LINE_HEIGHT
    return legend


def _wrapped(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def explanation_response(
    prediction: PredictResponse,
    original: FloatArray,
    occluded: FloatArray,
    *,
    target: int,
    grid: int,
    baseline: Baseline,
    labels: tuple[Label, ...],
    input_size: int,
    timing: ExplainTimingMs,
) -> ExplainResponse:
    """The JSON answer from the original's probabilities [1000] and the variants' [grid², 1000]."""
    label = labels[target]
    drops = probability_drops(float(original[target]), occluded[:, target], grid)
    scores, scale = normalised_scores(drops)
    cell = most_important_cell(drops)
    return ExplainResponse(
        prediction=prediction,
        target=ClassScore(index=label.index, wnid=label.wnid, label=label.label, probability=float(original[target])),
        method=ExplanationMethod(
            name=METHOD, grid=grid, baseline=baseline, input_size=input_size, normalisation=NORMALISATION
        ),
        scores=[[float(score) for score in row] for row in scores],
        max_abs_drop=scale,
        region=region_name(cell, grid) if drops[cell.row, cell.column] > 0 else None,
        text=text_alternative(label.label, drops),
        timing_ms=timing,
        warnings=prediction.warnings,
    )
