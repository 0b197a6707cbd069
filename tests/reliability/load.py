"""A small asyncio load generator for the soak and overload tests: closed-loop (N workers) and open-loop (fixed rate).

Every request knows what it expects; every answer is recorded with its client-side latency, and a transport
failure (refused, reset, timed out) is recorded as an outcome of its own, never raised.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

REQUEST_TIMEOUT_S = 60.0
PREDICT_PATH = "/v1/predict"
# httpx logs every request at INFO; thousands of lines (with `--log-cli-level=INFO`) would slow the client
# enough to show up in the latencies it measures.
PER_REQUEST_LOGGERS = ("httpx", "httpcore")


@dataclass(frozen=True)
class PlannedRequest:
    """One POST to `/v1/predict` and the answer it must get: 200 with a prediction, or (status, error code)."""

    kind: str
    content: bytes
    headers: Mapping[str, str]
    expected: int | tuple[int, str]
    query: str = ""


@dataclass(frozen=True)
class Outcome:
    request: PlannedRequest
    latency_s: float
    status: int | None = None
    code: str | None = None
    retry_after: str | None = None
    transport_error: str | None = None

    @property
    def as_expected(self) -> bool:
        if self.transport_error is not None:
            return False
        expected = self.request.expected
        if isinstance(expected, tuple):
            return (self.status, self.code) == expected
        return self.status == expected and self.code is None


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.outcomes) / self.elapsed_s if self.elapsed_s else 0.0

    def count(self, status: int) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def unexpected(self) -> Counter[str]:
        """`kind: got` for every answer that was not the expected one, counted."""
        return Counter(
            f"{outcome.request.kind}: {outcome.transport_error or (outcome.status, outcome.code)}"
            for outcome in self.outcomes
            if not outcome.as_expected
        )

    def transport_errors(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.transport_error is not None)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 < fraction <= 1)."""
    ordered = sorted(values)
    assert ordered, "no values"
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        body = response.json()
        # A 200 must carry a full prediction; anything less counts as a wrong answer.
        return None if len(body["top5"]) == 5 else "incomplete prediction"
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return f"non-standard error body: {response.text[:80]}"
    return str(code)


async def send(client: httpx.AsyncClient, request: PlannedRequest) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(PREDICT_PATH + request.query, content=request.content, headers=request.headers)
    except httpx.TransportError as error:
        return Outcome(request, time.perf_counter() - started, transport_error=type(error).__name__)
    latency = time.perf_counter() - started
    return Outcome(
        request,
        latency,
        status=response.status_code,
        code=_error_code(response),
        retry_after=response.headers.get("retry-after"),
    )


@asynccontextmanager
async def _client(base_url: str, connections: int) -> AsyncIterator[httpx.AsyncClient]:
    loggers = [logging.getLogger(name) for name in PER_REQUEST_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # The test process holds a large heap (pytest, hypothesis, numpy, the app): keep it out of the collector's
    # full passes, so that the client's own GC pauses do not show up as server latency.
    gc.freeze()
    try:
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
            yield client
    finally:
        gc.unfreeze()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def closed_loop(base_url: str, requests: Sequence[PlannedRequest], concurrency: int) -> LoadReport:
    """`concurrency` workers send `requests` in order, each sending its next request when its answer arrives."""
    report = LoadReport()
    pending = iter(requests)

    async def worker(client: httpx.AsyncClient) -> None:
        for request in pending:
            report.outcomes.append(await send(client, request))

    async with _client(base_url, concurrency) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        report.elapsed_s = time.perf_counter() - started
    return report


async def open_loop(base_url: str, request: PlannedRequest, rate: float, count: int, connections: int) -> LoadReport:
    """Send `count` copies of `request` at `rate` per second, whether or not earlier ones were answered."""
    report = LoadReport()

    async def one(client: httpx.AsyncClient) -> None:
        report.outcomes.append(await send(client, request))

    async with _client(base_url, connections) as client:
        started = time.perf_counter()
        tasks = []
        for index in range(count):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client)))
        await asyncio.gather(*tasks)
        report.elapsed_s = time.perf_counter() - started
    return report
