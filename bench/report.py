"""The ratios and targets of issue 5, the printed tables, and the JSON document."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.endtoend import LevelResult, ServerResult
from bench.images import LARGEST_SIZE
from bench.inprocess import DecodeResult, ModelThroughput, PipelineThroughput, SingleImageLatency
from bench.modelfile import ModelFile
from bench.plan import COMPARISON_CONCURRENCY, BodyKind
from bench.stats import median

# Issue 5's "must show" thresholds.
MIN_END_TO_END_SHARE = 0.85
MAX_C1_OVERHEAD_MS = 5.0
MIN_BATCHING_SPEEDUP = 2.5
MAX_P99_OVER_P50 = 3.0
MAX_RSS_GROWTH = 0.10
MAX_LARGEST_DECODE_MS = 60.0
KIB_PER_MIB = 1024


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    target: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Ratios:
    end_to_end_saturated_images_per_s: float
    end_to_end_saturated_at: str
    pipeline_best_images_per_s: float
    pipeline_best_setting: str
    end_to_end_share_of_pipeline: float
    # Per body kind: median over c=1 requests of (latency − in-process single-image latency of the same image).
    c1_overhead_ms: dict[str, float]
    # Per body kind: plain difference of p50s over the same image mix (bimodal mixes make it jumpy).
    c1_p50_difference_ms: dict[str, float]
    batching_speedup_c16: dict[str, float]
    p99_over_p50_c16: dict[str, float]
    errors: int
    rss_growth: dict[str, float]
    largest_jpeg_cpu_ms: float
    largest_jpeg_wall_ms: float


@dataclass(frozen=True)
class BenchReport:
    meta: dict[str, Any]
    model: ModelFile
    images: list[dict[str, Any]]
    decode: DecodeResult
    model_speed: list[ModelThroughput]
    single_image: SingleImageLatency
    pipeline: list[PipelineThroughput]
    servers: list[ServerResult]
    ratios: Ratios
    targets: list[Target] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(target.passed for target in self.targets)

    def to_json(self) -> str:
        document = asdict(self)
        document["passed"] = self.passed
        return json.dumps(_finite(document), indent=2, default=str, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    """NaN and infinities (a phase that measured nothing) become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def compute_ratios(
    decode: DecodeResult,
    single_image: SingleImageLatency,
    pipeline: Sequence[PipelineThroughput],
    batched: ServerResult,
    unbatched: ServerResult,
    image_names: Sequence[str],
) -> Ratios:
    best_pipeline = max(pipeline, key=lambda row: row.images_per_s)
    saturated = max(batched.levels, key=lambda level: level.images_per_s)
    overhead: dict[str, float] = {}
    p50_difference: dict[str, float] = {}
    for level in _at(batched, 1):
        floors = [single_image.per_image_ms[image_names[image]] for image, _ in level.samples]
        overhead[level.body] = round(
            median([latency - floor for (_, latency), floor in zip(level.samples, floors, strict=True)]), 2
        )
        p50_difference[level.body] = round(level.latency.p50 - median(floors), 2)
    speedup: dict[str, float] = {}
    for level in _at(batched, COMPARISON_CONCURRENCY):
        matching = [other for other in _at(unbatched, COMPARISON_CONCURRENCY) if other.body == level.body]
        if matching and matching[0].images_per_s > 0:
            speedup[level.body] = round(level.images_per_s / matching[0].images_per_s, 2)
    return Ratios(
        end_to_end_saturated_images_per_s=saturated.images_per_s,
        end_to_end_saturated_at=f"c={saturated.concurrency} {saturated.body}",
        pipeline_best_images_per_s=best_pipeline.images_per_s,
        pipeline_best_setting=best_pipeline.setting,
        end_to_end_share_of_pipeline=round(saturated.images_per_s / best_pipeline.images_per_s, 3)
        if best_pipeline.images_per_s > 0
        else 0.0,
        c1_overhead_ms=overhead,
        c1_p50_difference_ms=p50_difference,
        batching_speedup_c16=speedup,
        p99_over_p50_c16={
            level.body: round(level.latency.p99 / level.latency.p50, 2)
            for level in _at(batched, COMPARISON_CONCURRENCY)
        },
        errors=batched.errors + unbatched.errors,
        rss_growth={server.label: round(server.rss_growth, 4) for server in (batched, unbatched)},
        largest_jpeg_cpu_ms=decode.largest_cpu_ms,
        largest_jpeg_wall_ms=decode.largest_wall_ms,
    )


def _at(server: ServerResult, concurrency: int) -> list[LevelResult]:
    return [level for level in server.levels if level.concurrency == concurrency]


def evaluate(ratios: Ratios) -> list[Target]:
    """Each of issue 5's targets against this run's numbers; a missing measurement fails its target."""
    targets = [
        Target(
            "end-to-end saturated ÷ in-process pipeline",
            ratios.end_to_end_share_of_pipeline,
            f">= {MIN_END_TO_END_SHARE}",
            ratios.end_to_end_share_of_pipeline >= MIN_END_TO_END_SHARE,
            f"{ratios.end_to_end_saturated_images_per_s} ({ratios.end_to_end_saturated_at}) ÷ "
            f"{ratios.pipeline_best_images_per_s} ({ratios.pipeline_best_setting}) images/s",
        )
    ]
    targets += _per_body(
        "c=1 p50 latency overhead, ms",
        ratios.c1_overhead_ms,
        f"<= {MAX_C1_OVERHEAD_MS:g}",
        lambda value: value <= MAX_C1_OVERHEAD_MS,
        "median of (latency − in-process single-image latency of the same image)",
    )
    targets += _per_body(
        f"c={COMPARISON_CONCURRENCY} batched ÷ unbatched",
        ratios.batching_speedup_c16,
        f">= {MIN_BATCHING_SPEEDUP:g}",
        lambda value: value >= MIN_BATCHING_SPEEDUP,
        "same server, ALEXNET_MAX_BATCH_SIZE=1",
    )
    targets += _per_body(
        f"c={COMPARISON_CONCURRENCY} p99 ÷ p50",
        ratios.p99_over_p50_c16,
        f"<= {MAX_P99_OVER_P50:g}",
        lambda value: value <= MAX_P99_OVER_P50,
        "batched server",
    )
    targets.append(
        Target("errors under load", ratios.errors, "== 0", ratios.errors == 0, "all servers, warm-up included")
    )
    for label, growth in ratios.rss_growth.items():
        targets.append(
            Target(
                f"RSS growth, {label} server",
                growth,
                f"<= {MAX_RSS_GROWTH:.0%}",
                growth <= MAX_RSS_GROWTH,
                "after the run vs after warm-up",
            )
        )
    targets.append(
        Target(
            f"{LARGEST_SIZE[0] * LARGEST_SIZE[1] / 1e6:g} MP JPEG decode+preprocess, one core, CPU ms",
            ratios.largest_jpeg_cpu_ms,
            f"< {MAX_LARGEST_DECODE_MS:g}",
            ratios.largest_jpeg_cpu_ms < MAX_LARGEST_DECODE_MS,
            f"median thread CPU time as the server decodes (wall {ratios.largest_jpeg_wall_ms} ms)",
        )
    )
    return targets


def _per_body(
    name: str, values: dict[str, float], target: str, check: Callable[[float], bool], detail: str
) -> list[Target]:
    kinds: tuple[BodyKind, ...] = ("multipart", "raw")
    rows = []
    for body in kinds:
        if body in values:
            value = values[body]
            rows.append(Target(f"{name} ({body})", value, target, math.isfinite(value) and check(value), detail))
    if not rows:
        rows.append(Target(name, float("nan"), target, False, "not measured"))
    return rows


def write_json(report: BenchReport, path: Path) -> None:
    write_text(path, report.to_json())


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
