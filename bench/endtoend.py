"""End to end: the real server under the load generator, level by level, with the server's own view of each level."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from bench.images import BenchImage
from bench.load import LoadRun, LoadSpec, RequestRecord, exchange, request_bytes, run_load
from bench.plan import BodyKind, Plan
from bench.procfs import CpuSnapshot, others_cpu_percent, process_cpu_seconds, rss_kib
from bench.server import HOST, ServerProcess
from bench.stats import LatencySummary, rate

logger = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "queue", "infer", "total")
# The workload name of levels run with the generated image mix (the issue-5 levels).
MIX = "mix"


@dataclass(frozen=True)
class RequestSample:
    """One measured request, for the c=1 overhead: its image, its latency, and the server's own time for the
    work the in-process single-image path also does (decode + preprocess + inference), when reported."""

    image: int
    latency_ms: float
    work_ms: float | None


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level and body kind.

    Stage means are the server's Server-Timing values (ms); `outside_runtime_ms` is client latency minus the
    server's own total: uvicorn, ASGI middleware, body/multipart parsing, JSON, and waiting for the event loop.
    CPU percentages are of one core (200 = both cores of a 2-core machine); `others_cpu_percent` is what the
    rest of the machine used meanwhile, i.e. how noisy this level's numbers are.
    """

    concurrency: int
    body: BodyKind
    images_per_s: float
    latency: LatencySummary
    requests: int
    errors: int
    error_samples: list[str]
    mean_batch_size: float
    inference_busy_percent: float
    server_cpu_percent: float
    # Server CPU time per successful image: unlike throughput, barely moved by other processes' load.
    server_cpu_ms_per_image: float
    client_cpu_percent: float
    others_cpu_percent: float
    stage_means_ms: dict[str, float]
    outside_runtime_ms: float
    rss_kib: int
    samples: list[RequestSample]
    workload: str = MIX


@dataclass(frozen=True)
class ServerResult:
    label: str
    settings_env: dict[str, str]
    providers: list[str]
    startup_s: float
    rss_after_warmup_kib: int
    rss_after_run_kib: int
    warmup_errors: int
    levels: list[LevelResult]
    log_path: str

    @property
    def rss_growth(self) -> float:
        return (self.rss_after_run_kib - self.rss_after_warmup_kib) / self.rss_after_warmup_kib

    @property
    def errors(self) -> int:
        return self.warmup_errors + sum(level.errors for level in self.levels)


class ServerBench:
    """A started server plus the load levels run against it so far."""

    def __init__(
        self, label: str, server: ServerProcess, images: Sequence[BenchImage], plan: Plan, cwd: Path, startup_s: float
    ) -> None:
        self.label = label
        self._server = server
        self._paths = [str(image.path) for image in images]
        self._plan = plan
        self._cwd = cwd
        self._levels: list[LevelResult] = []
        self._warmup_errors = 0
        self._rss_after_warmup: int | None = None
        self._startup_s = startup_s

    def warm_up(self, concurrency: int) -> None:
        """`server_warmup_rounds` requests per connection at `concurrency`, with every body kind (time-capped),
        so arenas, allocator pools and buffers reach their working size; then the RSS baseline."""
        for body in self._plan.body_kinds:
            spec = replace(
                self._spec(body, concurrency, 0.0, self._plan.server_warmup_seconds),
                max_requests=self._plan.server_warmup_rounds * concurrency,
            )
            run = run_load(spec, self._cwd)
            self._warmup_errors += run.errors
        self._rss_after_warmup = rss_kib(self._server.pid)

    def run_level(
        self, concurrency: int, body: BodyKind, *, workload: str = MIX, images: Sequence[BenchImage] | None = None
    ) -> LevelResult:
        """One level with the image mix, or with a workload's `images`."""
        spec = self._spec(body, concurrency, self._plan.level_warmup_seconds, self._plan.level_seconds)
        if images is not None:
            spec = replace(spec, image_paths=[str(image.path) for image in images])
        pids = (self._server.pid, os.getpid())
        # Server counters bracket the whole child run (its warm-up included); rates use the child's wall time.
        metrics_before, server_cpu_before = self._server.scrape_metrics(), process_cpu_seconds(self._server.pid)
        children_before, snapshot_before = _children_cpu_seconds(), CpuSnapshot.take(pids)
        run = run_load(spec, self._cwd)
        children_cpu = _children_cpu_seconds() - children_before
        snapshot_after = CpuSnapshot.take(pids)
        metrics_after, server_cpu_after = self._server.scrape_metrics(), process_cpu_seconds(self._server.pid)
        delta = {name: metrics_after[name] - metrics_before[name] for name in metrics_before}
        batches = delta["alexnet_batch_size_count"]
        level = LevelResult(
            concurrency=concurrency,
            body=body,
            images_per_s=rate(run.ok_in_window, run.window_s),
            latency=LatencySummary.of([record.latency_ms for record in run.records]),
            requests=len(run.records),
            errors=run.errors,
            error_samples=run.error_samples,
            mean_batch_size=round(delta["alexnet_batch_size_sum"] / batches, 2) if batches else 0.0,
            inference_busy_percent=round(100.0 * delta["alexnet_inference_seconds_sum"] / run.wall_s, 1),
            server_cpu_percent=round(100.0 * (server_cpu_after - server_cpu_before) / run.wall_s, 1),
            server_cpu_ms_per_image=round(1000.0 * (server_cpu_after - server_cpu_before) / run.ok_total, 1)
            if run.ok_total
            else 0.0,
            client_cpu_percent=round(100.0 * run.client_cpu_s / run.wall_s, 1),
            # The child's whole life (start-up included) is ours; the run's wall time is a slight underestimate
            # of the interval, so this errs towards reporting a little more noise than there was.
            others_cpu_percent=others_cpu_percent(snapshot_before, snapshot_after, run.wall_s, children_cpu),
            stage_means_ms=_stage_means(run),
            outside_runtime_ms=_outside_runtime_ms(run),
            rss_kib=rss_kib(self._server.pid),
            samples=[_sample(record) for record in run.records],
            workload=workload,
        )
        logger.info(
            "%s %s c=%d %s: %.1f images/s, p50 %.0f ms, p99 %.0f ms, errors %d, others' CPU %.0f%%",
            self.label,
            workload,
            concurrency,
            body,
            level.images_per_s,
            level.latency.p50,
            level.latency.p99,
            level.errors,
            level.others_cpu_percent,
        )
        if workload == MIX:  # workload levels are reported with their workload, not among the mix's levels
            self._levels.append(level)
        return level

    def result(self) -> ServerResult:
        if self._rss_after_warmup is None:
            raise RuntimeError("warm_up() was not run, so there is no RSS baseline")
        return ServerResult(
            label=self.label,
            settings_env=dict(self._server.settings_env),
            providers=list(self._server.get_json("/health").get("providers", [])),
            startup_s=round(self._startup_s, 2),
            rss_after_warmup_kib=self._rss_after_warmup,
            rss_after_run_kib=rss_kib(self._server.pid),
            warmup_errors=self._warmup_errors,
            levels=list(self._levels),
            log_path=str(self._server.log_path),
        )

    def paired_with(
        self, images: Sequence[BenchImage], body: BodyKind, in_process: Callable[[BenchImage], float], pairs: int
    ) -> list[tuple[float, float]]:
        """`pairs` times, the next image through `in_process` (which returns its latency in ms) and right after it
        through the server, one request at a time: (in-process ms, server ms) per pair. The two halves of a pair are
        milliseconds apart, so the machine's drift over minutes cancels out of their difference. A first round of
        up to five pairs only warms up."""
        spec = self._spec(body, 1, 0.0, 0.0)
        requests = [request_bytes(spec, image.data, image.path.name) for image in images]
        return asyncio.run(self._pairs(images, requests, in_process, pairs))

    async def _pairs(
        self,
        images: Sequence[BenchImage],
        requests: Sequence[bytes],
        in_process: Callable[[BenchImage], float],
        pairs: int,
    ) -> list[tuple[float, float]]:
        reader, writer = await asyncio.open_connection(HOST, self._server.port)
        warmup = min(5, len(images))
        measured: list[tuple[float, float]] = []
        try:
            for index in range(warmup + pairs):
                image = index % len(images)
                in_process_ms = in_process(images[image])
                started = time.perf_counter()
                status, _, answer = await exchange(reader, writer, requests[image])
                server_ms = (time.perf_counter() - started) * 1000.0
                if status != 200:
                    raise RuntimeError(f"the server answered {status} to a single image: {answer[:200]!r}")
                if index >= warmup:
                    measured.append((in_process_ms, server_ms))
        finally:
            writer.close()
            await writer.wait_closed()
        return measured

    def _spec(self, body: BodyKind, concurrency: int, warmup_s: float, duration_s: float) -> LoadSpec:
        return LoadSpec(
            host=HOST,
            port=self._server.port,
            body=body,
            concurrency=concurrency,
            warmup_s=warmup_s,
            duration_s=duration_s,
            max_requests=self._plan.max_requests_per_level,
            image_paths=self._paths,
        )


@contextmanager
def started_server(
    label: str,
    settings_env: Mapping[str, str],
    images: Sequence[BenchImage],
    plan: Plan,
    *,
    cwd: Path,
    log_path: Path,
) -> Iterator[ServerBench]:
    """`python -m app` with `settings_env`, ready to serve; stopped (SIGTERM) on leaving the block."""
    started = time.perf_counter()
    with ServerProcess(settings_env, cwd=cwd, log_path=log_path) as server:
        startup_s = time.perf_counter() - started
        logger.info("%s server ready in %.1f s (pid %d, port %d)", label, startup_s, server.pid, server.port)
        yield ServerBench(label, server, images, plan, cwd, startup_s)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sample(record: RequestRecord) -> RequestSample:
    stages = dict(zip(STAGES, record.server_ms, strict=True)) if record.server_ms is not None else None
    work = stages["decode"] + stages["preprocess"] + stages["infer"] if stages is not None else None
    return RequestSample(image=record.image, latency_ms=record.latency_ms, work_ms=work)


def _stage_means(run: LoadRun) -> dict[str, float]:
    timed = [record.server_ms for record in run.records if record.server_ms is not None]
    if not timed:
        return {}
    return {stage: round(sum(row[index] for row in timed) / len(timed), 2) for index, stage in enumerate(STAGES)}


def _outside_runtime_ms(run: LoadRun) -> float:
    gaps = [record.latency_ms - record.server_ms[-1] for record in run.records if record.server_ms is not None]
    return round(sum(gaps) / len(gaps), 2) if gaps else 0.0
