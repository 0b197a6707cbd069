"""The HTTP API in-process, with its lifespan: predictions, every error code with its exact body, health, OpenAPI, auth.

Most tests share one app per configuration (module-scoped clients); tests that patch the model build their own.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import fastapi.dependencies.utils
import fastapi.routing
import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

import app.routes.predict
from app import __version__
from app.config import CPU_PROVIDER
from app.cpus import usable_cpus
from app.errors import INTERNAL_ERROR_MESSAGE
from app.inference import UNTRAINED_WARNING, OnnxModel
from app.main import create_app
from model.export import ExportSummary
from model.metadata import BVLC_PREPROCESSING, RANDOM_LICENSE
from model.sources import RANDOM_SOURCE_URL
from tests.app.reference_preprocessing import bvlc_reference_tensor
from tests.app.sample_images import encode, pillow_decode_error, scene, scene_bytes
from tests.app.service_support import (
    check_prediction,
    error_body,
    service_settings,
    untrained_model_summary,
    wait_until_ready,
)

BODY_LIMIT = 50_000
PIXEL_LIMIT = 10_000
BATCH_LIMIT = 3
API_KEY = "test-key-0123456789"
HOLD_TIMEOUT_S = 30.0
UNSUPPORTED_FORMAT = "unsupported image format; send one of: JPEG, PNG, WebP, GIF, BMP, TIFF"
ACCEPTED_TYPES = "send multipart/form-data, image/*, or application/octet-stream"
UNAUTHORIZED = error_body("unauthorized", "missing or wrong API key; send `Authorization: Bearer <ALEXNET_API_KEY>`")
ISSUE_ROUTES = {
    ("post", "/v1/predict"),
    ("post", "/v1/predict/batch"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/health"),
    ("get", "/v1/model"),
}


@functools.cache
def jpeg_bytes() -> bytes:
    return scene_bytes(320, 240, "JPEG", seed=1, quality=90)


@functools.cache
def png_bytes() -> bytes:
    return scene_bytes(200, 300, "PNG", seed=2)


@functools.cache
def truncated_jpeg() -> bytes:
    whole = scene_bytes(300, 200, "JPEG", seed=3)
    return whole[: len(whole) // 2]


@functools.cache
def truncated_png() -> bytes:
    whole = scene_bytes(300, 200, "PNG", seed=4)
    return whole[: len(whole) // 2]


def raw(data: bytes, content_type: str) -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": content_type}}


def multipart(data: bytes, filename: str = "image", field: str = "file") -> dict[str, Any]:
    return {"files": {field: (filename, data, "application/octet-stream")}}


def batch_files(*named: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": [("files", (name, data, "application/octet-stream")) for name, data in named]}


@pytest.fixture(scope="module")
def client(served_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(served_model_path))) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def limited_client(served_model_path: Path) -> Iterator[TestClient]:
    settings = service_settings(
        served_model_path, max_body_bytes=BODY_LIMIT, max_image_pixels=PIXEL_LIMIT, max_batch_images=BATCH_LIMIT
    )
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def keyed_client(served_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(served_model_path, api_key=API_KEY))) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def reference_session(served_model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(served_model_path), providers=[CPU_PROVIDER])


# --- predictions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_args",
    [
        pytest.param(multipart(jpeg_bytes(), "cat.jpg"), id="jpeg-multipart"),
        pytest.param(multipart(png_bytes(), "cat.png"), id="png-multipart"),
        pytest.param(raw(jpeg_bytes(), "image/jpeg"), id="jpeg-raw-image/jpeg"),
        pytest.param(raw(png_bytes(), "image/png"), id="png-raw-image/png"),
        pytest.param(raw(jpeg_bytes(), "application/octet-stream"), id="jpeg-raw-octet-stream"),
        pytest.param(raw(png_bytes(), "application/octet-stream"), id="png-raw-octet-stream"),
    ],
)
def test_predict_accepts_multipart_and_raw_bodies(
    client: TestClient, served_model: ExportSummary, request_args: dict[str, Any]
) -> None:
    response = client.post("/v1/predict", **request_args)
    assert response.status_code == 200, response.text
    check_prediction(response.json(), top_k=5, weights_sha256=served_model.weights_sha256)


def _ranking(body: dict[str, Any]) -> list[tuple[int, float]]:
    return [(entry["index"], entry["probability"]) for entry in body["predictions"]]


def test_multipart_raw_and_a_wrong_content_type_give_the_same_answer(client: TestClient) -> None:
    answers = [
        client.post("/v1/predict?top_k=20", **multipart(png_bytes())),
        client.post("/v1/predict?top_k=20", **raw(png_bytes(), "application/octet-stream")),
        # The format is sniffed from the bytes; the declared image type is not trusted.
        client.post("/v1/predict?top_k=20", **raw(png_bytes(), "image/jpeg")),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    rankings = [_ranking(answer.json()) for answer in answers]
    assert rankings[0] == rankings[1] == rankings[2]
    assert _ranking(client.post("/v1/predict?top_k=20", **multipart(jpeg_bytes())).json()) != rankings[0]


@pytest.mark.parametrize("top_k", [1, 3, 5, 6, 1000])
def test_predictions_has_top_k_entries(client: TestClient, served_model: ExportSummary, top_k: int) -> None:
    response = client.post(f"/v1/predict?top_k={top_k}", **raw(jpeg_bytes(), "image/jpeg"))
    assert response.status_code == 200, response.text
    check_prediction(response.json(), top_k=top_k, weights_sha256=served_model.weights_sha256)


def test_top_k_1000_returns_every_class_once(client: TestClient) -> None:
    predictions = client.post("/v1/predict?top_k=1000", **raw(jpeg_bytes(), "image/jpeg")).json()["predictions"]
    assert sorted(entry["index"] for entry in predictions) == list(range(1000))
    assert sum(entry["probability"] for entry in predictions) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("data", [pytest.param(jpeg_bytes(), id="jpeg"), pytest.param(png_bytes(), id="png")])
def test_served_probabilities_match_the_reference_pipeline(
    client: TestClient, reference_session: ort.InferenceSession, data: bytes
) -> None:
    predictions = client.post("/v1/predict?top_k=1000", **raw(data, "application/octet-stream")).json()["predictions"]
    served = np.zeros(1000, dtype=np.float64)
    for entry in predictions:
        served[entry["index"]] = entry["probability"]
    reference = reference_session.run(["probabilities"], {"image": bvlc_reference_tensor(data)})[0][0]
    assert float(np.max(np.abs(served - reference))) < 1e-4


# --- 400, 413, 415, 422: bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        pytest.param(raw(b"", "image/jpeg"), "the request carried no image data; send the image bytes", id="empty-raw"),
        pytest.param(multipart(b""), "the request carried no image data; send the image bytes", id="empty-multipart"),
        pytest.param(
            raw(truncated_jpeg(), "image/jpeg"),
            f"cannot decode the JPEG image: {pillow_decode_error(truncated_jpeg())}",
            id="truncated-jpeg-raw",
        ),
        pytest.param(
            multipart(truncated_png()),
            f"cannot decode the PNG image: {pillow_decode_error(truncated_png())}",
            id="truncated-png-multipart",
        ),
    ],
)
def test_undecodable_images_are_400(client: TestClient, request_args: dict[str, Any], message: str) -> None:
    response = client.post("/v1/predict", **request_args)
    assert response.status_code == 400
    assert response.json() == error_body("invalid_image", message)


def test_corrupt_image_message_names_no_python_objects(client: TestClient) -> None:
    response = client.post("/v1/predict", **raw(b"\xff\xd8\xff\xe0" + b"\x00not a jpeg at all" * 8, "image/jpeg"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert error["message"].startswith("cannot decode the JPEG image: ")
    # A memory address makes the body differ from run to run and tells the client nothing.
    assert " object at 0x" not in error["message"], error["message"]


def test_body_over_the_limit_is_413_by_content_length(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/predict", **raw(b"\xff\xd8\xff" + b"\x00" * BODY_LIMIT, "image/jpeg"))
    assert response.status_code == 413
    assert response.json() == error_body(
        "payload_too_large", f"request body is over the limit of {BODY_LIMIT} bytes; send a smaller image"
    )


def test_streamed_body_over_the_limit_is_413(limited_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 8192 + 2):
            yield b"\x00" * 8192

    response = limited_client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413
    assert response.json() == error_body(
        "payload_too_large", f"request body is over the limit of {BODY_LIMIT} bytes; send a smaller image"
    )


def test_multipart_body_over_the_limit_is_413(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/predict", **multipart(b"\x00" * BODY_LIMIT))
    assert response.status_code == 413
    assert response.json() == error_body(
        "payload_too_large", f"request body is over the limit of {BODY_LIMIT} bytes; send a smaller image"
    )


def test_body_exactly_at_the_limit_is_let_through(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/predict", **raw(b"\xff\xd8\xff" + b"\x00" * (BODY_LIMIT - 3), "image/jpeg"))
    assert response.status_code == 400  # decoded (and found corrupt), not refused for its size
    assert response.json()["error"]["code"] == "invalid_image"


def test_image_over_the_pixel_limit_is_413(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/predict", **raw(encode(scene(200, 100), "PNG"), "image/png"))
    assert response.status_code == 413
    assert response.json() == error_body(
        "image_too_large",
        f"image is 200x100 = 20000 pixels, over the limit of {PIXEL_LIMIT}; send a smaller image",
    )


def test_two_files_in_a_single_prediction_are_413(client: TestClient) -> None:
    files = [("file", ("a.jpg", jpeg_bytes(), "image/jpeg")), ("file", ("b.png", png_bytes(), "image/png"))]
    response = client.post("/v1/predict", files=files)
    assert response.status_code == 413
    assert response.json() == error_body("payload_too_large", "at most 1 image(s) per request")


@pytest.mark.parametrize(
    ("headers", "media_type"),
    [
        ({"content-type": "text/plain"}, "'text/plain'"),
        ({}, "'(none)'"),
        ({"content-type": "text/html"}, "'text/html'"),
    ],
)
def test_unsupported_content_type_is_415(client: TestClient, headers: dict[str, str], media_type: str) -> None:
    response = client.post("/v1/predict", content=jpeg_bytes(), headers=headers)
    assert response.status_code == 415
    assert response.json() == error_body(
        "unsupported_media_type", f"unsupported Content-Type {media_type}; {ACCEPTED_TYPES}"
    )


@pytest.mark.parametrize(
    "request_args",
    [
        pytest.param(raw(b"just some text, not pixels", "image/png"), id="text-as-image/png"),
        pytest.param(raw(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), id="svg"),
        pytest.param(multipart(b"%PDF-1.7\n"), id="pdf-multipart"),
    ],
)
def test_non_image_bytes_are_415(client: TestClient, request_args: dict[str, Any]) -> None:
    response = client.post("/v1/predict", **request_args)
    assert response.status_code == 415
    assert response.json() == error_body("unsupported_media_type", UNSUPPORTED_FORMAT)


@pytest.mark.parametrize(
    ("top_k", "message"),
    [
        ("0", "query.top_k: Input should be greater than or equal to 1"),
        ("1001", "query.top_k: Input should be less than or equal to 1000"),
        ("five", "query.top_k: Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_bad_top_k_is_422(client: TestClient, top_k: str, message: str) -> None:
    for path in ("/v1/predict", "/v1/predict/batch"):
        response = client.post(f"{path}?top_k={top_k}", **multipart(jpeg_bytes()))
        assert response.status_code == 422
        assert response.json() == error_body("invalid_parameter", message)


def test_multipart_without_file_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"image": ("cat.jpg", jpeg_bytes(), "image/jpeg")})
    assert response.status_code == 422
    assert response.json() == error_body(
        "invalid_parameter", "send exactly one image in the multipart field 'file' (got 0)"
    )


def test_file_field_sent_as_text_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", data={"file": "cat.jpg"}, files={"other": ("x.jpg", jpeg_bytes(), "image/jpeg")}
    )
    assert response.status_code == 422
    assert response.json() == error_body("invalid_parameter", "the multipart field 'file' must be a file, not text")


def test_unknown_route_is_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == error_body("not_found", "Not Found")


def test_wrong_method_is_405_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/predict")
    assert response.status_code == 405
    assert response.json() == error_body("method_not_allowed", "Method Not Allowed")


# --- 503 before warm-up, 500 without internals --------------------------------------------------------------


def test_not_ready_until_warm_up_has_finished(
    served_model_path: Path, served_model: ExportSummary, monkeypatch: pytest.MonkeyPatch
) -> None:
    warming_up, release = threading.Event(), threading.Event()
    real_warm_up = OnnxModel.warm_up

    def held_warm_up(self: OnnxModel, *args: Any, **kwargs: Any) -> None:
        warming_up.set()
        assert release.wait(HOLD_TIMEOUT_S)
        real_warm_up(self, *args, **kwargs)

    monkeypatch.setattr(OnnxModel, "warm_up", held_warm_up)
    with TestClient(create_app(service_settings(served_model_path))) as client:
        try:
            assert warming_up.wait(HOLD_TIMEOUT_S)
            ready = client.get("/health/ready")
            predict = client.post("/v1/predict", **raw(jpeg_bytes(), "image/jpeg"))
            batch = client.post("/v1/predict/batch", **batch_files(("a.jpg", jpeg_bytes())))
            health = client.get("/health")
            live = client.get("/health/live")
        finally:
            release.set()
        wait_until_ready(client)
        after = client.post("/v1/predict", **raw(jpeg_bytes(), "image/jpeg"))

    assert ready.status_code == 503
    assert ready.json() == error_body("model_not_ready", "the model is loading, warming up or the server is draining")
    not_ready = error_body(
        "model_not_ready", "the model is still loading or warming up; retry when /health/ready is 200"
    )
    assert (predict.status_code, predict.json()) == (503, not_ready)
    assert (batch.status_code, batch.json()) == (503, not_ready)
    assert health.status_code == 200 and health.json()["status"] == "starting"
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert after.status_code == 200
    check_prediction(after.json(), top_k=5, weights_sha256=served_model.weights_sha256)


def test_inference_failure_is_500_without_internals(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_run(self: OnnxModel, batch: Any) -> Any:
        raise RuntimeError("CUDA failure at /opt/secret/kernels.cu:42")

    monkeypatch.setattr(OnnxModel, "run", broken_run)
    with TestClient(create_app(service_settings(served_model_path, warmup_runs=0))) as client:
        wait_until_ready(client)
        with caplog.at_level(logging.ERROR):
            response = client.post("/v1/predict", **raw(jpeg_bytes(), "image/jpeg"))

    assert response.status_code == 500
    assert response.json() == error_body("inference_failed", "inference failed; the error is in the server log")
    assert "secret" not in response.text
    assert any(record.exc_info and "secret" in str(record.exc_info[1]) for record in caplog.records)


def test_unexpected_route_error_is_500_without_internals(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def exploding_upload(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("password=hunter2 in /srv/secret/config.py")

    monkeypatch.setattr(app.routes.predict, "read_single_upload", exploding_upload)
    settings = service_settings(served_model_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        with caplog.at_level(logging.ERROR):
            response = client.post("/v1/predict", **raw(jpeg_bytes(), "image/jpeg"))

    assert response.status_code == 500
    assert response.json() == error_body("internal_error", INTERNAL_ERROR_MESSAGE)
    for leak in ("hunter2", "secret", "Traceback", "RuntimeError"):
        assert leak not in response.text
    assert any(record.exc_info and "hunter2" in str(record.exc_info[1]) for record in caplog.records)


# --- /v1/predict/batch --------------------------------------------------------------------------------------


def test_batch_keeps_upload_order_and_fails_only_the_bad_slots(client: TestClient, served_model: ExportSummary) -> None:
    other_jpeg = scene_bytes(400, 300, "JPEG", seed=9)
    response = client.post(
        "/v1/predict/batch?top_k=7",
        **batch_files(
            ("a.jpg", jpeg_bytes()),
            ("b.png", png_bytes()),
            ("c.jpg", truncated_jpeg()),
            ("d.txt", b"plain text"),
            ("e.jpg", other_jpeg),
        ),
    )

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["filename"] for result in results] == ["a.jpg", "b.png", "c.jpg", "d.txt", "e.jpg"]
    assert results[2] == {
        "filename": "c.jpg",
        "result": None,
        "error": {
            "code": "invalid_image",
            "message": f"cannot decode the JPEG image: {pillow_decode_error(truncated_jpeg())}",
        },
    }
    assert results[3] == {
        "filename": "d.txt",
        "result": None,
        "error": {"code": "unsupported_media_type", "message": UNSUPPORTED_FORMAT},
    }
    for slot, data in ((0, jpeg_bytes()), (1, png_bytes()), (4, other_jpeg)):
        assert results[slot]["error"] is None
        check_prediction(results[slot]["result"], top_k=7, weights_sha256=served_model.weights_sha256)
        alone = client.post("/v1/predict?top_k=7", **raw(data, "application/octet-stream")).json()
        batched = results[slot]["result"]["predictions"]
        assert [entry["index"] for entry in batched] == [entry["index"] for entry in alone["predictions"]]
        assert [entry["probability"] for entry in batched] == pytest.approx(
            [entry["probability"] for entry in alone["predictions"]], abs=1e-6
        )


def test_batch_reports_an_image_over_the_pixel_limit_in_its_slot(limited_client: TestClient) -> None:
    response = limited_client.post(
        "/v1/predict/batch",
        **batch_files(("small.jpg", scene_bytes(50, 50, "JPEG")), ("big.png", encode(scene(200, 100), "PNG"))),
    )
    assert response.status_code == 200
    small, big = response.json()["results"]
    assert small["error"] is None and small["result"] is not None
    assert big == {
        "filename": "big.png",
        "result": None,
        "error": {
            "code": "image_too_large",
            "message": f"image is 200x100 = 20000 pixels, over the limit of {PIXEL_LIMIT}; send a smaller image",
        },
    }


def test_batch_at_the_image_limit_is_served(limited_client: TestClient) -> None:
    images = [(f"{i}.jpg", scene_bytes(48, 48, "JPEG", seed=i)) for i in range(BATCH_LIMIT)]
    response = limited_client.post("/v1/predict/batch", **batch_files(*images))
    assert response.status_code == 200
    assert [result["filename"] for result in response.json()["results"]] == ["0.jpg", "1.jpg", "2.jpg"]


def test_batch_over_the_image_limit_is_413(limited_client: TestClient) -> None:
    images = [(f"{i}.jpg", scene_bytes(48, 48, "JPEG", seed=i)) for i in range(BATCH_LIMIT + 1)]
    response = limited_client.post("/v1/predict/batch", **batch_files(*images))
    assert response.status_code == 413
    assert response.json() == error_body("payload_too_large", f"at most {BATCH_LIMIT} image(s) per request")


def test_batch_without_files_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict/batch", files={"file": ("cat.jpg", jpeg_bytes(), "image/jpeg")})
    assert response.status_code == 422
    assert response.json() == error_body("invalid_parameter", "send at least one image in the multipart field 'files'")


def test_batch_needs_multipart_415(client: TestClient) -> None:
    response = client.post("/v1/predict/batch", **raw(jpeg_bytes(), "image/jpeg"))
    assert response.status_code == 415
    assert response.json() == error_body(
        "unsupported_media_type",
        "unsupported Content-Type 'image/jpeg'; send multipart/form-data with one or more 'files' fields",
    )


# --- health and model ---------------------------------------------------------------------------------------


def test_liveness_and_readiness(client: TestClient) -> None:
    live, ready = client.get("/health/live"), client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_health_reports_providers_model_and_the_untrained_warning(
    client: TestClient, served_model: ExportSummary
) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    uptime = body.pop("uptime_s")
    assert isinstance(uptime, float) and uptime >= 0.0
    assert body == {
        "status": "ready",
        "version": __version__,
        "providers": [CPU_PROVIDER],
        "requested_providers": [CPU_PROVIDER],
        "model": untrained_model_summary(served_model.weights_sha256),
        "inference": {
            "device": "CPU",
            "usable_cpus": usable_cpus(),
            "instances": usable_cpus(),
            "intra_op_threads": 1,
            "solo_threads": None,  # tests run without the solo session (service_settings)
            "decode_threads": usable_cpus(),  # the inference threads decode
            "decode_on_inference_threads": True,
            "max_batch_size": 16,
        },
        "warnings": [UNTRAINED_WARNING],
    }


def test_model_card_route(client: TestClient, served_model: ExportSummary) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 200
    body = response.json()
    batch_dimension, *input_dimensions = body.pop("input_shape")
    assert isinstance(batch_dimension, str) and input_dimensions == [3, 227, 227]
    assert body == {
        "name": "bvlc_alexnet",
        "architecture": "bvlc_alexnet",
        "weights": "random",
        "weights_sha256": served_model.weights_sha256,
        "trained": False,
        "precision": "fp32",
        "source_url": RANDOM_SOURCE_URL,
        "license": RANDOM_LICENSE,
        "input_name": "image",
        "output_name": "probabilities",
        "preprocessing": {
            **asdict(BVLC_PREPROCESSING),
            "mean": list(BVLC_PREPROCESSING.mean),
            "std": list(BVLC_PREPROCESSING.std),
        },
        "num_labels": 1000,
        "providers": [CPU_PROVIDER],
        "warnings": [UNTRAINED_WARNING],
    }


# --- OpenAPI ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_openapi_lists_every_route(client: TestClient, openapi: dict[str, Any]) -> None:
    documented = {(method, path) for path, operations in openapi["paths"].items() for method in operations}
    assert ISSUE_ROUTES <= documented
    assert isinstance(client.app, FastAPI)
    routes = [route for route in client.app.routes if isinstance(route, APIRoute) and route.include_in_schema]
    for route in routes:
        for method in route.methods or set():
            assert (method.lower(), route.path) in documented


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref")
    if reference is None:
        return schema
    resolved: dict[str, Any] = openapi["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    return resolved


@pytest.mark.parametrize(("method", "path"), sorted(ISSUE_ROUTES))
def test_openapi_has_a_response_example_for_every_route(openapi: dict[str, Any], method: str, path: str) -> None:
    media = openapi["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    schema = _resolve(openapi, media["schema"])
    assert {"example", "examples"} & (set(media) | set(schema)), f"{method.upper()} {path} has no response example"


def test_openapi_documents_request_bodies_parameters_and_errors(openapi: dict[str, Any]) -> None:
    predict = openapi["paths"]["/v1/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream"}
    assert predict["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    batch = openapi["paths"]["/v1/predict/batch"]["post"]
    assert batch["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["files"]
    for operation in (predict, batch):
        [top_k] = [parameter for parameter in operation["parameters"] if parameter["name"] == "top_k"]
        assert (top_k["schema"]["minimum"], top_k["schema"]["maximum"], top_k["schema"]["default"]) == (1, 1000, 5)
        for status in ("400", "413", "415", "422", "500", "503"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    ready_error = openapi["paths"]["/health/ready"]["get"]["responses"]["503"]["content"]["application/json"]
    assert ready_error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "example" in openapi["components"]["schemas"]["ErrorResponse"]


def test_docs_page_is_served(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text


# --- API key ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"authorization": "Bearer not-the-key"}, id="wrong"),
        pytest.param({"authorization": f"Basic {API_KEY}"}, id="wrong-scheme"),
    ],
)
def test_predict_without_the_right_key_is_401(keyed_client: TestClient, headers: dict[str, str]) -> None:
    for path, field in (("/v1/predict", "file"), ("/v1/predict/batch", "files")):
        response = keyed_client.post(path, **multipart(jpeg_bytes(), field=field), headers=headers)
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
        assert response.headers["www-authenticate"] == "Bearer"


def test_predict_with_the_right_key_is_served(keyed_client: TestClient, served_model: ExportSummary) -> None:
    response = keyed_client.post(
        "/v1/predict", **multipart(jpeg_bytes()), headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    check_prediction(response.json(), top_k=5, weights_sha256=served_model.weights_sha256)


def test_health_stays_open_with_an_api_key(keyed_client: TestClient) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        assert keyed_client.get(path).status_code == 200


def test_requests_never_hop_to_the_threadpool(keyed_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # FastAPI runs sync dependencies and endpoints on anyio's threadpool: a hop per request, and under load up
    # to 40 lazily started threads, each with its own malloc arena (RSS that grew with load in the soak).
    hopped: list[str] = []

    async def recording(func: Any, *args: Any, **kwargs: Any) -> Any:
        hopped.append(getattr(func, "__qualname__", repr(func)))
        return func(*args, **kwargs)

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", recording)
    monkeypatch.setattr(fastapi.routing, "run_in_threadpool", recording)
    auth = {"authorization": f"Bearer {API_KEY}"}
    responses = [
        keyed_client.post("/v1/predict", **multipart(jpeg_bytes()), headers=auth),
        keyed_client.post("/v1/predict", content=jpeg_bytes(), headers=auth | {"content-type": "image/jpeg"}),
        keyed_client.post("/v1/predict/batch", **multipart(jpeg_bytes(), field="files"), headers=auth),
        keyed_client.post("/v1/predict", **multipart(jpeg_bytes())),
        keyed_client.get("/health"),
        keyed_client.get("/health/ready"),
        keyed_client.get("/v1/model"),
        keyed_client.get("/metrics"),
    ]

    assert [response.status_code for response in responses] == [200, 200, 200, 401, 200, 200, 200, 200]
    assert hopped == []
