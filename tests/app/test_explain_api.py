"""POST /v1/explain in-process: the JSON and PNG answers, scores checked against onnxruntime, limits and errors."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app.runtime
from app.config import CPU_PROVIDER, MAX_EXPLAIN_GRID
from app.explain import NORMALISATION, OVERLAY_SCALE
from app.inference import UNTRAINED_WARNING, OnnxModel
from app.main import create_app
from app.routes.explain import REGION_HEADER, TEXT_HEADER, wants_png
from app.runtime import prepare_image
from model.export import ExportSummary
from model.metadata import BVLC_PREPROCESSING
from tests.app.reference_preprocessing import bvlc_reference_tensor
from tests.app.sample_images import encode, scene, scene_bytes
from tests.app.service_support import error_body, service_settings, untrained_model_summary, wait_until_ready

PIXEL_LIMIT = 10_000
BODY_LIMIT = 50_000
RELEASE_TIMEOUT_S = 30.0
SIZE = BVLC_PREPROCESSING.input_size
# Cell boundaries of a 2×2 grid on the 227-pixel input, written out rather than computed by the code under test.
HALVES = ((0, 114), (114, 227))


def jpeg() -> bytes:
    return scene_bytes(320, 240, seed=11)


def raw(data: bytes, **headers: str) -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": "image/jpeg", **headers}}


@pytest.fixture(scope="module")
def client(served_model_path: Path) -> Iterator[TestClient]:
    settings = service_settings(served_model_path, max_image_pixels=PIXEL_LIMIT * 100, max_body_bytes=BODY_LIMIT)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        yield client


def _reference_drops(model_path: Path, data: bytes, target: int | None) -> tuple[int, npt.NDArray[np.float32]]:
    """(target, drops [2, 2]) from onnxruntime directly, with mean-baseline cells set to zero by hand."""
    session = ort.InferenceSession(str(model_path), providers=[CPU_PROVIDER])
    tensor = bvlc_reference_tensor(data)[0]
    rows = [tensor]
    for top, bottom in HALVES:
        for left, right in HALVES:
            variant = tensor.copy()
            variant[:, top:bottom, left:right] = 0.0
            rows.append(variant)
    probabilities = session.run(None, {"image": np.stack(rows)})[0]
    chosen = int(np.argmax(probabilities[0])) if target is None else target
    drops = (probabilities[0, chosen] - probabilities[1:, chosen]).reshape(2, 2)
    return chosen, drops


@pytest.mark.parametrize("target", [None, 7])
def test_scores_match_onnxruntime_on_hand_made_occlusions(
    client: TestClient, served_model: ExportSummary, target: int | None
) -> None:
    query = "grid=2" if target is None else f"grid=2&target={target}"
    response = client.post(f"/v1/explain?{query}", **raw(jpeg()))
    assert response.status_code == 200
    body = response.json()
    expected_target, drops = _reference_drops(served_model.output, jpeg(), target)
    scale = float(np.abs(drops).max())
    assert body["target"]["index"] == expected_target
    assert body["max_abs_drop"] == pytest.approx(scale, rel=1e-3, abs=1e-6)
    np.testing.assert_allclose(body["scores"], drops / scale, atol=2e-3)
    assert body["method"] == {
        "name": "occlusion",
        "grid": 2,
        "baseline": "mean",
        "input_size": SIZE,
        "normalisation": NORMALISATION,
    }


def test_json_answer_carries_the_prediction_and_the_untrained_warning(
    client: TestClient, served_model: ExportSummary
) -> None:
    predicted = client.post("/v1/predict", **raw(jpeg())).json()
    response = client.post("/v1/explain", **raw(jpeg()))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "prediction",
        "target",
        "method",
        "scores",
        "max_abs_drop",
        "region",
        "text",
        "timing_ms",
        "warnings",
    }
    prediction = body["prediction"]
    assert [score["index"] for score in prediction["top5"]] == [score["index"] for score in predicted["top5"]]
    for mine, theirs in zip(prediction["top5"], predicted["top5"], strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"], rel=1e-4)
    assert prediction["model"] == untrained_model_summary(served_model.weights_sha256)
    assert body["target"] == prediction["top1"]
    assert UNTRAINED_WARNING in body["warnings"]
    assert body["warnings"] == prediction["warnings"]
    assert body["method"]["grid"] == 7
    assert len(body["scores"]) == 7 and all(len(row) == 7 for row in body["scores"])
    assert all(-1.0 <= score <= 1.0 for row in body["scores"] for score in row)
    assert body["timing_ms"]["rows"] == 50
    assert body["timing_ms"]["render"] == 0.0
    assert body["region"] is None or body["region"] in body["text"]


def test_multipart_and_raw_bodies_give_the_same_scores(client: TestClient) -> None:
    multipart = client.post("/v1/explain?grid=2", files={"file": ("scene.jpg", jpeg(), "image/jpeg")})
    plain = client.post("/v1/explain?grid=2", **raw(jpeg()))
    assert multipart.status_code == plain.status_code == 200
    np.testing.assert_allclose(multipart.json()["scores"], plain.json()["scores"], atol=1e-5)


def test_png_answer_is_the_crop_with_the_heatmap_and_its_text_alternative(client: TestClient) -> None:
    as_json = client.post("/v1/explain?grid=3&baseline=black", **raw(jpeg())).json()
    response = client.post("/v1/explain?grid=3&baseline=black", **raw(jpeg(), accept="image/png"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert unquote(response.headers[TEXT_HEADER]) == as_json["text"]
    assert response.headers[REGION_HEADER] == (as_json["region"] or "none")
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG"
    assert overlay.width == SIZE * OVERLAY_SCALE
    assert overlay.height > SIZE * OVERLAY_SCALE


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        ("image/png", True),
        ("image/png, application/json", True),
        ("application/json, image/png;q=0.9", False),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_png_only_when_accept_prefers_it(accept: str, png: bool) -> None:
    assert wants_png(accept) is png


def test_the_image_is_decoded_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = prepare_image

    def counted(data: bytes, *args: Any, **kwargs: Any) -> tuple[npt.NDArray[np.float32], float, float]:
        calls.append(len(data))
        return original(data, *args, **kwargs)

    monkeypatch.setattr(app.runtime, "prepare_image", counted)
    assert client.post("/v1/explain?grid=4", **raw(jpeg())).status_code == 200
    assert calls == [len(jpeg())]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("grid=1", "query.grid: Input should be greater than or equal to 2"),
        (f"grid={MAX_EXPLAIN_GRID + 1}", f"query.grid: Input should be less than or equal to {MAX_EXPLAIN_GRID}"),
        ("grid=x", "query.grid: Input should be a valid integer, unable to parse string as an integer"),
        ("target=1000", "query.target: Input should be less than or equal to 999"),
        ("target=-1", "query.target: Input should be greater than or equal to 0"),
        ("baseline=grey", "query.baseline: Input should be 'mean' or 'black'"),
    ],
)
def test_bad_parameters_are_422(client: TestClient, query: str, message: str) -> None:
    response = client.post(f"/v1/explain?{query}", **raw(jpeg()))
    assert response.status_code == 422
    assert response.json() == error_body("invalid_parameter", message)


def test_oversized_image_gets_the_same_413_as_a_prediction(served_model_path: Path) -> None:
    settings = service_settings(served_model_path, max_image_pixels=PIXEL_LIMIT)
    data = encode(scene(200, 100), "PNG")
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        explained = client.post("/v1/explain", content=data, headers={"content-type": "image/png"})
        predicted = client.post("/v1/predict", content=data, headers={"content-type": "image/png"})
    assert explained.status_code == predicted.status_code == 413
    assert explained.json() == predicted.json()
    assert predicted.json() == error_body(
        "image_too_large",
        f"image is 200x100 = 20000 pixels, over the limit of {PIXEL_LIMIT}; send a smaller image",
    )


def test_oversized_body_gets_the_same_413_as_a_prediction(client: TestClient) -> None:
    response = client.post("/v1/explain", **raw(b"\xff\xd8\xff" + b"\x00" * BODY_LIMIT))
    assert response.status_code == 413
    assert response.json() == error_body(
        "payload_too_large", f"request body is over the limit of {BODY_LIMIT} bytes; send a smaller image"
    )


def test_a_grid_that_can_never_be_admitted_is_422(served_model_path: Path) -> None:
    with TestClient(create_app(service_settings(served_model_path, max_queue_size=9))) as client:
        wait_until_ready(client)
        response = client.post("/v1/explain?grid=3", **raw(jpeg()))
    assert response.status_code == 422
    assert response.json() == error_body(
        "invalid_parameter", "grid 3 needs 10 images in flight, over this server's limit of 9; use a smaller grid"
    )


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While cleared, every inference blocks: lets a test hold requests inside the model."""
    opened = threading.Event()
    opened.set()
    # Both ways into the model: shared batches, and a lone batch on the solo session.
    for name in ("run", "run_solo"):
        monkeypatch.setattr(OnnxModel, name, _gated(getattr(OnnxModel, name), opened))
    yield opened
    opened.set()


RunMethod = Callable[[OnnxModel, npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def _gated(original: RunMethod, opened: threading.Event) -> RunMethod:
    def gated_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert opened.wait(RELEASE_TIMEOUT_S), "the test never opened the gate"
        return original(self, batch)

    return gated_run


def _wait_for_in_flight(client: TestClient, count: int) -> None:
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while True:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("alexnet_in_flight_requests ") and float(line.split()[1]) - 1 == count:
                return
        assert time.monotonic() < deadline, "the held request never arrived"
        time.sleep(0.01)


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_every_variant_counts_against_admission(served_model_path: Path, gate: threading.Event) -> None:
    # Five rows (the image and 2×2 variants) fit an idle server of 5; with one prediction in flight they do not.
    settings = service_settings(served_model_path, max_queue_size=5, max_batch_size=1)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        wait_until_ready(client)
        assert client.post("/v1/explain?grid=2", **raw(jpeg())).status_code == 200
        gate.clear()
        held: Future[httpx.Response] = pool.submit(client.post, "/v1/predict", **raw(jpeg()))
        _wait_for_in_flight(client, 1)
        shed = client.post("/v1/explain?grid=2", **raw(jpeg()))
        gate.set()
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json() == error_body("overloaded", "the server is at capacity (5 images in flight); retry shortly")
        assert held.result(timeout=RELEASE_TIMEOUT_S).status_code == 200
        assert _metric(client, 'alexnet_explanations_total{outcome="ok"}') == 1.0
        assert _metric(client, 'alexnet_explanations_total{outcome="overloaded"}') == 1.0
        assert _metric(client, "alexnet_explanation_duration_seconds_count") == 1.0


def test_every_variant_counts_against_the_memory_budget(served_model_path: Path) -> None:
    # 5 rows of 3x227x227 float32 (3,091,740 bytes) do not fit a 3,000,000-byte budget; one prediction does.
    settings = service_settings(served_model_path, max_body_bytes=BODY_LIMIT, memory_budget_bytes=3_000_000)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        assert client.post("/v1/predict", **raw(jpeg())).status_code == 200
        shed = client.post("/v1/explain?grid=2", **raw(jpeg()))
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json() == error_body(
            "overloaded",
            "the server's memory budget (3000000 bytes) has no room for 5 image tensors now; retry shortly",
        )
        assert _metric(client, "alexnet_memory_budget_refusals_total") == 1.0
        assert _metric(client, "alexnet_memory_in_flight_bytes") == 0.0


def test_the_deadline_applies(served_model_path: Path, gate: threading.Event) -> None:
    with TestClient(create_app(service_settings(served_model_path, request_timeout_s=0.2))) as client:
        wait_until_ready(client)
        gate.clear()
        response = client.post("/v1/explain?grid=2", **raw(jpeg()))
        gate.set()
    assert response.status_code == 504
    assert response.json() == error_body("deadline_exceeded", "the prediction took longer than 0.2 s; retry later")


def test_route_is_documented_with_both_answers(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "image/png"}
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream"}
    names = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
    grid = names["grid"]
    assert (grid["minimum"], grid["maximum"], grid["default"]) == (2, MAX_EXPLAIN_GRID, 7)
    for status in ("400", "413", "415", "422", "503", "504"):
        assert status in operation["responses"]
