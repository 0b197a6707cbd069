"""Open Inference Protocol (KServe v2) routes, so Triton and KServe clients work unchanged.

Errors are raised as domain errors; app/errors.py answers them under /v2 in the protocol's own body,
`{"error": "..."}`, with the same status codes as everywhere else.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app import __version__
from app.deps import RuntimeDep, require_api_key
from app.errors import InvalidParameterError, ModelNotFoundError
from app.runtime import Runtime
from app.schemas import V2ErrorResponse
from app.v2_protocol import HEADER_LENGTH, InferRequest, encode_infer_response, parse_infer_request
from model.metadata import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME

MODEL_NAME = "alexnet"
MODEL_VERSION = "1"
SERVER_NAME = "alexnet-serve"
EXTENSIONS = ["classification", "binary_tensor_data"]

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": V2ErrorResponse} for status in statuses}


NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "Not ready", "content": {"application/json": {"example": {"ready": False}}}}
}


def _check_model_name(name: str) -> None:
    if name != MODEL_NAME:
        raise ModelNotFoundError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}")


@router.get("/health/live", responses={503: {"content": {"application/json": {"example": {"live": False}}}}})
async def get_v2_live(runtime: RuntimeDep) -> JSONResponse:
    """v2 liveness: 503 if the model is stuck or failed to warm up (/health/live says why)."""
    live = runtime.liveness_problem() is None
    return JSONResponse({"live": live}, status_code=200 if live else 503)


@router.get("/health/ready", responses=NOT_READY)
async def get_v2_ready(runtime: RuntimeDep) -> JSONResponse:
    """v2 readiness: 200 once the model is warmed up, 503 before and while draining."""
    return JSONResponse({"ready": runtime.ready}, status_code=200 if runtime.ready else 503)


@router.get("")
async def get_v2_server_metadata() -> dict[str, Any]:
    """v2 server metadata."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/models/{model_name}", responses=_errors(404))
async def get_v2_model_metadata(model_name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """v2 model metadata: the input and output tensors."""
    _check_model_name(model_name)
    size = runtime.model.card.preprocessing.input_size
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
    }


@router.get("/models/{model_name}/ready", responses={**_errors(404), **NOT_READY})
async def get_v2_model_ready(model_name: str, runtime: RuntimeDep) -> JSONResponse:
    """v2 model readiness."""
    _check_model_name(model_name)
    return JSONResponse({"name": MODEL_NAME, "ready": runtime.ready}, status_code=200 if runtime.ready else 503)


@router.post(
    "/models/{model_name}/infer",
    dependencies=[Depends(require_api_key)],
    responses={
        200: {"content": {"application/json": {}, "application/octet-stream": {}}},
        **_errors(400, 401, 404, 413, 415, 422, 500, 503, 504),
    },
)
async def post_v2_infer(model_name: str, request: Request, runtime: RuntimeDep) -> Response:
    """v2 inference: an FP32 tensor [N,3,227,227] (preprocessed) or a BYTES tensor [N] of encoded images."""
    _check_model_name(model_name)
    body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
    # Off the event loop: an 18 MiB JSON body takes about a second to parse, and probes must not wait for it.
    parsed = await runtime.off_loop(functools.partial(parse_infer_request, body, header_length, OUTPUT_NAME))
    probabilities = await _infer(parsed, runtime)
    encoded = encode_infer_response(
        model_name=MODEL_NAME,
        model_version=MODEL_VERSION,
        request=parsed,
        probabilities=probabilities,
        labels=runtime.model.card.labels,
    )
    headers = {HEADER_LENGTH: str(encoded.header_length)} if encoded.header_length is not None else None
    return Response(encoded.body, media_type=encoded.content_type, headers=headers)


async def _infer(parsed: InferRequest, runtime: Runtime) -> np.ndarray[Any, np.dtype[np.float32]]:
    if len(parsed.inputs) != 1:
        raise InvalidParameterError(f"send exactly one input tensor named {INPUT_NAME!r}")
    tensor = parsed.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidParameterError(f"unknown input {tensor.name!r}; this model takes {INPUT_NAME!r}")
    if tensor.blobs is not None:
        if len(tensor.shape) != 1 or not 1 <= tensor.shape[0] <= runtime.settings.max_batch_images:
            raise InvalidParameterError(
                f"a BYTES input must have shape [N] with 1 <= N <= {runtime.settings.max_batch_images}"
            )
        return await runtime.infer_images(tensor.blobs)
    assert tensor.floats is not None
    size = runtime.model.card.preprocessing.input_size
    if len(tensor.shape) != 4 or tensor.shape[1:] != [3, size, size] or tensor.shape[0] < 1:
        raise InvalidParameterError(f"an FP32 input must have shape [N,3,{size},{size}], got {tensor.shape}")
    if tensor.shape[0] > runtime.settings.max_batch_images:
        raise InvalidParameterError(f"at most {runtime.settings.max_batch_images} images per request")
    return await runtime.infer_tensors(tensor.floats)
