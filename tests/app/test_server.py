"""The real server: `python -m app` on a free loopback port, real image files both ways, then SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from model.export import ExportSummary
from tests.app.live_server import STOP_TIMEOUT_S, live_server
from tests.app.sample_images import scene_bytes
from tests.app.service_support import check_prediction, untrained_model_summary

REQUEST_TIMEOUT_S = 30.0


@pytest.mark.slow
def test_real_server_classifies_jpeg_and_png_files_both_ways_and_stops_cleanly(
    served_model: ExportSummary, tmp_path: Path
) -> None:
    images = {
        tmp_path / "street.jpg": ("image/jpeg", scene_bytes(640, 427, "JPEG", seed=21, quality=85)),
        tmp_path / "drawing.png": ("image/png", scene_bytes(300, 400, "PNG", seed=22)),
    }
    for path, (_, data) in images.items():
        path.write_bytes(data)

    with live_server(served_model.output, tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            for path, (media_type, _) in images.items():
                with path.open("rb") as upload:
                    as_multipart = http.post("/v1/predict", files={"file": (path.name, upload, media_type)})
                as_raw_body = http.post(
                    "/v1/predict?top_k=10", content=path.read_bytes(), headers={"content-type": media_type}
                )

                assert as_multipart.status_code == 200, f"{path.name}: {as_multipart.text}\n{server.log()}"
                assert as_raw_body.status_code == 200, f"{path.name}: {as_raw_body.text}\n{server.log()}"
                check_prediction(as_multipart.json(), top_k=5, weights_sha256=served_model.weights_sha256)
                check_prediction(as_raw_body.json(), top_k=10, weights_sha256=served_model.weights_sha256)
                assert as_multipart.json()["top5"] == as_raw_body.json()["top5"]

            health = http.get("/health").json()
            assert (health["status"], health["model"]) == (
                "ready",
                untrained_model_summary(served_model.weights_sha256),
            )

        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=STOP_TIMEOUT_S)

    log = server.log()
    assert exit_code == 0, log
    assert "shutdown complete" in log, log


def _send_part_of_a_body_then_hang_up(url: str, path: str, content_type: str, request_id: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: 100000\r\nX-Request-ID: {request_id}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S) as connection:
        connection.sendall(head.encode() + b"{" + b" " * 999)


@pytest.mark.slow
def test_a_client_that_hangs_up_mid_body_is_a_499_not_a_server_error(
    served_model: ExportSummary, tmp_path: Path
) -> None:
    routes = {"/v1/predict": ("image/jpeg", "gone-v1"), "/v2/models/alexnet/infer": ("application/json", "gone-v2")}
    with live_server(served_model.output, tmp_path) as server:
        for path, (content_type, request_id) in routes.items():
            _send_part_of_a_body_then_hang_up(server.url, path, content_type, request_id)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        counted = ""
        while time.monotonic() < deadline and counted.count('status="499"') < len(routes):
            counted = "\n".join(
                line
                for line in httpx.get(f"{server.url}/metrics").text.splitlines()
                if "alexnet_requests_total{" in line
            )
            time.sleep(0.05)
        log = server.log()

    for path, (_, request_id) in routes.items():
        route = path.replace("alexnet", "{model_name}")
        assert f'alexnet_requests_total{{method="POST",route="{route}",status="499"}} 1.0' in counted
        assert re.search(rf"INFO +POST {re.escape(path)} 499 .*\[{request_id}\]", log), log
    assert 'status="500"' not in counted
    assert "Traceback" not in log and "ERROR" not in log, log
