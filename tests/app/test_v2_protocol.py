"""The Open Inference Protocol codec: JSON and binary-extended requests, responses, classification."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from app.errors import MalformedRequestError
from app.v2_protocol import (
    BINARY_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    InferRequest,
    RequestedOutput,
    classification_strings,
    encode_infer_response,
    parse_infer_request,
)
from model.metadata import Label

OUTPUT = "probabilities"
LABELS = tuple(Label(index=i, wnid=f"n{i:08d}", label=f"class {i}") for i in range(4))


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def test_json_fp32_input_is_reshaped() -> None:
    body = _json({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2, 2], "data": [[1, 2], [3, 4.5]]}]})
    request = parse_infer_request(body, None, OUTPUT)
    tensor = request.inputs[0]
    assert tensor.floats is not None
    assert tensor.floats.dtype == np.float32
    assert tensor.floats.tolist() == [[[1.0, 2.0], [3.0, 4.5]]]
    assert request.outputs == [RequestedOutput(name=OUTPUT, classification=0, binary=False)]


def test_binary_fp32_input_and_bytes_input() -> None:
    floats = np.arange(6, dtype="<f4")
    blobs = [b"first", b"second!"]
    packed = b"".join(struct.pack("<I", len(blob)) + blob for blob in blobs)
    header = _json(
        {
            "id": "req-1",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
                {"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(packed)}},
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True, "classification": 2}}],
        }
    )
    request = parse_infer_request(header + floats.tobytes() + packed, str(len(header)), OUTPUT)
    assert request.id == "req-1"
    assert request.inputs[0].floats is not None
    assert request.inputs[0].floats.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert request.inputs[1].blobs == blobs
    assert request.outputs == [RequestedOutput(name=OUTPUT, classification=2, binary=True)]


def test_json_bytes_are_base64() -> None:
    body = _json(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"jpeg").decode()]}]}
    )
    assert parse_infer_request(body, None, OUTPUT).inputs[0].blobs == [b"jpeg"]


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "the request is not valid JSON"),
        (_json({"inputs": []}), None, "the request needs a non-empty 'inputs' list"),
        (_json({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}), None, "not supported"),
        (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}), None, "expected 3"),
        (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [True]}]}), None, "expected 1"),
        (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}), None, "non-negative"),
        (_json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}), None, "neither 'data'"),
        (_json({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}), None, "base64"),
        (b"{}", "999", "must be a byte count that fits the 2-byte body, not '999'"),
        (
            _json(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "y"}]}
            ),
            None,
            "unknown output 'y'",
        ),
    ],
)
def test_malformed_requests_are_malformed_request_errors(body: bytes, header_length: str | None, message: str) -> None:
    with pytest.raises(MalformedRequestError, match=message):
        parse_infer_request(body, header_length, OUTPUT)


# "²" is what a 0xb2 header byte reads as (HTTP headers are latin-1): str.isdigit() says yes, int() says no.
@pytest.mark.parametrize("header_length", ["\u00b2", "\u0663", "-1", " 2", "2" * 5000])
def test_header_length_must_be_ascii_digits_that_fit(header_length: str) -> None:
    with pytest.raises(MalformedRequestError, match="must be a byte count that fits the 2-byte body"):
        parse_infer_request(b"{}", header_length, OUTPUT)


def test_trailing_binary_data_is_rejected() -> None:
    header = _json({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    with pytest.raises(MalformedRequestError, match="4 bytes of binary data belong to no input"):
        parse_infer_request(header + b"\0\0\0\0", str(len(header)), OUTPUT)


def test_classification_strings_are_score_index_label() -> None:
    probabilities = np.array([[0.1, 0.6, 0.2, 0.1]], dtype=np.float32)
    assert classification_strings(probabilities, LABELS, 2) == [["0.600000:1:class 1", "0.200000:2:class 2"]]


def test_json_response() -> None:
    probabilities = np.array([[0.25, 0.75, 0.0, 0.0]], dtype=np.float32)
    request = InferRequest(id="7", inputs=[], outputs=[RequestedOutput(OUTPUT, 0, False)])
    encoded = encode_infer_response(
        model_name="alexnet", model_version="1", request=request, probabilities=probabilities, labels=LABELS
    )
    assert encoded.content_type == JSON_CONTENT_TYPE
    assert encoded.header_length is None
    assert json.loads(encoded.body) == {
        "model_name": "alexnet",
        "model_version": "1",
        "id": "7",
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [1, 4], "data": [0.25, 0.75, 0.0, 0.0]}],
    }


def test_binary_classification_response() -> None:
    probabilities = np.array([[0.25, 0.75, 0.0, 0.0]], dtype=np.float32)
    request = InferRequest(id=None, inputs=[], outputs=[RequestedOutput(OUTPUT, 1, True)])
    encoded = encode_infer_response(
        model_name="alexnet", model_version="1", request=request, probabilities=probabilities, labels=LABELS
    )
    assert encoded.content_type == BINARY_CONTENT_TYPE
    assert encoded.header_length is not None
    header = json.loads(encoded.body[: encoded.header_length])
    text = b"0.750000:1:class 1"
    assert header["outputs"] == [
        {"name": OUTPUT, "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": 4 + len(text)}}
    ]
    assert encoded.body[encoded.header_length :] == struct.pack("<I", len(text)) + text
