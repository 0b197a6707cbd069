"""What one benchmark run measures and for how long: the full run, and the short `--quick` run."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

BodyKind = Literal["multipart", "raw"]
Device = Literal["cpu", "cuda"]

BODY_KINDS: tuple[BodyKind, ...] = ("multipart", "raw")
CONCURRENCY_LEVELS = (1, 4, 16, 64)
# The level at which batched and unbatched servers are compared, and p99 is held against p50.
COMPARISON_CONCURRENCY = 16
CPU_MODEL_BATCH_SIZES = (1, 8, 32)
CUDA_MODEL_BATCH_SIZES = (1, 8, 64, 256)


@dataclass(frozen=True)
class PipelineSetting:
    """One configuration of the in-process pipeline; `overrides` are `app.config.Settings` fields."""

    name: str
    overrides: dict[str, int | float]


DEFAULT_PIPELINE_SETTING = PipelineSetting("server defaults", {})


def pipeline_sweep(cpu_count: int) -> tuple[PipelineSetting, ...]:
    """The server's settings, then one knob at a time: enough to find the best setting and to show which knob
    matters. Variations that equal the server's settings are dropped when the run starts."""
    return (
        DEFAULT_PIPELINE_SETTING,
        PipelineSetting("decode_threads=1", {"decode_threads": 1}),
        PipelineSetting(f"intra_op_threads={cpu_count}", {"intra_op_threads": cpu_count}),
        PipelineSetting("intra_op_threads=1", {"intra_op_threads": 1}),
        PipelineSetting("max_batch_size=32", {"max_batch_size": 32}),
        PipelineSetting("batch_timeout_ms=0", {"batch_timeout_ms": 0.0}),
    )


@dataclass(frozen=True)
class Plan:
    quick: bool
    images_per_size: int
    # Decode + preprocess: repeats of each image timed one at a time, then a time-bounded threaded run.
    decode_repeats: int
    decode_seconds: float
    model_batch_sizes: tuple[int, ...]
    model_seconds: float
    pipeline_settings: tuple[PipelineSetting, ...]
    pipeline_rounds: int
    pipeline_warmup_seconds: float
    pipeline_seconds: float
    single_image_repeats: int
    # End to end: before the RSS baseline, `server_warmup_rounds` requests per connection at the highest
    # concurrency with each body kind (capped at `server_warmup_seconds`); then each level.
    server_warmup_rounds: int
    server_warmup_seconds: float
    level_warmup_seconds: float
    level_seconds: float
    max_requests_per_level: int
    # Issue 12's workloads: how many real photos (None: all), how many of each workload's images the
    # single-image latency is measured on, and the ceiling's batch per caller and duration.
    workload_photo_limit: int | None
    workload_single_images: int
    ceiling_warmup_seconds: float
    ceiling_seconds: float
    # Rounds of the server at c=16 on photos and sample, each between two ceiling measurements. Five, not three:
    # a single round's ratio moved by up to +-6% with the machine, and a median of five rounds is steadier.
    ceiling_rounds: int = 5
    # At least this many back-to-back pairs for the c=1 comparison: three medians of 20 pairs (12 MP: four
    # images x five passes) taken in a row on one server ranged from -4.7 to +4.5 ms.
    min_paired_runs: int = 0
    ceiling_batch_size: int = 8
    workload_concurrency_levels: tuple[int, ...] = (1, COMPARISON_CONCURRENCY)
    workload_body: BodyKind = "multipart"
    concurrency_levels: tuple[int, ...] = CONCURRENCY_LEVELS
    body_kinds: tuple[BodyKind, ...] = BODY_KINDS

    @property
    def saturating_concurrency(self) -> int:
        return max(self.concurrency_levels)

    def with_batch_sizes(self, batch_sizes: tuple[int, ...]) -> Plan:
        return replace(self, model_batch_sizes=batch_sizes)


FULL_PLAN = Plan(
    quick=False,
    images_per_size=4,
    decode_repeats=3,
    decode_seconds=5.0,
    model_batch_sizes=CPU_MODEL_BATCH_SIZES,
    model_seconds=5.0,
    pipeline_settings=pipeline_sweep(os.cpu_count() or 1),
    pipeline_rounds=2,
    pipeline_warmup_seconds=2.0,
    pipeline_seconds=5.0,
    single_image_repeats=3,
    server_warmup_rounds=2,
    server_warmup_seconds=40.0,
    level_warmup_seconds=2.0,
    level_seconds=10.0,
    max_requests_per_level=5000,
    workload_photo_limit=None,
    workload_single_images=100,
    ceiling_warmup_seconds=2.0,
    ceiling_seconds=8.0,
    min_paired_runs=100,
)

QUICK_PLAN = Plan(
    quick=True,
    images_per_size=1,
    decode_repeats=1,
    decode_seconds=1.0,
    model_batch_sizes=CPU_MODEL_BATCH_SIZES,
    model_seconds=1.0,
    pipeline_settings=(DEFAULT_PIPELINE_SETTING,),
    pipeline_rounds=1,
    pipeline_warmup_seconds=0.5,
    pipeline_seconds=2.0,
    single_image_repeats=1,
    server_warmup_rounds=1,
    server_warmup_seconds=10.0,
    level_warmup_seconds=0.5,
    level_seconds=2.0,
    max_requests_per_level=500,
    workload_photo_limit=8,
    workload_single_images=4,
    ceiling_warmup_seconds=0.5,
    ceiling_seconds=2.0,
    ceiling_rounds=2,
    concurrency_levels=(1, COMPARISON_CONCURRENCY),
)
