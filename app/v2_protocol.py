"""Open Inference Protocol (KServe v2) request/response codec, with the binary tensor extension.

Pure functions: bytes in, typed request out; arrays in, bytes out. The routes live in app/routes/v2.py.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary-data and classification extensions.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import InvalidParameterError
from model.metadata import Label

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TensorInput:
    name: str
    datatype: str
    shape: list[int]
    floats: FloatArray | None = None
    blobs: list[bytes] | None = None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[TensorInput]
    outputs: list[RequestedOutput]


def parse_infer_request(body: bytes, header_length: str | None, output_name: str) -> InferRequest:
    """Parse a JSON (optionally binary-extended) infer request; raises `InvalidParameterError`."""
    json_part, binary_part = _split_body(body, header_length)
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidParameterError(f"the request is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise InvalidParameterError("the request needs a non-empty 'inputs' list")
    request_binary = bool(_parameters(document).get("binary_data_output", False))
    offset = 0
    inputs = []
    for raw in document["inputs"]:
        tensor, offset = _parse_input(raw, binary_part, offset)
        inputs.append(tensor)
    if offset != len(binary_part):
        raise InvalidParameterError(f"{len(binary_part) - offset} bytes of binary data belong to no input")
    outputs = [_parse_output(raw, request_binary) for raw in document.get("outputs") or []]
    if not outputs:
        outputs = [RequestedOutput(name=output_name, classification=0, binary=request_binary)]
    for output in outputs:
        if output.name != output_name:
            raise InvalidParameterError(f"unknown output {output.name!r}; this model has {output_name!r}")
    request_id = document.get("id")
    return InferRequest(id=str(request_id) if request_id is not None else None, inputs=inputs, outputs=outputs)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidParameterError(f"{HEADER_LENGTH} {header_length!r} does not fit the {len(body)}-byte body")
    split = int(header_length)
    return body[:split], body[split:]


def _parameters(raw: dict[str, Any]) -> dict[str, Any]:
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidParameterError("'parameters' must be an object")
    return parameters


def _parse_input(raw: object, binary_part: bytes, offset: int) -> tuple[TensorInput, int]:
    if not isinstance(raw, dict):
        raise InvalidParameterError("each input must be an object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidParameterError("each input needs a 'name' and a 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise InvalidParameterError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    size = _parameters(raw).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary_part):
            raise InvalidParameterError(f"input {name!r}: binary_data_size {size!r} overruns the binary data")
        payload: bytes | list[Any] = binary_part[offset : offset + size]
        offset += size
    elif "data" in raw:
        payload = _flatten(raw["data"])
    else:
        raise InvalidParameterError(f"input {name!r} has neither 'data' nor binary data")
    count = int(np.prod(shape)) if shape else 1
    if datatype == "FP32":
        return TensorInput(name, datatype, shape, floats=_floats(name, payload, count, shape)), offset
    if datatype == "BYTES":
        return TensorInput(name, datatype, shape, blobs=_blobs(name, payload, count)), offset
    raise InvalidParameterError(f"input {name!r}: datatype {datatype!r} is not supported; send FP32 or BYTES")


def _flatten(data: object) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _floats(name: str, payload: bytes | list[Any], count: int, shape: list[int]) -> FloatArray:
    if isinstance(payload, bytes):
        if len(payload) != count * 4:
            raise InvalidParameterError(f"input {name!r}: {len(payload)} bytes do not hold {count} FP32 values")
        values = np.frombuffer(payload, dtype="<f4")
    else:
        if len(payload) != count or not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in payload
        ):
            raise InvalidParameterError(f"input {name!r}: expected {count} numbers for shape {shape}")
        values = np.asarray(payload, dtype=np.float32)
    return values.astype(np.float32, copy=False).reshape(shape)


def _blobs(name: str, payload: bytes | list[Any], count: int) -> list[bytes]:
    if isinstance(payload, bytes):
        blobs = []
        offset = 0
        while offset < len(payload):
            if offset + 4 > len(payload):
                raise InvalidParameterError(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", payload, offset)
            offset += 4
            if offset + length > len(payload):
                raise InvalidParameterError(f"input {name!r}: BYTES element overruns the binary data")
            blobs.append(payload[offset : offset + length])
            offset += length
    else:
        if not all(isinstance(value, str) for value in payload):
            raise InvalidParameterError(f"input {name!r}: BYTES data in JSON must be base64 strings")
        try:
            blobs = [base64.b64decode(value, validate=True) for value in payload]
        except binascii.Error:
            raise InvalidParameterError(f"input {name!r}: BYTES data in JSON must be base64-encoded images") from None
    if len(blobs) != count:
        raise InvalidParameterError(f"input {name!r}: {len(blobs)} elements do not match its shape ({count})")
    return blobs


def _parse_output(raw: object, request_binary: bool) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidParameterError("each requested output needs a 'name'")
    parameters = _parameters(raw)
    classification = parameters.get("classification", 0)
    if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
        raise InvalidParameterError("'classification' must be a non-negative integer")
    binary = bool(parameters.get("binary_data", request_binary))
    return RequestedOutput(name=raw["name"], classification=classification, binary=binary)


def classification_strings(probabilities: FloatArray, labels: tuple[Label, ...], k: int) -> list[list[str]]:
    """Triton's classification extension: per row, the top-k as "score:index:label"."""
    rows = []
    for row in probabilities:
        top = np.argsort(-row, kind="stable")[: min(k, row.shape[0])]
        rows.append([f"{float(row[i]):f}:{int(i)}:{labels[int(i)].label}" for i in top])
    return rows


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    content_type: str
    header_length: int | None


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    probabilities: FloatArray,
    labels: tuple[Label, ...],
) -> EncodedResponse:
    outputs: list[dict[str, Any]] = []
    binary_chunks: list[bytes] = []
    for requested in request.outputs:
        entry: dict[str, Any] = {"name": requested.name}
        if requested.classification:
            strings = classification_strings(probabilities, labels, requested.classification)
            entry |= {"datatype": "BYTES", "shape": [len(strings), len(strings[0]) if strings else 0]}
            flat = [text for row in strings for text in row]
            chunk = b"".join(struct.pack("<I", len(text.encode())) + text.encode() for text in flat)
            data: list[Any] = flat
        else:
            entry |= {"datatype": "FP32", "shape": list(probabilities.shape)}
            chunk = probabilities.astype("<f4").tobytes()
            data = probabilities.reshape(-1).tolist()
        if requested.binary:
            entry["parameters"] = {"binary_data_size": len(chunk)}
            binary_chunks.append(chunk)
        else:
            entry["data"] = data
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        document["id"] = request.id
    header = json.dumps(document).encode()
    if not binary_chunks:
        return EncodedResponse(body=header, content_type=JSON_CONTENT_TYPE, header_length=None)
    return EncodedResponse(
        body=header + b"".join(binary_chunks), content_type=BINARY_CONTENT_TYPE, header_length=len(header)
    )
