"""Per-request plumbing: request IDs, one structured log line per request, request metrics."""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import INTERNAL_ERROR_MESSAGE, error_body
from app.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
# nginx's status for a request the client abandoned; never sent, only logged and counted.
CLIENT_CLOSED_REQUEST = 499
LOG_FIELDS_KEY = "log_fields"
# Accept a caller's request ID only if it is short and harmless in logs and headers.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
access_logger = logging.getLogger("app.access")
logger = logging.getLogger(__name__)


class RequestIdFilter(logging.Filter):
    """Stamps every log record with the current request's ID ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
    return new_request_id()


def new_request_id() -> str:
    """A random UUID (version 4) as 32 hex digits.

    From `random`, not `uuid.uuid4()`: its `os.urandom` releases the GIL, and getting it back while decode and
    inference threads hold it stalled the event loop by ~1.2 ms per request. An ID needs to be unique, not secret;
    `random` is seeded from the OS and reseeded in forked children.
    """
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: object = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Unmatched paths are folded into one label so scanners cannot blow up metric cardinality.
    return "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client hung up while sending the body: nobody to answer, and nothing wrong with the server.
            status = CLIENT_CLOSED_REQUEST
            logger.info("the client disconnected before sending the whole request body")
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            fields: dict[str, Any] = dict(scope.get("state", {}).get(LOG_FIELDS_KEY, {}))
            access_logger.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000.0,
                extra={
                    "http": {"method": scope["method"], "path": scope["path"], "route": route, "status": status},
                    "duration_ms": round(seconds * 1000.0, 3),
                    **fields,
                },
            )
            request_id_var.reset(token)


class UnexpectedErrorMiddleware:
    """The innermost middleware: an unexpected exception becomes the 500 error body right here.

    Starlette's handler for `Exception` runs outside every middleware, after the request ID is gone: its
    500 had no `X-Request-ID` and no CORS headers, and the traceback was logged twice with request id "-".
    Answered here, the 500 passes back through CORS and the request context like any other response, and
    the traceback is logged once, with the request's ID.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except ClientDisconnect:
            raise  # not an error: the request context counts it as 499
        except Exception:
            if response_started:
                raise  # too late for an error body; the server closes the connection
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            body = error_body("internal_error", INTERNAL_ERROR_MESSAGE, path=scope["path"])
            await JSONResponse(body, status_code=500)(scope, receive, send)
