"""Request-body limits, enforced while the body streams in, before it is buffered: size, memory, read time."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.budget import MemoryBudget, Reservation
from app.config import MULTIPART_CHARGE_FACTOR
from app.errors import (
    BodyReadTimeoutError,
    MemoryBudgetFullError,
    PayloadTooLargeError,
    ServiceError,
    error_response,
)
from app.metrics import Metrics


def _declared_length(scope: Scope) -> int | None:
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is None or not declared.isdigit():
        return None
    return int(declared)


def _charge_factor(scope: Scope) -> int:
    # A multipart body is parsed into its parts, and the route reads each part into bytes: while that happens
    # the body is held twice.
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    return MULTIPART_CHARGE_FACTOR if content_type.lower().startswith(b"multipart/") else 1


class RequestBodyLimitsMiddleware:
    """Bounds what a request body may cost, before and while it is read.

    - Size: over `max_body_bytes` gets 413, at once when Content-Length says so, else as bytes arrive.
    - Memory: the body reserves its size in the process-wide budget, from Content-Length before a byte is
      read (chunked bodies: as bytes arrive), and holds it until the response is sent. A body that does not
      fit gets 503 with Retry-After, unread.
    - Time: the whole body must arrive within `read_timeout_s`, else 408, so slow senders cannot hold the
      budget (or a connection) for ever.
    Refusals close the connection instead of reading the rest of the body.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, budget: MemoryBudget, read_timeout_s: float, metrics: Metrics
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is over the limit of {self.max_body_bytes} bytes; send a smaller image"
        )

    def _budget_full(self) -> MemoryBudgetFullError:
        self.metrics.budget_refusals.inc()
        return MemoryBudgetFullError(
            f"the server's memory budget for request bodies ({self.budget.limit_bytes} bytes) is in use; retry shortly"
        )

    def _timed_out(self) -> BodyReadTimeoutError:
        self.metrics.body_read_timeouts.inc()
        return BodyReadTimeoutError(
            f"the request body did not arrive within {self.read_timeout_s:g} s; send it faster or retry"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        factor = _charge_factor(scope)
        reservation = Reservation(self.budget)
        refusal: ServiceError | None = None
        if declared is not None and declared > self.max_body_bytes:
            refusal = self._too_large()
        elif declared and not reservation.try_add(declared * factor):
            refusal = self._budget_full()
        if refusal is not None:
            await error_response(refusal, scope["path"])(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # Past the body only http.disconnect can come; waiting for it is not reading.
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self._timed_out() from None
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            received += size
            body_done = not message.get("more_body", False)
            if received > self.max_body_bytes:
                raise self._too_large()
            if declared is None and not reservation.try_add(size * factor):
                raise self._budget_full()
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            reservation.release_all()
