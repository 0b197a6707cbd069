"""In-process capacity, no HTTP: decode + preprocess alone, the model alone, the single-image path,
and the service's own pipeline (`app.runtime.Runtime`: decode pool + micro-batcher) under load.

Everything uses the app's own code and settings, so these are the ceilings the server can approach.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.config import CUDA_PROVIDER, DEFAULT_TOP_K, Settings
from app.errors import ServiceError
from app.inference import OnnxModel, load_model
from app.runtime import Runtime, prepare_image
from bench.images import LARGEST_SIZE, BenchImage
from bench.plan import PipelineSetting
from bench.procfs import CpuMeter, CpuSnapshot, others_cpu_percent
from bench.stats import LatencySummary, median, rate

logger = logging.getLogger(__name__)

ENV_PREFIX = "ALEXNET_"

FloatArray = np.ndarray[tuple[int, ...], np.dtype[np.float32]]


@dataclass(frozen=True)
class DecodeTiming:
    """Single-threaded cost of one image size, medians over repeats, in ms.

    `cpu_ms` is the thread's CPU time (what the work costs one core, whatever else the machine is doing);
    the others are wall-clock and grow when other processes take the core away.
    """

    size: str
    # "full": every pixel decoded (the default, bit-exact); "draft": Pillow's DCT-domain downscale
    # (ALEXNET_FAST_JPEG_DECODE=true).
    mode: str
    megapixels: float
    jpeg_bytes: int
    decode_ms: float
    preprocess_ms: float
    total_ms: float
    cpu_ms: float
    # Largest |probability difference| from the full decode over this size's images: what the mode costs in
    # exactness (None for "full", the reference; the service's parity tolerance is 1e-4).
    max_probability_delta: float | None


@dataclass(frozen=True)
class DecodeThroughput:
    threads: int
    images_per_s: float
    images: int
    seconds: float
    cpu_ms_per_image: float
    others_cpu_percent: float


@dataclass(frozen=True)
class DecodeResult:
    configured_mode: str
    per_size: list[DecodeTiming]
    throughput: list[DecodeThroughput]
    # By mode: the largest image's median thread CPU and wall ms, and (draft only) its max |Δp| vs full.
    largest_cpu_ms: dict[str, float]
    largest_wall_ms: dict[str, float]
    largest_probability_delta: dict[str, float]


@dataclass(frozen=True)
class ModelThroughput:
    precision: str
    batch_size: int
    images_per_s: float
    ms_per_batch: float
    batches: int
    cpu_ms_per_image: float
    others_cpu_percent: float


@dataclass(frozen=True)
class SingleImageLatency:
    """decode + preprocess + session.run at batch 1, one image at a time: the floor for c=1 latency."""

    per_image_ms: dict[str, float]
    summary: LatencySummary


@dataclass(frozen=True)
class PipelineThroughput:
    setting: str
    overrides: dict[str, int | float]
    concurrency: int
    images_per_s: float
    images: int
    errors: int
    seconds: float
    mean_batch_size: float
    process_cpu_percent: float
    cpu_ms_per_image: float
    others_cpu_percent: float
    latency: LatencySummary


class _ArgumentSettings(Settings):
    """`Settings` from given values and defaults alone: ALEXNET_* variables in the benchmark's shell never leak
    in (the server subprocess does not see them either)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass(frozen=True)
class PipelineResult:
    """One pipeline setting over its interleaved rounds; the headline figures are the rounds' means."""

    setting: str
    overrides: dict[str, int | float]
    images_per_s: float
    cpu_ms_per_image: float
    others_cpu_percent: float
    mean_batch_size: float
    rounds: list[PipelineThroughput]


def summarise_pipeline(rows: Sequence[PipelineThroughput]) -> list[PipelineResult]:
    """Group rounds by setting (first-seen order) and average them."""
    by_setting: dict[str, list[PipelineThroughput]] = {}
    for row in rows:
        by_setting.setdefault(row.setting, []).append(row)
    return [
        PipelineResult(
            setting=setting,
            overrides=rounds[0].overrides,
            images_per_s=round(statistics.fmean(row.images_per_s for row in rounds), 2),
            cpu_ms_per_image=round(statistics.fmean(row.cpu_ms_per_image for row in rounds), 1),
            others_cpu_percent=round(statistics.fmean(row.others_cpu_percent for row in rounds), 1),
            mean_batch_size=round(statistics.fmean(row.mean_batch_size for row in rounds), 2),
            rounds=rounds,
        )
        for setting, rounds in by_setting.items()
    ]


def service_settings(model_path: Path, providers: Sequence[str], server_env: Mapping[str, str]) -> Settings:
    """The settings the server gets: its defaults for this model and providers, then `server_env` (ALEXNET_*)."""
    values: dict[str, object] = {
        "model_path": model_path,
        "providers": list(providers),
        "auto_export": False,
        "require_cuda": CUDA_PROVIDER in providers,
    }
    values.update({key.removeprefix(ENV_PREFIX).lower(): value for key, value in server_env.items()})
    return _ArgumentSettings.model_validate(values)


def prepare(data: bytes, model: OnnxModel, settings: Settings) -> tuple[FloatArray, float, float]:
    """What the server does to each upload before inference: the server's own `prepare_image`."""
    return prepare_image(data, model.card.preprocessing, settings)


def decode_mode(settings: Settings) -> str:
    return "draft" if settings.fast_jpeg_decode else "full"


def measure_decode(
    images: Sequence[BenchImage], model: OnnxModel, settings: Settings, *, repeats: int, seconds: float
) -> DecodeResult:
    """Per-size cost in both JPEG decode modes (the server's and the other), then threaded throughput in the
    server's mode."""
    configured = decode_mode(settings)
    timings = []
    for fast in (settings.fast_jpeg_decode, not settings.fast_jpeg_decode):
        timings += _per_size_timings(images, model, settings.model_copy(update={"fast_jpeg_decode": fast}), repeats)
    largest_label = f"{LARGEST_SIZE[0]}x{LARGEST_SIZE[1]}"
    largest = {timing.mode: timing for timing in timings if timing.size == largest_label}
    thread_counts = sorted({1, settings.decode_threads})
    throughput = [_decode_throughput(images, model, settings, threads, seconds) for threads in thread_counts]
    return DecodeResult(
        configured_mode=configured,
        per_size=timings,
        throughput=throughput,
        largest_cpu_ms={mode: timing.cpu_ms for mode, timing in largest.items()},
        largest_wall_ms={mode: timing.total_ms for mode, timing in largest.items()},
        largest_probability_delta={
            mode: timing.max_probability_delta
            for mode, timing in largest.items()
            if timing.max_probability_delta is not None
        },
    )


def _per_size_timings(
    images: Sequence[BenchImage], model: OnnxModel, settings: Settings, repeats: int
) -> list[DecodeTiming]:
    # (decode ms, preprocess ms, thread CPU ms) per repeat, by image size.
    samples: dict[str, list[tuple[float, float, float]]] = {}
    for image in images:
        prepare(image.data, model, settings)  # first touch: page in the bytes, warm Pillow's code paths
        for _ in range(repeats):
            cpu_started = time.thread_time()
            _, decode_ms, preprocess_ms = prepare(image.data, model, settings)
            cpu_ms = (time.thread_time() - cpu_started) * 1000.0
            samples.setdefault(image.size_label, []).append((decode_ms, preprocess_ms, cpu_ms))
    deltas = _probability_deltas(images, model, settings) if settings.fast_jpeg_decode else {}
    timings = []
    for image in _one_per_size(images):
        rows = samples[image.size_label]
        same_size = [other for other in images if other.size_label == image.size_label]
        timings.append(
            DecodeTiming(
                size=image.size_label,
                mode=decode_mode(settings),
                megapixels=round(image.megapixels, 2),
                jpeg_bytes=int(median([len(other.data) for other in same_size])),
                decode_ms=round(median([row[0] for row in rows]), 2),
                preprocess_ms=round(median([row[1] for row in rows]), 2),
                total_ms=round(median([row[0] + row[1] for row in rows]), 2),
                cpu_ms=round(median([row[2] for row in rows]), 2),
                max_probability_delta=deltas.get(image.size_label),
            )
        )
    return timings


def _probability_deltas(images: Sequence[BenchImage], model: OnnxModel, settings: Settings) -> dict[str, float]:
    """By size, the largest |p - p_full| over the images: `settings`' decode against a full decode."""
    full = settings.model_copy(update={"fast_jpeg_decode": False})
    deltas: dict[str, float] = {}
    for image in images:
        probabilities = model.run(prepare(image.data, model, settings)[0][np.newaxis])
        reference = model.run(prepare(image.data, model, full)[0][np.newaxis])
        delta = float(np.abs(probabilities - reference).max())
        deltas[image.size_label] = max(delta, deltas.get(image.size_label, 0.0))
    return deltas


def _one_per_size(images: Sequence[BenchImage]) -> list[BenchImage]:
    seen: dict[str, BenchImage] = {}
    for image in images:
        seen.setdefault(image.size_label, image)
    return list(seen.values())


def _decode_throughput(
    images: Sequence[BenchImage], model: OnnxModel, settings: Settings, threads: int, seconds: float
) -> DecodeThroughput:
    blobs = itertools.cycle([image.data for image in images])
    done = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-decode") as pool:
        meter = CpuMeter((os.getpid(),))
        started = time.perf_counter()
        deadline = started + seconds
        pending: set[Future[tuple[FloatArray, float, float]]] = {
            pool.submit(prepare, next(blobs), model, settings) for _ in range(threads * 2)
        }
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            done += len(finished)
            if time.perf_counter() < deadline:
                pending |= {pool.submit(prepare, next(blobs), model, settings) for _ in finished}
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
    return DecodeThroughput(
        threads=threads,
        images_per_s=rate(done, elapsed),
        images=done,
        seconds=round(elapsed, 2),
        cpu_ms_per_image=cpu.ms_per(done),
        others_cpu_percent=cpu.others_percent,
    )


def measure_model(
    model: OnnxModel, batch_sizes: Sequence[int], *, seconds: float, precision: str = "fp32"
) -> list[ModelThroughput]:
    size = model.card.preprocessing.input_size
    rows = []
    for batch_size in batch_sizes:
        batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, size, size), dtype=np.float32)
        model.run(batch)  # allocate this shape's buffers outside the timing
        batches = 0
        meter = CpuMeter((os.getpid(),))
        started = time.perf_counter()
        while True:
            model.run(batch)
            batches += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        cpu = meter.stop()
        rows.append(
            ModelThroughput(
                precision=precision,
                batch_size=batch_size,
                images_per_s=rate(batches * batch_size, elapsed),
                ms_per_batch=round(elapsed / batches * 1000.0, 2),
                batches=batches,
                cpu_ms_per_image=cpu.ms_per(batches * batch_size),
                others_cpu_percent=cpu.others_percent,
            )
        )
    return rows


def single_image_ms(image: BenchImage, model: OnnxModel, settings: Settings) -> float:
    """One image through decode + preprocess + a batch-1 run, in ms of wall time."""
    started = time.perf_counter()
    tensor, _, _ = prepare(image.data, model, settings)
    model.run(tensor[np.newaxis])
    return (time.perf_counter() - started) * 1000.0


def measure_single_image(
    images: Sequence[BenchImage], model: OnnxModel, settings: Settings, *, repeats: int
) -> SingleImageLatency:
    """Each image through decode + preprocess + a batch-1 run, sequentially; median per image over `repeats`."""
    samples: dict[str, list[float]] = {image.name: [] for image in images}
    for _ in range(repeats + 1):  # the first pass only warms up
        for image in images:
            samples[image.name].append(single_image_ms(image, model, settings))
    per_image = {name: round(median(values[1:]), 3) for name, values in samples.items()}
    return SingleImageLatency(per_image_ms=per_image, summary=LatencySummary.of(list(per_image.values())))


def measure_pipeline(
    images: Sequence[BenchImage],
    model_for: Callable[[Settings], OnnxModel],
    base: Settings,
    setting: PipelineSetting,
    *,
    concurrency: int,
    warmup_seconds: float,
    seconds: float,
) -> PipelineThroughput:
    """The server's Runtime (decode pool + micro-batcher + postprocessing) fed by `concurrency` callers."""
    # model_copy does not re-run default factories: an override of fast_jpeg_decode keeps base's thread counts.
    settings = base.model_copy(update=setting.overrides)
    model = model_for(settings)
    return asyncio.run(_drive_runtime(Runtime(settings, model), images, setting, concurrency, warmup_seconds, seconds))


async def _drive_runtime(
    runtime: Runtime,
    images: Sequence[BenchImage],
    setting: PipelineSetting,
    concurrency: int,
    warmup_seconds: float,
    seconds: float,
) -> PipelineThroughput:
    await runtime.start()
    await runtime.wait_ready()
    blobs = [image.data for image in images]
    counter = itertools.count()
    latencies: list[float] = []
    completed_in_window = 0
    errors = 0
    window_start = time.perf_counter() + warmup_seconds
    window_end = window_start + seconds
    marks: dict[str, tuple[CpuSnapshot, float, float]] = {}

    async def caller() -> None:
        nonlocal errors, completed_in_window
        while (issued_at := time.perf_counter()) < window_end:
            data = blobs[next(counter) % len(blobs)]
            try:
                await runtime.predict(data, DEFAULT_TOP_K)
            except ServiceError:
                errors += 1
                continue
            finished_at = time.perf_counter()
            if window_start <= finished_at < window_end:
                completed_in_window += 1
            if issued_at >= window_start:
                latencies.append((finished_at - issued_at) * 1000.0)

    async def mark(name: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        marks[name] = (CpuSnapshot.take((os.getpid(),)), *_batch_totals(runtime))

    try:
        await asyncio.gather(
            mark("start", window_start), mark("end", window_end), *(caller() for _ in range(concurrency))
        )
    finally:
        await runtime.stop()
    cpu_start, batch_sum_start, batch_count_start = marks["start"]
    cpu_end, batch_sum_end, batch_count_end = marks["end"]
    batches = batch_count_end - batch_count_start
    return PipelineThroughput(
        setting=setting.name,
        overrides=dict(setting.overrides),
        concurrency=concurrency,
        images_per_s=rate(completed_in_window, seconds),
        images=completed_in_window,
        errors=errors,
        seconds=round(seconds, 2),
        mean_batch_size=round((batch_sum_end - batch_sum_start) / batches, 2) if batches else 0.0,
        process_cpu_percent=round(100.0 * (cpu_end.ours - cpu_start.ours) / seconds, 1),
        cpu_ms_per_image=round(1000.0 * (cpu_end.ours - cpu_start.ours) / completed_in_window, 1)
        if completed_in_window
        else 0.0,
        others_cpu_percent=others_cpu_percent(cpu_start, cpu_end, seconds),
        latency=LatencySummary.of(latencies),
    )


def _batch_totals(runtime: Runtime) -> tuple[float, float]:
    registry = runtime.metrics.registry
    total = registry.get_sample_value("alexnet_batch_size_sum") or 0.0
    count = registry.get_sample_value("alexnet_batch_size_count") or 0.0
    return total, count


def load_service_model(settings: Settings) -> OnnxModel:
    logger.info("loading the model (intra_op_threads=%d)", settings.intra_op_threads)
    return load_model(settings)
