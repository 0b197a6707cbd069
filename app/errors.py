"""Domain errors, and the one map that turns them (and framework errors) into HTTP responses.

The error classes know nothing of HTTP; `STATUS_BY_ERROR` is the single place status codes live.
Every error response has the body `{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas import ErrorDetail, ErrorResponse, V2ErrorResponse

logger = logging.getLogger(__name__)

# Routes of the Open Inference Protocol answer errors in that protocol's own shape.
OPEN_INFERENCE_PREFIX = "/v2"


class ServiceError(Exception):
    """Base of every error the service reports to a client; `code` is stable and machine-readable."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImageError(ServiceError):
    code = "invalid_image"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class PayloadTooLargeError(ServiceError):
    code = "payload_too_large"


class ImageTooLargeError(ServiceError):
    code = "image_too_large"


class InvalidParameterError(ServiceError):
    code = "invalid_parameter"


class MalformedRequestError(InvalidParameterError):
    """The body cannot be read as the protocol's request at all (Bad Request, not Unprocessable)."""

    code = "malformed_request"


class ModelNotReadyError(ServiceError):
    code = "model_not_ready"


class ModelStuckError(ServiceError):
    """The process cannot serve any more (a run that never returns, a failed warm-up): restart it."""

    code = "model_stuck"


class OverloadedError(ServiceError):
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MemoryBudgetFullError(OverloadedError):
    """The request body does not fit the memory budget now; refused before (or while) it is read."""


class DeadlineExceededError(ServiceError):
    code = "deadline_exceeded"


class BodyReadTimeoutError(ServiceError):
    code = "body_read_timeout"


class ModelNotFoundError(ServiceError):
    code = "model_not_found"


class InferenceError(ServiceError):
    code = "inference_failed"


class UnauthorizedError(ServiceError):
    code = "unauthorized"


class ModelLoadError(Exception):
    """The model cannot be served (missing, corrupt, wrong provider, untrained when refused). Fatal at startup."""


STATUS_BY_ERROR: dict[type[ServiceError], int] = {
    InvalidImageError: 400,
    MalformedRequestError: 400,
    UnauthorizedError: 401,
    PayloadTooLargeError: 413,
    ImageTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    InvalidParameterError: 422,
    ModelNotFoundError: 404,
    BodyReadTimeoutError: 408,
    InferenceError: 500,
    ModelNotReadyError: 503,
    ModelStuckError: 503,
    OverloadedError: 503,
    DeadlineExceededError: 504,
}

# Answered while the body is (partly) unread: close rather than read and discard the rest (it may be a gigabyte,
# or trickle in for minutes).
CLOSES_CONNECTION: tuple[type[ServiceError], ...] = (PayloadTooLargeError, MemoryBudgetFullError, BodyReadTimeoutError)

INTERNAL_ERROR_MESSAGE = "internal server error; the request ID in the logs has details"


def status_for(error: ServiceError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_body(code: str, message: str, *, path: str = "") -> dict[str, object]:
    """The error body: ours, or the Open Inference Protocol's plain `{"error": message}` under /v2."""
    if is_open_inference_path(path):
        return V2ErrorResponse(error=message).model_dump()
    return ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump()


def is_open_inference_path(path: str) -> bool:
    return path == OPEN_INFERENCE_PREFIX or path.startswith(f"{OPEN_INFERENCE_PREFIX}/")


def error_response(error: ServiceError, path: str = "") -> JSONResponse:
    headers = {}
    if isinstance(error, OverloadedError):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, CLOSES_CONNECTION):
        headers["Connection"] = "close"
    body = error_body(error.code, error.message, path=path)
    return JSONResponse(body, status_code=status_for(error), headers=headers)


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc, request.url.path)


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}" for err in exc.errors()
    )
    return JSONResponse(error_body(InvalidParameterError.code, problems, path=request.url.path), status_code=422)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = error_body(code, str(exc.detail), path=request.url.path)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = error_body("internal_error", INTERNAL_ERROR_MESSAGE, path=request.url.path)
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)
