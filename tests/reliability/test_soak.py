"""Soak: 5,000 requests at concurrency 32, good images mixed with hostile ones, against the real server.

Every answer must be the expected one (0 unexpected statuses, 0 connection errors). The server's resident memory is
sampled throughout: its peak over the soak, the end included, must be within 5% of its peak over a warm-up of the
same mix. Peaks, because a single reading swings by ±3% with where the allocator happens to be between batches.
The thread count must not grow either: each new thread brings its own malloc arena, which is how RSS once grew.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping

import pytest

from tests.app.live_server import LiveServer
from tests.app.sample_images import encode, scene
from tests.reliability.hostile_inputs import png_bomb, small_jpeg, small_png, svg, truncated
from tests.reliability.load import LoadReport, PlannedRequest, closed_loop, percentile
from tests.reliability.server_support import (
    AUTH_HEADERS,
    MIB,
    PeakMemory,
    assert_healthy,
    sampled_peak_memory,
    thread_count,
)

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

SOAK_REQUESTS = 5000
WARM_UP_REQUESTS = 300
CONCURRENCY = 32
MAX_RSS_GROWTH = 0.05
RSS_SAMPLE_INTERVAL_S = 0.1
# A bound on the whole soak, so a wedged server fails the test instead of hanging CI.
SOAK_TIMEOUT_S = 480.0

RAW = {"Content-Type": "application/octet-stream"}


def _good(kind: str, data: bytes) -> PlannedRequest:
    return PlannedRequest(kind, data, AUTH_HEADERS | RAW, 200)


def _bad(
    kind: str, data: bytes, expected: tuple[int, str], headers: Mapping[str, str] | None = None, query: str = ""
) -> PlannedRequest:
    return PlannedRequest(kind, data, AUTH_HEADERS | RAW if headers is None else headers, expected, query)


def request_mix() -> list[PlannedRequest]:
    """One cycle of the soak: seven small good images (JPEG, PNG, WebP, odd sizes) and three hostile requests."""
    good = [
        _good("jpeg 64x64", small_jpeg(64, 64, seed=1)),
        _good("png 48x48", small_png(48, 48, seed=2)),
        _good("jpeg 96x64", small_jpeg(96, 64, seed=3)),
        _good("webp 64x64", encode(scene(64, 64, seed=4), "WEBP")),
        _good("jpeg 32x32", small_jpeg(32, 32, seed=5)),
        _good("png 64x32", small_png(64, 32, seed=6)),
        _good("jpeg 64x96", small_jpeg(64, 96, seed=7)),
    ]
    bad = [
        _bad("svg", svg(), (415, "unsupported_media_type")),
        _bad("truncated jpeg", truncated(small_jpeg()), (400, "invalid_image")),
        _bad("png bomb", png_bomb(), (413, "image_too_large")),
        _bad("no token", small_jpeg(), (401, "unauthorized"), headers=RAW),
        _bad("top_k 0", small_jpeg(), (422, "invalid_parameter"), query="?top_k=0"),
        _bad("empty body", b"", (400, "invalid_image")),
    ]
    # Three requests in every ten are hostile, rotating through the hostile kinds.
    hostile = itertools.cycle(bad)
    cycle: list[PlannedRequest] = []
    for index, request in enumerate(itertools.islice(itertools.cycle(good), 70)):
        cycle.append(request)
        if index % 7 in (1, 3, 5):
            cycle.append(next(hostile))
    return cycle


def planned(count: int) -> list[PlannedRequest]:
    return list(itertools.islice(itertools.cycle(request_mix()), count))


def _summary(report: LoadReport) -> str:
    latencies = [outcome.latency_s * 1000.0 for outcome in report.outcomes]
    good = sum(1 for outcome in report.outcomes if outcome.status == 200)
    return (
        f"{len(report.outcomes)} requests ({good} predictions) in {report.elapsed_s:.1f} s = "
        f"{report.throughput:.1f} req/s, {good / report.elapsed_s:.1f} predictions/s; "
        f"latency p50 {percentile(latencies, 0.5):.0f} ms, p99 {percentile(latencies, 0.99):.0f} ms"
    )


def test_soak_mixed_traffic_answers_every_request_as_expected(shared_server: LiveServer) -> None:
    pid = shared_server.process.pid

    async def soak() -> tuple[LoadReport, PeakMemory, int, LoadReport, PeakMemory]:
        async with asyncio.timeout(SOAK_TIMEOUT_S):
            with sampled_peak_memory(pid, RSS_SAMPLE_INTERVAL_S) as warm_up_memory:
                warm_up = await closed_loop(shared_server.url, planned(WARM_UP_REQUESTS), CONCURRENCY)
            threads_after_warm_up = thread_count(pid)
            with sampled_peak_memory(pid, RSS_SAMPLE_INTERVAL_S) as soak_memory:
                report = await closed_loop(shared_server.url, planned(SOAK_REQUESTS), CONCURRENCY)
            return warm_up, warm_up_memory, threads_after_warm_up, report, soak_memory

    warm_up, warm_up_memory, threads_after_warm_up, report, soak_memory = asyncio.run(soak())
    threads_after_soak = thread_count(pid)
    growth = (soak_memory.peak - warm_up_memory.peak) / warm_up_memory.peak
    logger.info("soak warm-up: %s", _summary(warm_up))
    logger.info("soak: %s", _summary(report))
    logger.info(
        "soak RSS: peak %.1f MiB in the warm-up, %.1f MiB in the soak (%+.2f%%), %.1f MiB between them; "
        "threads %d -> %d",
        warm_up_memory.peak / MIB,
        soak_memory.peak / MIB,
        growth * 100,
        soak_memory.before / MIB,
        threads_after_warm_up,
        threads_after_soak,
    )

    assert len(report.outcomes) == SOAK_REQUESTS
    assert report.transport_errors() == 0, report.unexpected()
    assert not report.unexpected(), report.unexpected()
    assert not warm_up.unexpected(), warm_up.unexpected()
    assert growth < MAX_RSS_GROWTH, (
        f"RSS peak grew {growth:.1%}: {warm_up_memory.peak / MIB:.1f} -> {soak_memory.peak / MIB:.1f} MiB"
    )
    assert threads_after_soak <= threads_after_warm_up
    assert_healthy(shared_server)
