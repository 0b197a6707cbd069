"""The request-body limits middleware, driven over ASGI so the test controls when each byte arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from app.budget import MemoryBudget
from app.errors import ServiceError, error_response
from app.limits import RequestBodyLimitsMiddleware
from app.metrics import Metrics

MAX_BODY_BYTES = 1000
BUDGET_BYTES = 2500
READ_TIMEOUT_S = 0.2


@dataclass
class Exchange:
    """What the middleware sent back, and what the app behind it saw."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    app_received: int | None = None
    budget_during: int | None = None


def body_reading_app(budget: MemoryBudget, exchange: Exchange) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A route that reads the whole body and answers its size; domain errors answered as the real app does."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await Request(scope, receive).body()
        except ServiceError as error:
            await error_response(error, scope["path"])(scope, receive, send)
            return
        exchange.app_received = len(body)
        exchange.budget_during = budget.in_flight_bytes
        await JSONResponse({"received": len(body)})(scope, receive, send)

    return app


def scope_for(headers: dict[str, str]) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/predict",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }


async def exchange(
    budget: MemoryBudget, metrics: Metrics, headers: dict[str, str], chunks: list[bytes], gap_s: float = 0.0
) -> Exchange:
    """One request through the middleware: `chunks` arrive `gap_s` apart."""
    result = Exchange()
    middleware = RequestBodyLimitsMiddleware(
        body_reading_app(budget, result),
        max_body_bytes=MAX_BODY_BYTES,
        budget=budget,
        read_timeout_s=READ_TIMEOUT_S,
        metrics=metrics,
    )
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            await asyncio.Event().wait()  # the client sends nothing more
        await asyncio.sleep(gap_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {name.decode(): value.decode() for name, value in message["headers"]}
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    await middleware(scope_for(headers), receive, send)
    return result


@pytest.fixture
def budget() -> MemoryBudget:
    return MemoryBudget(BUDGET_BYTES)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_a_declared_body_reserves_its_size_while_the_request_runs(budget: MemoryBudget, metrics: Metrics) -> None:
    result = asyncio.run(exchange(budget, metrics, {"content-length": "800"}, [b"x" * 800]))
    assert (result.status, result.app_received, result.budget_during) == (200, 800, 800)
    assert budget.in_flight_bytes == 0


def test_a_multipart_body_is_charged_twice(budget: MemoryBudget, metrics: Metrics) -> None:
    headers = {"content-length": "800", "content-type": "multipart/form-data; boundary=b"}
    result = asyncio.run(exchange(budget, metrics, headers, [b"x" * 800]))
    assert (result.status, result.budget_during) == (200, 1600)


def test_a_chunked_body_reserves_as_its_bytes_arrive(budget: MemoryBudget, metrics: Metrics) -> None:
    result = asyncio.run(exchange(budget, metrics, {}, [b"x" * 300] * 3))
    assert (result.status, result.app_received, result.budget_during) == (200, 900, 900)
    assert budget.in_flight_bytes == 0


def test_a_declared_body_that_does_not_fit_gets_503_unread(budget: MemoryBudget, metrics: Metrics) -> None:
    assert budget.try_reserve(2000)
    result = asyncio.run(exchange(budget, metrics, {"content-length": "800"}, [b"x" * 800]))
    assert result.status == 503
    assert result.app_received is None, "the body must not be read"
    assert result.headers["retry-after"] == "1"
    assert result.headers["connection"] == "close"
    assert json.loads(result.body) == {
        "error": {
            "code": "overloaded",
            "message": f"the server's memory budget for request bodies ({BUDGET_BYTES} bytes) is in use; retry shortly",
        }
    }
    assert budget.in_flight_bytes == 2000
    assert _sample(metrics, "alexnet_memory_budget_refusals_total") == 1


def test_a_chunked_body_that_outgrows_the_budget_gets_503_and_gives_back_what_it_held(
    budget: MemoryBudget, metrics: Metrics
) -> None:
    assert budget.try_reserve(2000)
    result = asyncio.run(exchange(budget, metrics, {}, [b"x" * 300] * 3))
    assert (result.status, result.headers["connection"], result.headers["retry-after"]) == (503, "close", "1")
    assert result.app_received is None
    assert budget.in_flight_bytes == 2000
    assert _sample(metrics, "alexnet_memory_budget_refusals_total") == 1


def test_a_body_over_the_size_limit_is_413_before_the_budget_is_asked(budget: MemoryBudget, metrics: Metrics) -> None:
    result = asyncio.run(exchange(budget, metrics, {"content-length": "1001"}, [b"x" * 1001]))
    assert (result.status, result.headers["connection"]) == (413, "close")
    assert _sample(metrics, "alexnet_memory_budget_refusals_total") == 0


def test_a_slow_body_gets_408_at_the_deadline_and_gives_back_what_it_held(
    budget: MemoryBudget, metrics: Metrics
) -> None:
    # Three chunks, each 0.15 s after the last: the second arrives at 0.3 s, past the 0.2 s deadline.
    result = asyncio.run(exchange(budget, metrics, {"content-length": "900"}, [b"x" * 300] * 3, gap_s=0.15))
    assert (result.status, result.headers["connection"]) == (408, "close")
    assert json.loads(result.body) == {
        "error": {
            "code": "body_read_timeout",
            "message": f"the request body did not arrive within {READ_TIMEOUT_S:g} s; send it faster or retry",
        }
    }
    assert result.app_received is None
    assert budget.in_flight_bytes == 0
    assert _sample(metrics, "alexnet_body_read_timeouts_total") == 1


def test_a_body_that_never_comes_gets_408(budget: MemoryBudget, metrics: Metrics) -> None:
    result = asyncio.run(exchange(budget, metrics, {"content-length": "10"}, []))
    assert result.status == 408
    assert budget.in_flight_bytes == 0
