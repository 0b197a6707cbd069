"""The v2 routes: exact bodies in-process, and the official Triton HTTP client against the real server."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from tritonclient.utils import InferenceServerException

from app.config import Settings
from app.main import create_app
from app.preprocessing import decode_image, preprocess
from model.labels import imagenet_labels
from model.metadata import BVLC_PREPROCESSING
from tests.app.live_server import LiveServer, live_server

SIZE = BVLC_PREPROCESSING.input_size


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(served_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=served_model_path, providers=["CPUExecutionProvider"], warmup_runs=1)
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


@pytest.fixture(scope="module")
def server(served_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(served_model_path, tmp_path_factory.mktemp("v2-server")) as running:
        yield running


@pytest.fixture(scope="module")
def triton_client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert client.get("/v2/models/alexnet/ready").json() == {"name": "alexnet", "ready": True}
    server_metadata = client.get("/v2").json()
    assert server_metadata["name"] == "alexnet-serve"
    assert server_metadata["extensions"] == ["classification", "binary_tensor_data"]
    assert client.get("/v2/models/alexnet").json() == {
        "name": "alexnet",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}],
    }


def test_unknown_model_is_404_in_protocol_shape(client: TestClient) -> None:
    for response in (
        client.get("/v2/models/resnet"),
        client.get("/v2/models/resnet/ready"),
        client.post("/v2/models/resnet/infer", json={"inputs": []}),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "unknown model 'resnet'; this server serves 'alexnet'"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}]},
            f"an FP32 input must have shape [N,3,{SIZE},{SIZE}], got [1, 3, 2, 2]",
        ),
        (
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0.0]}]},
            "unknown input 'pixels'; this model takes 'image'",
        ),
        (
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": ["aGk="]}]},
            "a BYTES input must have shape [N] with 1 <= N <= 32",
        ),
    ],
)
def test_bad_requests_are_422_in_protocol_shape(client: TestClient, document: object, message: str) -> None:
    response = client.post("/v2/models/alexnet/infer", json=document)
    assert response.status_code == 422
    assert response.json() == {"error": message}


def _fp32_input(shape: object, data: str) -> bytes:
    return b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": %s, "data": %s}]}' % (
        json.dumps(shape).encode(),
        data.encode(),
    )


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"[" * 100_000, {}, "the request JSON is nested too deeply"),
        (b"[" * 1000 + b"]" * 1000, {}, "the request JSON is nested too deeply"),
        (_fp32_input([2**32, 2**32], "[]"), {}, "shape [4294967296, 4294967296] has 18446744073709551616 elements"),
        (_fp32_input([1], "[1" + "0" * 400 + "]"), {}, "FP32 values must be finite and within"),
    ],
)
def test_undecodable_requests_are_400_in_protocol_shape(
    client: TestClient, body: bytes, headers: dict[str, str], message: str
) -> None:
    response = client.post("/v2/models/alexnet/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_undecodable_image_is_400(client: TestClient) -> None:
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["/9j/AAAA"]}]}
    response = client.post("/v2/models/alexnet/infer", json=document)
    assert response.status_code == 400
    assert response.json()["error"].startswith("cannot decode the JPEG image")


def _tensor(seed: int) -> npt.NDArray[np.float32]:
    image = decode_image(_jpeg(seed), max_pixels=10**8).image
    return preprocess(image, BVLC_PREPROCESSING)


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_fp32_tensor(
    triton_client: triton.InferenceServerClient, server: LiveServer, binary: bool
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("alexnet")
    batch = np.stack([_tensor(1), _tensor(2)])
    image = triton.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(batch, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    probabilities = triton_client.infer("alexnet", [image], outputs=[output]).as_numpy("probabilities")
    assert probabilities is not None
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The same images through /v1/predict give the same answer.
    for row, seed in zip(probabilities, (1, 2), strict=True):
        answer = httpx.post(f"{server.url}/v1/predict", content=_jpeg(seed), headers={"Content-Type": "image/jpeg"})
        top1 = answer.json()["top1"]
        assert int(np.argmax(row)) == top1["index"]
        assert float(row[top1["index"]]) == pytest.approx(top1["probability"], abs=1e-5)


@pytest.mark.slow
def test_triton_client_bytes_and_classification(
    triton_client: triton.InferenceServerClient, server: LiveServer
) -> None:
    images = np.array([_jpeg(3), _jpeg(4)], dtype=np.object_)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(images)
    top3 = triton.InferRequestedOutput("probabilities", class_count=3)
    classes = triton_client.infer("alexnet", [image], outputs=[top3]).as_numpy("probabilities")
    assert classes is not None
    assert classes.shape == (2, 3)
    labels = imagenet_labels()
    for row, jpeg in zip(classes, images, strict=True):
        answer = httpx.post(f"{server.url}/v1/predict", content=jpeg, headers={"Content-Type": "image/jpeg"}).json()
        expected = [
            f"{score['probability']:f}:{score['index']}:{labels[score['index']].label}" for score in answer["top5"][:3]
        ]
        assert [entry.decode() for entry in row] == expected


@pytest.mark.slow
def test_triton_client_sees_protocol_errors(triton_client: triton.InferenceServerClient) -> None:
    wrong = np.zeros((1, 3, 8, 8), dtype=np.float32)
    image = triton.InferInput("image", list(wrong.shape), "FP32")
    image.set_data_from_numpy(wrong)
    with pytest.raises(InferenceServerException, match=r"an FP32 input must have shape \[N,3,227,227\]"):
        triton_client.infer("alexnet", [image])


def test_errors_raised_before_the_route_use_the_protocol_shape(served_model_path: Path) -> None:
    settings = Settings(
        model_path=served_model_path,
        providers=["CPUExecutionProvider"],
        warmup_runs=0,
        api_key=SecretStr("s3cret"),
        max_body_bytes=1000,
    )
    with TestClient(create_app(settings)) as client:
        unauthorized = client.post("/v2/models/alexnet/infer", json={"inputs": []})
        assert unauthorized.status_code == 401
        assert unauthorized.json() == {
            "error": "missing or wrong API key; send `Authorization: Bearer <ALEXNET_API_KEY>`"
        }
        too_large = client.post("/v2/models/alexnet/infer", content=b"{" + b" " * 2000 + b"}")
        assert too_large.status_code == 413
        assert too_large.json() == {"error": "request body is over the limit of 1000 bytes; send a smaller image"}
        # /v1 keeps its own shape.
        assert client.post("/v1/predict", content=b"x").json()["error"]["code"] == "unauthorized"


# --- admission, cancellation and metrics --------------------------------------------------------------------


def _metric(client: TestClient, name: str, **labels: str) -> float:
    """The sum of the app's /metrics samples called `name` that carry `labels` (0 when there are none)."""
    text = client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _bytes_request(*images: bytes) -> dict[str, object]:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]}


@contextmanager
def _fresh_client(served_model_path: Path, **overrides: object) -> Iterator[TestClient]:
    """An app of its own, so that its metrics start from zero."""
    values: dict[str, object] = {
        "model_path": served_model_path,
        "providers": ["CPUExecutionProvider"],
        "warmup_runs": 1,
        **overrides,
    }
    with TestClient(create_app(Settings(**values))) as test_client:  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while test_client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def _large_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_a_failed_image_cancels_its_siblings_before_they_are_inferred(served_model_path: Path) -> None:
    """The first image fails at once; its three (slow to decode) siblings are cancelled, not decoded and inferred
    behind the client's back: the batch metrics count only the next request's image."""
    # One decode thread: the siblings wait behind the failing image, as under load.
    with _fresh_client(served_model_path, decode_threads=1) as client:
        siblings = [_large_jpeg(seed) for seed in range(3)]
        failed = client.post("/v2/models/alexnet/infer", json=_bytes_request(b"\xff\xd8\xff\x00\x00\x00", *siblings))
        assert failed.status_code == 400
        # Decoded and inferred after anything the failed request left behind (the decode pool and the batch
        # queue are first in, first out).
        after = client.post("/v2/models/alexnet/infer", json=_bytes_request(_jpeg(1)))
        assert after.status_code == 200
        assert _metric(client, "alexnet_batch_size_sum") == 1
        assert _metric(client, "alexnet_images_total", outcome="invalid_image") == 1
        assert _metric(client, "alexnet_images_total", outcome="cancelled") == 3
        assert _metric(client, "alexnet_images_total", outcome="ok") == 1


def test_v2_images_are_counted_like_v1_ones(served_model_path: Path) -> None:
    with _fresh_client(served_model_path) as client:
        assert client.post("/v2/models/alexnet/infer", json=_bytes_request(_jpeg(1), _jpeg(2))).status_code == 200
        assert _metric(client, "alexnet_images_total", outcome="ok") == 2
        for stage in ("decode", "preprocess", "queue_wait"):
            assert _metric(client, f"alexnet_{stage}_seconds_count") == 2, stage
        tensors = np.stack([_tensor(3), _tensor(4)])
        document = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": list(tensors.shape), "data": tensors.tolist()}]
        }
        assert client.post("/v2/models/alexnet/infer", json=document).status_code == 200
        # Preprocessed tensors are queued and inferred, but never decoded.
        assert _metric(client, "alexnet_images_total", outcome="ok") == 4
        assert _metric(client, "alexnet_queue_wait_seconds_count") == 4
        assert _metric(client, "alexnet_decode_seconds_count") == 2


def test_a_request_with_more_images_than_can_ever_be_admitted_is_413(served_model_path: Path) -> None:
    with _fresh_client(served_model_path, max_queue_size=2) as client:
        response = client.post("/v2/models/alexnet/infer", json=_bytes_request(_jpeg(1), _jpeg(2), _jpeg(3)))
        assert response.status_code == 413
        assert response.json() == {
            "error": "3 images in one request, but at most 2 can be in flight; split the request"
        }
        assert client.post("/v2/models/alexnet/infer", json=_bytes_request(_jpeg(1), _jpeg(2))).status_code == 200
