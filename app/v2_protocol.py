"""Open Inference Protocol (KServe v2) request/response codec, with the binary tensor extension.

Pure functions: bytes in, typed request out; arrays in, bytes out. The routes live in app/routes/v2.py.
Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary-data and classification extensions.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import MalformedRequestError
from model.metadata import Label

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

FloatArray = npt.NDArray[np.float32]
# The largest finite float32; JSON numbers beyond it would silently become infinities.
FP32_MAX = float(np.finfo(np.float32).max)


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
    """Parse a JSON (optionally binary-extended) infer request; raises `MalformedRequestError` (400).

    Every other failure is the caller's input too: nothing here may raise anything else (fuzzed in
    tests/app/test_v2_codec_fuzz.py).
    """
    json_part, binary_part = _split_body(body, header_length)
    try:
        document = json.loads(json_part, parse_float=_parsed_float, parse_int=_parsed_int)
    except RecursionError:
        raise MalformedRequestError("the request JSON is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, and integers over 4300 digits
        raise MalformedRequestError(f"the request is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise MalformedRequestError("the request needs a non-empty 'inputs' list")
    request_binary = bool(_parameters(document).get("binary_data_output", False))
    offset = 0
    inputs = []
    for raw in document["inputs"]:
        tensor, offset = _parse_input(raw, binary_part, offset, len(body))
        inputs.append(tensor)
    if offset != len(binary_part):
        raise MalformedRequestError(f"{len(binary_part) - offset} bytes of binary data belong to no input")
    requested = document.get("outputs") or []
    if not isinstance(requested, list):
        raise MalformedRequestError("'outputs' must be a list")
    outputs = [_parse_output(raw, request_binary) for raw in requested]
    if not outputs:
        outputs = [RequestedOutput(name=output_name, classification=0, binary=request_binary)]
    for output in outputs:
        if output.name != output_name:
            raise MalformedRequestError(f"unknown output {output.name!r}; this model has {output_name!r}")
    request_id = document.get("id")
    return InferRequest(id=str(request_id) if request_id is not None else None, inputs=inputs, outputs=outputs)


# Requests are parsed on a worker thread, but json's C code would hold the GIL throughout: an 18 MiB body
# stalled the event loop (and /health/ready) for a second. Number hooks in Python, and a pause every so many
# numbers, hand the GIL to the event loop at once whenever it wants it.
NUMBERS_BETWEEN_PAUSES = 4096
_numbers_parsed = itertools.count()


def _pause_now_and_then() -> None:
    if next(_numbers_parsed) % NUMBERS_BETWEEN_PAUSES == 0:
        time.sleep(0)


def _parsed_float(text: str) -> float:
    _pause_now_and_then()
    return float(text)


def _parsed_int(text: str) -> int:
    _pause_now_and_then()
    return int(text)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    # isdigit() alone accepts "²" and other digits int() refuses; the length check keeps int() cheap.
    if (
        not (header_length.isascii() and header_length.isdigit())
        or len(header_length) > len(str(len(body)))
        or int(header_length) > len(body)
    ):
        raise MalformedRequestError(
            f"{HEADER_LENGTH} must be a byte count that fits the {len(body)}-byte body, not {header_length[:40]!r}"
        )
    split = int(header_length)
    return body[:split], body[split:]


def _parameters(raw: dict[str, Any]) -> dict[str, Any]:
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequestError("'parameters' must be an object")
    return parameters


def _parse_input(raw: object, binary_part: bytes, offset: int, body_size: int) -> tuple[TensorInput, int]:
    if not isinstance(raw, dict):
        raise MalformedRequestError("each input must be an object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise MalformedRequestError("each input needs a 'name' and a 'datatype'")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise MalformedRequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    # Python integers: numpy's int64 product would wrap around ([2**32, 2**32] has "0" elements). Every
    # element takes at least a byte of the body, so this bounds what the data may hold before reading it.
    count = math.prod(shape)
    if count > body_size:
        raise MalformedRequestError(
            f"input {name!r}: shape {shape} has {count} elements, more than a {body_size}-byte request can hold"
        )
    size = _parameters(raw).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary_part):
            raise MalformedRequestError(f"input {name!r}: binary_data_size {size!r} overruns the binary data")
        payload: bytes | list[Any] = binary_part[offset : offset + size]
        offset += size
    elif "data" in raw:
        payload = _flatten(name, raw["data"], count)
    else:
        raise MalformedRequestError(f"input {name!r} has neither 'data' nor binary data")
    if datatype == "FP32":
        tensor = TensorInput(name, datatype, shape, floats=_floats(name, payload, count, shape))
    elif datatype == "BYTES":
        tensor = TensorInput(name, datatype, shape, blobs=_blobs(name, payload, count))
    else:
        raise MalformedRequestError(f"input {name!r}: datatype {datatype!r} is not supported; send FP32 or BYTES")
    for parsed in (payload, raw.get("data")):
        if isinstance(parsed, list):
            _let_go(parsed)
    return tensor, offset


def _let_go(values: list[Any]) -> None:
    """Empty a parsed list a slice at a time: freeing millions of numbers at once holds the GIL for ~50 ms."""
    while values:
        del values[-NUMBERS_BETWEEN_PAUSES:]
        time.sleep(0)


def _flatten(name: str, data: object, count: int) -> list[Any]:
    """The elements of `data` (flat, or nested as Triton clients send it), refused once past `count`.

    Iterative, so a deeply nested body cannot exhaust the stack, and it stops at the declared element
    count instead of copying whatever the body holds.
    """
    flat: list[Any] = []
    # Iterators of the lists being walked, innermost last.
    pending = [iter(data if isinstance(data, list) else [data])]
    while pending:
        item = next(pending[-1], pending)
        if item is pending:
            pending.pop()
        elif isinstance(item, list):
            pending.append(iter(item))
        elif len(flat) == count:
            raise MalformedRequestError(f"input {name!r}: 'data' holds more than the {count} elements of its shape")
        else:
            flat.append(item)
            _pause_now_and_then()
    return flat


def _floats(name: str, payload: bytes | list[Any], count: int, shape: list[int]) -> FloatArray:
    if isinstance(payload, bytes):
        if len(payload) != count * 4:
            raise MalformedRequestError(f"input {name!r}: {len(payload)} bytes do not hold {count} FP32 values")
        values = np.frombuffer(payload, dtype="<f4")
    else:
        if len(payload) != count:
            raise MalformedRequestError(f"input {name!r}: expected {count} numbers for shape {shape}")
        values = np.empty(count, dtype=np.float32)
        # A slice at a time, pausing between slices (see NUMBERS_BETWEEN_PAUSES).
        for start in range(0, count, NUMBERS_BETWEEN_PAUSES):
            chunk = payload[start : start + NUMBERS_BETWEEN_PAUSES]
            if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in chunk):
                raise MalformedRequestError(f"input {name!r}: expected {count} numbers for shape {shape}")
            if not all(-FP32_MAX <= value <= FP32_MAX for value in chunk):  # NaN fails both comparisons
                raise MalformedRequestError(f"input {name!r}: FP32 values must be finite and within +-{FP32_MAX:.4g}")
            values[start : start + len(chunk)] = chunk
            time.sleep(0)
    return values.astype(np.float32, copy=False).reshape(shape)


def _blobs(name: str, payload: bytes | list[Any], count: int) -> list[bytes]:
    if isinstance(payload, bytes):
        blobs = []
        offset = 0
        while offset < len(payload):
            if offset + 4 > len(payload):
                raise MalformedRequestError(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", payload, offset)
            offset += 4
            if offset + length > len(payload):
                raise MalformedRequestError(f"input {name!r}: BYTES element overruns the binary data")
            blobs.append(payload[offset : offset + length])
            offset += length
    else:
        if not all(isinstance(value, str) for value in payload):
            raise MalformedRequestError(f"input {name!r}: BYTES data in JSON must be base64 strings")
        try:
            blobs = [base64.b64decode(value, validate=True) for value in payload]
        except binascii.Error:
            raise MalformedRequestError(f"input {name!r}: BYTES data in JSON must be base64-encoded images") from None
    if len(blobs) != count:
        raise MalformedRequestError(f"input {name!r}: {len(blobs)} elements do not match its shape ({count})")
    return blobs


def _parse_output(raw: object, request_binary: bool) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise MalformedRequestError("each requested output needs a 'name'")
    parameters = _parameters(raw)
    classification = parameters.get("classification", 0)
    if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
        raise MalformedRequestError("'classification' must be a non-negative integer")
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
