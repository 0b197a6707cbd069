"""What an explanation costs: `python -m bench.explain_latency [--model PATH] [--grid 7] [--rounds 5]`.

In process, through the server's own `Runtime` (decode pool + micro-batcher), in interleaved rounds:
- one `/v1/explain` at `grid` (the image and its grid² occluded copies, one request's batch rows);
- grid² + 1 single predictions one after another (what a client without the endpoint would do);
- the same predictions all at once (the micro-batcher groups them, as it does an explanation's rows).
Reported: median wall time of each and their ratios, plus the process's CPU time (all threads), which
other load on a shared machine changes less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app.config import CPU_PROVIDER, DEFAULT_EXPLAIN_GRID, DEFAULT_TOP_K
from app.explain import DEFAULT_BASELINE
from app.inference import load_model
from app.runtime import Runtime
from bench.inprocess import service_settings
from bench.modelfile import prepare_model

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "alexnet-serve-bench"
DEFAULT_ROUNDS = 5
# A typical web photo (the shared sample's median is ~0.19 MP).
IMAGE_SIZE = (500, 375)


@dataclass(frozen=True)
class Timing:
    wall_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class ExplainLatency:
    grid: int
    rows: int
    rounds: int
    explain: Timing
    sequential: Timing
    concurrent: Timing

    def lines(self) -> list[str]:
        singles = f"{self.rows} single predictions"
        return [
            f"explanation at grid {self.grid} ({self.rows} model rows), medians of {self.rounds} interleaved rounds:",
            f"  explain                         {_timing(self.explain)}",
            f"  {singles + ', one by one':<31} {_timing(self.sequential)}",
            f"  {singles + ', all at once':<31} {_timing(self.concurrent)}",
            f"  explain / one by one:  wall {self.explain.wall_ms / self.sequential.wall_ms:.2f}, "
            f"CPU {self.explain.cpu_ms / self.sequential.cpu_ms:.2f}",
            f"  explain / all at once: wall {self.explain.wall_ms / self.concurrent.wall_ms:.2f}, "
            f"CPU {self.explain.cpu_ms / self.concurrent.cpu_ms:.2f}",
        ]


def _timing(timing: Timing) -> str:
    return f"{timing.wall_ms:9.1f} ms wall {timing.cpu_ms:9.1f} ms CPU"


def photo_jpeg() -> bytes:
    gradient = Image.linear_gradient("L").resize(IMAGE_SIZE)
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient.rotate(90)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def _timed(work: Callable[[], Awaitable[object]]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return Timing(wall_ms=(time.perf_counter() - wall) * 1000.0, cpu_ms=(time.process_time() - cpu) * 1000.0)


def _median(timings: Sequence[Timing]) -> Timing:
    return Timing(
        wall_ms=statistics.median(t.wall_ms for t in timings), cpu_ms=statistics.median(t.cpu_ms for t in timings)
    )


async def measure(runtime: Runtime, data: bytes, grid: int, rounds: int) -> ExplainLatency:
    rows = grid * grid + 1

    async def explain() -> None:
        await runtime.explain(data, target=None, grid=grid, baseline=DEFAULT_BASELINE, overlay=False)

    async def one_by_one() -> None:
        for _ in range(rows):
            await runtime.predict(data, DEFAULT_TOP_K)

    async def all_at_once() -> None:
        await asyncio.gather(*(runtime.predict(data, DEFAULT_TOP_K) for _ in range(rows)))

    phases = {"explain": explain, "sequential": one_by_one, "concurrent": all_at_once}
    await asyncio.gather(*(work() for work in phases.values()))  # warm every path once, untimed
    timings: dict[str, list[Timing]] = {name: [] for name in phases}
    for _ in range(rounds):
        for name, work in phases.items():
            timings[name].append(await _timed(work))
    return ExplainLatency(
        grid=grid,
        rows=rows,
        rounds=rounds,
        explain=_median(timings["explain"]),
        sequential=_median(timings["sequential"]),
        concurrent=_median(timings["concurrent"]),
    )


async def run(model_path: Path, grid: int, rounds: int) -> ExplainLatency:
    settings = service_settings(model_path, [CPU_PROVIDER], {})
    runtime = Runtime(settings, load_model(settings))
    await runtime.start()
    try:
        await runtime.wait_ready()
        return await measure(runtime, photo_jpeg(), grid, rounds)
    finally:
        await runtime.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.explain_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="this ONNX file instead of a cached random-weights export")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the random export is kept")
    parser.add_argument("--grid", type=int, default=DEFAULT_EXPLAIN_GRID, help="occlusion cells per side")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds (medians reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    model = prepare_model(args.model, args.cache_dir)
    result = asyncio.run(run(model.path, args.grid, args.rounds))
    header = [f"model {model.path.name}: {model.note}; {os.cpu_count()} CPUs visible"]
    sys.stdout.write("\n".join([*header, *result.lines()]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
