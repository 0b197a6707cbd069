"""/metrics moves by the right amounts; request IDs and Server-Timing are on every prediction."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((320, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(served_model_path: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=served_model_path, providers=["CPUExecutionProvider"], warmup_runs=1)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    """Warm-up runs in the background after startup; poll readiness (the app's loop runs in another thread)."""
    deadline = time.monotonic() + timeout_s
    while client.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_predictions_move_counters_and_histograms(client: TestClient) -> None:
    before = scrape(client)
    for _ in range(2):
        response = client.post("/v1/predict", files={"file": ("a.jpg", _jpeg(), "image/jpeg")})
        assert response.status_code == 200
    bad = client.post("/v1/predict", content=b"not an image", headers={"Content-Type": "image/png"})
    assert bad.status_code == 415
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    predict = {"route": "/v1/predict", "method": "POST"}
    assert delta("alexnet_requests_total", status="200", **predict) == 2
    assert delta("alexnet_requests_total", status="415", **predict) == 1
    assert delta("alexnet_request_duration_seconds_count", route="/v1/predict") == 3
    assert delta("alexnet_images_total", outcome="ok") == 2
    assert delta("alexnet_images_total", outcome="unsupported_media_type") == 1
    for stage in ("decode", "preprocess", "queue_wait"):
        assert delta(f"alexnet_{stage}_seconds_count") == 2
        assert delta(f"alexnet_{stage}_seconds_sum") > 0
    # Each prediction ran in some batch; batches of this sequential client hold one image each.
    assert delta("alexnet_batch_size_count") == 2
    assert delta("alexnet_batch_size_sum") == 2
    assert delta("alexnet_inference_seconds_count") == 2
    assert value(after, "alexnet_in_flight_requests") == 1  # the /metrics request itself
    assert value(after, "alexnet_queue_depth") == 0
    assert value(after, "alexnet_ready") == 1
    info = {
        "name": "bvlc_alexnet",
        "weights": "random",
        "trained": "false",
        "provider": "CPUExecutionProvider",
    }
    (info_labels,) = [labels for name, labels in after if name == "alexnet_model_info"]
    assert info.items() <= dict(info_labels).items()


def test_unmatched_routes_share_one_label(client: TestClient) -> None:
    before = scrape(client)
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/another/missing/path").status_code == 404
    after = scrape(client)
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, "alexnet_requests_total", **labels) - value(before, "alexnet_requests_total", **labels) == 2


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.get("/health/live", headers={"X-Request-ID": "trace-42.a"})
    assert echoed.headers["x-request-id"] == "trace-42.a"
    generated = client.get("/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    hostile = client.get("/health/live", headers={"X-Request-ID": "evil\tid with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    error = client.get("/missing", headers={"X-Request-ID": "on-errors-too"})
    assert error.status_code == 404
    assert error.headers["x-request-id"] == "on-errors-too"


def test_server_timing_header(client: TestClient) -> None:
    response = client.post("/v1/predict", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200
    timing = response.json()["timing_ms"]
    entries = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert list(entries) == ["decode", "preprocess", "queue", "infer", "total"]
    assert float(entries["infer"]) == pytest.approx(timing["inference"], abs=1e-3)
    assert float(entries["total"]) == pytest.approx(timing["total"], abs=1e-3)
