"""Draft JPEG decoding judged by its answers: `python -m bench.draft_accuracy`.

The 500 real photos of ../shared/data/imagenet-sample are upscaled to 12 MP (Lanczos) and saved as JPEG
quality 90 (once, under the cache folder), then classified by the trained stand-in (bench/standin.py) after
a full decode and after a draft decode, both through the server's own `prepare_image`. Draft decoding becomes
the default only if the answers barely move: top-1 agreement >= 99.5% and top-1/top-5 accuracy each within
0.3 points of the full decode's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from app.config import CPU_PROVIDER
from app.inference import OnnxModel, load_model
from app.runtime import prepare_image
from bench.inprocess import service_settings
from bench.report import write_text
from bench.standin import PHOTOS_DIR, StandInMissingError, standin_model
from bench.tables import table

logger = logging.getLogger(__name__)

UPSCALED_MEGAPIXELS = 12.0
UPSCALED_QUALITY = 90
# Bump when the upscaling changes, so an older cache is not reused.
UPSCALE_VERSION = 1
MIN_AGREEMENT = 0.995
MAX_ACCURACY_MOVE_POINTS = 0.3
EVAL_BATCH_SIZE = 16
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "alexnet-serve-bench"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "draft-accuracy.json"


@dataclass(frozen=True)
class Answers:
    """Per image, the top-5 class indices (best first) and the class the file name says it is."""

    top5: list[list[int]]
    truth: list[int]

    @property
    def top1_accuracy(self) -> float:
        return sum(row[0] == true for row, true in zip(self.top5, self.truth, strict=True)) / len(self.truth)

    @property
    def top5_accuracy(self) -> float:
        return sum(true in row for row, true in zip(self.top5, self.truth, strict=True)) / len(self.truth)


@dataclass(frozen=True)
class DecodeRow:
    images: str
    decode: str
    top1_percent: float
    top5_percent: float
    decode_preprocess_ms_median: float


@dataclass(frozen=True)
class DraftVerdict:
    photos: int
    megapixels_median: float
    jpeg_kb_median: float
    rows: list[DecodeRow]
    top1_agreement_percent: float
    top1_move_points: float
    top5_move_points: float
    draft_by_default: bool
    rule: str


def upscaled_photos(photos: Sequence[Path], cache_dir: Path) -> list[Path]:
    """Each photo, as displayed (EXIF applied), resized to about 12 MP with Lanczos and saved at quality 90."""
    folder = cache_dir / f"photos-12mp-q{UPSCALED_QUALITY}-v{UPSCALE_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, photo in enumerate(photos):
        path = folder / f"{photo.stem}.jpg"
        if not path.is_file():
            if index % 50 == 0:
                logger.info("upscaling photo %d/%d to %.0f MP", index + 1, len(photos), UPSCALED_MEGAPIXELS)
            partial = path.with_suffix(".part")
            upscale(photo).save(partial, format="JPEG", quality=UPSCALED_QUALITY)
            partial.replace(path)
        paths.append(path)
    return paths


def upscale(photo: Path) -> Image.Image:
    with Image.open(photo) as opened:
        image = ImageOps.exif_transpose(opened)
    scale = math.sqrt(UPSCALED_MEGAPIXELS * 1e6 / (image.width * image.height))
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def classify(model: OnnxModel, paths: Sequence[Path], *, draft: bool, truth: Sequence[int]) -> tuple[Answers, float]:
    """Top-5 answers for `paths` decoded as the server would (full or draft), and the median decode+preprocess ms."""
    base = service_settings(Path("unused.onnx"), [CPU_PROVIDER], {})
    settings = base.model_copy(update={"fast_jpeg_decode": draft})
    pre = model.card.preprocessing
    top5: list[list[int]] = []
    prepare_ms: list[float] = []
    for start in range(0, len(paths), EVAL_BATCH_SIZE):
        tensors = []
        for path in paths[start : start + EVAL_BATCH_SIZE]:
            tensor, decode_ms, preprocess_ms = prepare_image(path.read_bytes(), pre, settings)
            tensors.append(tensor)
            prepare_ms.append(decode_ms + preprocess_ms)
        probabilities = model.run(np.stack(tensors))
        top5 += [[int(index) for index in row] for row in np.argsort(-probabilities, axis=1, kind="stable")[:, :5]]
    return Answers(top5=top5, truth=list(truth)), float(np.median(prepare_ms))


def true_classes(photos: Sequence[Path], model: OnnxModel) -> list[int]:
    """The class index of each photo from its `<wnid>_<label>.JPEG` name, in the model card's label order."""
    index_of = {label.wnid: label.index for label in model.card.labels}
    return [index_of[photo.name.split("_", 1)[0]] for photo in photos]


def judge(
    full: Answers, draft: Answers, rows: list[DecodeRow], upscaled: Sequence[Path], megapixels: Sequence[float]
) -> DraftVerdict:
    agreement = sum(a[0] == b[0] for a, b in zip(full.top5, draft.top5, strict=True)) / len(full.top5)
    top1_move = 100.0 * (draft.top1_accuracy - full.top1_accuracy)
    top5_move = 100.0 * (draft.top5_accuracy - full.top5_accuracy)
    passed = (
        agreement >= MIN_AGREEMENT
        and abs(top1_move) <= MAX_ACCURACY_MOVE_POINTS
        and abs(top5_move) <= MAX_ACCURACY_MOVE_POINTS
    )
    return DraftVerdict(
        photos=len(upscaled),
        megapixels_median=round(float(np.median(megapixels)), 2),
        jpeg_kb_median=round(float(np.median([path.stat().st_size for path in upscaled])) / 1000, 1),
        rows=rows,
        top1_agreement_percent=round(100.0 * agreement, 2),
        top1_move_points=round(top1_move, 2),
        top5_move_points=round(top5_move, 2),
        draft_by_default=passed,
        rule=(
            f"draft by default if top-1 agreement >= {100 * MIN_AGREEMENT:.1f}% and top-1/top-5 accuracy each "
            f"move <= {MAX_ACCURACY_MOVE_POINTS} points"
        ),
    )


def evaluate(cache_dir: Path, photos_dir: Path = PHOTOS_DIR, limit: int | None = None) -> DraftVerdict:
    photos = sorted(photos_dir.glob("*.JPEG"))[:limit]
    if not photos:
        raise StandInMissingError(f"no photos in {photos_dir}: they come with ../shared/data")
    model_path = standin_model(cache_dir)
    model = load_model(service_settings(model_path, [CPU_PROVIDER], {}))
    truth = true_classes(photos, model)
    upscaled = upscaled_photos(photos, cache_dir)
    megapixels = []
    for path in upscaled:
        with Image.open(path) as image:
            megapixels.append(image.width * image.height / 1e6)
    rows = []
    answers = {}
    for label, paths, draft in (
        ("original photos", photos, False),
        ("upscaled to 12 MP", upscaled, False),
        ("upscaled to 12 MP", upscaled, True),
    ):
        logger.info("classifying %s, %s decode", label, "draft" if draft else "full")
        started = time.perf_counter()
        result, prepare_ms = classify(model, paths, draft=draft, truth=truth)
        logger.info("  %.0f s", time.perf_counter() - started)
        answers[(label, draft)] = result
        rows.append(
            DecodeRow(
                images=label,
                decode="draft" if draft else "full",
                top1_percent=round(100.0 * result.top1_accuracy, 2),
                top5_percent=round(100.0 * result.top5_accuracy, 2),
                decode_preprocess_ms_median=round(prepare_ms, 1),
            )
        )
    return judge(
        answers[("upscaled to 12 MP", False)], answers[("upscaled to 12 MP", True)], rows, upscaled, megapixels
    )


def render(verdict: DraftVerdict) -> str:
    rows = table(
        f"Draft vs full JPEG decode: {verdict.photos} real photos, trained stand-in (SqueezeNet 1.0, BVLC card)",
        ["images", "decode", "top-1 %", "top-5 %", "decode+preprocess ms (median wall, one thread)"],
        [[r.images, r.decode, r.top1_percent, r.top5_percent, r.decode_preprocess_ms_median] for r in verdict.rows],
    )
    decision = "draft decoding by default" if verdict.draft_by_default else "draft decoding stays opt-in"
    return (
        rows + f"\n- upscaled set: {verdict.photos} JPEGs, median {verdict.megapixels_median} MP, "
        f"{verdict.jpeg_kb_median} KB (Lanczos, quality {UPSCALED_QUALITY})\n"
        f"- top-1 agreement, draft vs full (12 MP): {verdict.top1_agreement_percent}%\n"
        f"- accuracy moves, draft - full (12 MP): top-1 {verdict.top1_move_points:+.2f} points, "
        f"top-5 {verdict.top5_move_points:+.2f} points\n"
        f"- rule: {verdict.rule}\n- decision: **{decision}**\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.draft_accuracy", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="upscaled photos, stand-in model")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON (default {DEFAULT_OUTPUT})")
    parser.add_argument("--limit", type=int, help="only the first N photos (a smoke run; not for the decision)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        verdict = evaluate(args.cache_dir, limit=args.limit)
    except StandInMissingError as missing:
        sys.stderr.write(f"skipped: {missing}\n")
        return 0
    write_text(args.output, json.dumps(asdict(verdict), indent=2) + "\n")
    sys.stdout.write(render(verdict) + f"\nJSON: {args.output}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
