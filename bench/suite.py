"""One benchmark run, phase by phase: images and model, in-process capacity, then the servers."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import PIL

from app.config import CPU_PROVIDER, CUDA_PROVIDER, Settings
from app.inference import OnnxModel
from bench.endtoend import started_server
from bench.images import BenchImage, image_set
from bench.inprocess import (
    SingleImageLatency,
    load_service_model,
    measure_decode,
    measure_model,
    measure_pipeline,
    measure_single_image,
    service_settings,
    summarise_pipeline,
)
from bench.modelfile import ModelFile, prepare_model
from bench.plan import COMPARISON_CONCURRENCY, Device, PipelineSetting, Plan
from bench.procfs import cpu_model_name
from bench.report import (
    BenchReport,
    compute_ratios,
    cross_check,
    evaluate,
    evaluate_workloads,
    workload_cross_checks,
)
from bench.workloads import load_workloads, run_workloads

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
INHERITED_ENV_PREFIXES = ("MALLOC_", "OMP_", "ORT_", "PYTHON")


@dataclass(frozen=True)
class Options:
    plan: Plan
    device: Device
    model: Path | None
    fp16_model: Path | None
    cache_dir: Path
    server_env: dict[str, str]
    argv: list[str]


def providers_for(device: Device) -> list[str]:
    return [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]


def run_suite(options: Options) -> BenchReport:
    load_before = _load_average()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    plan = options.plan
    providers = providers_for(options.device)
    model_file = prepare_model(options.model, options.cache_dir)
    logger.info("model: %s (%s)", model_file.path, model_file.note)
    images = image_set(options.cache_dir, plan.images_per_size)
    workloads, skipped_workloads = load_workloads(images, plan.workload_photo_limit)
    base = service_settings(model_file.path, providers, options.server_env)

    models: dict[int, OnnxModel] = {}

    def model_for(settings: Settings) -> OnnxModel:
        # Sessions differ only by their thread count; reuse one per count across settings.
        if settings.intra_op_threads not in models:
            models[settings.intra_op_threads] = load_service_model(settings)
        return models[settings.intra_op_threads]

    model = model_for(base)
    logger.info("decode + preprocess alone")
    decode = measure_decode(images, model, base, repeats=plan.decode_repeats, seconds=plan.decode_seconds)
    logger.info("model alone at batch %s", ", ".join(map(str, plan.model_batch_sizes)))
    model_speed = measure_model(model, plan.model_batch_sizes, seconds=plan.model_seconds)
    if options.fp16_model is not None:
        fp16 = load_service_model(base.model_copy(update={"model_path": options.fp16_model}))
        model_speed += measure_model(fp16, plan.model_batch_sizes, seconds=plan.model_seconds, precision="fp16")
        del fp16
    rounds = []
    settings = distinct_settings(base, plan.pipeline_settings)
    # Settings take turns, round after round, so a change in the machine's load does not favour one of them.
    for round_index, setting in itertools.product(range(plan.pipeline_rounds), settings):
        logger.info("in-process pipeline, round %d: %s", round_index + 1, setting.name)
        rounds.append(
            measure_pipeline(
                images,
                model_for,
                base,
                setting,
                concurrency=plan.saturating_concurrency,
                warmup_seconds=plan.pipeline_warmup_seconds,
                seconds=plan.pipeline_seconds,
            )
        )
        logger.info("  %.1f images/s", rounds[-1].images_per_s)
    pipeline = summarise_pipeline(rounds)
    # Only the default session is still needed (for the single-image path); free the others and their threads.
    models.clear()
    gc.collect()

    env = server_env(model_file, providers, options.server_env)
    run_dir = options.cache_dir / "runs" / started_at.strftime("%Y%m%dT%H%M%S")
    single_image: dict[str, SingleImageLatency] = {}
    # Both servers run side by side (the idle one costs nothing), so the batched and unbatched c=16 levels can
    # be run back to back: a shared machine's changing load then hits both alike.
    with (
        started_server("batched", env, images, plan, cwd=REPO_ROOT, log_path=run_dir / "batched.log") as batched,
        started_server(
            "unbatched",
            {**env, "ALEXNET_MAX_BATCH_SIZE": "1"},
            images,
            plan,
            cwd=REPO_ROOT,
            log_path=run_dir / "unbatched.log",
        ) as unbatched,
    ):
        batched.warm_up(plan.saturating_concurrency)
        unbatched.warm_up(COMPARISON_CONCURRENCY)
        for concurrency in plan.concurrency_levels:
            for body in plan.body_kinds:
                if concurrency == 1:
                    # Right before each c=1 level, so both see the same machine.
                    logger.info("single-image path, in process (before c=1 %s)", body)
                    single_image[body] = measure_single_image(images, model, base, repeats=plan.single_image_repeats)
                batched.run_level(concurrency, body)
                if concurrency == COMPARISON_CONCURRENCY:
                    unbatched.run_level(concurrency, body)
        # Before the results, so the batched server's RSS after the run includes the workloads.
        workload_results = run_workloads(workloads, base, model, plan, batched, env, run_dir)
        batched_result, unbatched_result = batched.result(), unbatched.result()
    del model
    gc.collect()
    ratios = compute_ratios(
        decode, model_speed, single_image, pipeline, batched_result, unbatched_result, [image.name for image in images]
    )
    meta = _meta(options, providers, images, started_at, time.perf_counter() - started)
    meta["load_average_before"] = load_before
    meta["load_average_after"] = _load_average()
    noise = [row.others_cpu_percent for row in decode.throughput]
    noise += [row.others_cpu_percent for row in model_speed]
    noise += [row.others_cpu_percent for result in pipeline for row in result.rounds]
    noise += [level.others_cpu_percent for server in (batched_result, unbatched_result) for level in server.levels]
    noise += [row.ceiling.others_cpu_percent for row in workload_results]
    noise += [level.others_cpu_percent for row in workload_results for level in [*row.levels, *row.baseline_levels]]
    meta["others_cpu_percent_mean"] = round(sum(noise) / len(noise), 1)
    meta["others_cpu_percent_max"] = max(noise)
    return BenchReport(
        meta=meta,
        model=model_file,
        images=[_image_entry(image) for image in images],
        decode=decode,
        model_speed=model_speed,
        single_image=single_image,
        pipeline=pipeline,
        servers=[batched_result, unbatched_result],
        ratios=ratios,
        targets=evaluate(ratios),
        cross_checks=cross_check(ratios) + workload_cross_checks(workload_results),
        workloads=workload_results,
        workload_targets=evaluate_workloads(workload_results),
        skipped_workloads=skipped_workloads,
    )


def distinct_settings(base: Settings, candidates: Sequence[PipelineSetting]) -> list[PipelineSetting]:
    """`candidates` without those that come to the same settings as an earlier one (e.g. a variation that is
    already the server's default on this machine)."""
    seen: list[dict[str, Any]] = []
    kept = []
    for candidate in candidates:
        effective = base.model_copy(update=candidate.overrides).model_dump()
        if effective not in seen:
            seen.append(effective)
            kept.append(candidate)
    return kept


def server_env(model_file: ModelFile, providers: Sequence[str], extra: dict[str, str]) -> dict[str, str]:
    """The server's settings: this model, these providers, nothing built on the fly; then the user's overrides."""
    env = {
        "ALEXNET_MODEL_PATH": str(model_file.path),
        "ALEXNET_AUTO_EXPORT": "false",
        "ALEXNET_PROVIDERS": ",".join(providers),
        "ALEXNET_REQUIRE_CUDA": str(CUDA_PROVIDER in providers).lower(),
    }
    return {**env, **extra}


def _image_entry(image: BenchImage) -> dict[str, Any]:
    return {"name": image.name, "width": image.width, "height": image.height, "bytes": len(image.data)}


def _meta(
    options: Options, providers: list[str], images: Sequence[BenchImage], started_at: datetime, seconds: float
) -> dict[str, Any]:
    sizes = Counter(image.size_label for image in images)
    return {
        "quick": options.plan.quick,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(seconds, 1),
        "command": shlex.join(["python", "-m", "bench", *options.argv]),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "device": options.device,
        "device_name": _gpu_name() if options.device == "cuda" else "CPU only",
        "providers": providers,
        "plan": options.plan,
        "image_mix": ", ".join(f"{size} ×{count}" for size, count in sizes.items())
        + f" ({len(images)} JPEGs, {sum(len(image.data) for image in images) / 1e6:.1f} MB, sent round-robin)",
        "executable": sys.executable,
        # Variables the servers inherit that change how they run (allocator, thread pools).
        "inherited_env": {key: value for key, value in os.environ.items() if key.startswith(INHERITED_ENV_PREFIXES)},
    }


def _cpu_name() -> str:
    name = cpu_model_name()
    return platform.processor() or name if name == "unknown CPU" else name


def _load_average() -> list[float]:
    """1, 5 and 15-minute load averages: a shared machine's business shows here before a run starts."""
    return [round(value, 2) for value in os.getloadavg()]


def _gpu_name() -> str:
    try:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU (nvidia-smi failed)"
    return completed.stdout.strip().replace("\n", "; ")
