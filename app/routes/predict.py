"""Prediction routes: one image, or a batch of images in one multipart request."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.config import DEFAULT_TOP_K, MAX_TOP_K
from app.deps import RuntimeDep, require_api_key
from app.errors import ServiceError
from app.request_context import LOG_FIELDS_KEY
from app.schemas import BatchItemResponse, BatchPredictResponse, ErrorDetail, ErrorResponse, PredictResponse
from app.uploads import BATCH_FIELD, SINGLE_FIELD, read_batch_uploads, read_single_upload

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_api_key)])

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to return in `predictions`")]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Undecodable or corrupt image, or empty body",
        401: "Missing or wrong API key (only when ALEXNET_API_KEY is set)",
        413: "Body, pixel count or number of images over the limit",
        415: "Unsupported Content-Type or image format",
        422: "Bad parameters",
        500: "Internal error (no details are exposed)",
        503: "Model not ready, draining, or overloaded (with Retry-After)",
        504: "Prediction did not finish within the request deadline",
    }.items()
}

_BINARY = {"type": "string", "format": "binary"}
SINGLE_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": f"The image as multipart field `{SINGLE_FIELD}`, or as the raw body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {SINGLE_FIELD: _BINARY},
                    "required": [SINGLE_FIELD],
                }
            },
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": f"Images as repeated multipart field `{BATCH_FIELD}`",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {BATCH_FIELD: {"type": "array", "items": _BINARY, "minItems": 1}},
                    "required": [BATCH_FIELD],
                }
            }
        },
    }
}


@router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=SINGLE_IMAGE_BODY)
async def predict_image(
    request: Request, response: Response, runtime: RuntimeDep, top_k: TopK = DEFAULT_TOP_K
) -> PredictResponse:
    """Classify one image: top-1, top-5 and the top_k ImageNet classes."""
    upload = await read_single_upload(request)
    setattr(request.state, LOG_FIELDS_KEY, {"image_bytes": len(upload.data)})
    result = await runtime.predict(upload.data, top_k)
    timing = result.timing_ms
    response.headers["Server-Timing"] = server_timing(result)
    setattr(
        request.state,
        LOG_FIELDS_KEY,
        {"image_bytes": len(upload.data), "batch_size": timing.batch_size, "timing_ms": timing.model_dump()},
    )
    return result


def server_timing(result: PredictResponse) -> str:
    """The stage timings as a Server-Timing header, so browsers' dev tools show them."""
    timing = result.timing_ms
    stages = (("decode", timing.decode), ("preprocess", timing.preprocess), ("queue", timing.queue))
    parts = [f"{name};dur={value:.3f}" for name, value in stages]
    parts += [f"infer;dur={timing.inference:.3f}", f"total;dur={timing.total:.3f}"]
    return ", ".join(parts)


@router.post(
    "/predict/batch", response_model=BatchPredictResponse, responses=ERROR_RESPONSES, openapi_extra=_BATCH_BODY
)
async def predict_batch(request: Request, runtime: RuntimeDep, top_k: TopK = DEFAULT_TOP_K) -> BatchPredictResponse:
    """Classify several images; one result per image in upload order, a bad image fails only its slot."""
    runtime.ensure_ready()
    uploads = await read_batch_uploads(request, runtime.settings.max_batch_images)

    async def one(data: bytes) -> PredictResponse | ErrorDetail:
        try:
            return await runtime.predict(data, top_k)
        except ServiceError as error:
            return ErrorDetail(code=error.code, message=error.message)

    outcomes = await asyncio.gather(*(one(upload.data) for upload in uploads))
    return BatchPredictResponse(
        results=[
            BatchItemResponse(filename=upload.filename, result=outcome)
            if isinstance(outcome, PredictResponse)
            else BatchItemResponse(filename=upload.filename, error=outcome)
            for upload, outcome in zip(uploads, outcomes, strict=True)
        ]
    )
