"""Overload, deadlines and shutdown: 503 at capacity, 504 past the deadline, SIGTERM drains and exits 0."""

from __future__ import annotations

import io
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from app import __main__ as server_main
from app.__main__ import STARTUP_FAILURE_EXIT_CODE, DrainingServer
from app.config import Settings
from app.inference import OnnxModel
from app.main import create_app
from tests.app.failing_warm_up import WARM_UP_ERROR
from tests.app.live_server import STARTUP_TIMEOUT_S, free_port, live_server, spawn_server
from tests.app.service_support import service_settings

RELEASE_TIMEOUT_S = 30.0


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While cleared, every inference blocks (on the shared and the solo session): lets a test hold requests
    inside the model."""
    opened = threading.Event()
    opened.set()
    shared, solo = OnnxModel.run, OnnxModel.run_solo

    def gated_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert opened.wait(RELEASE_TIMEOUT_S), "the test never opened the gate"
        return shared(self, batch)

    def gated_solo_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert opened.wait(RELEASE_TIMEOUT_S), "the test never opened the gate"
        return solo(self, batch)

    monkeypatch.setattr(OnnxModel, "run", gated_run)
    monkeypatch.setattr(OnnxModel, "run_solo", gated_solo_run)
    yield opened
    opened.set()


def _client(model_path: Path, **overrides: object) -> TestClient:
    settings = Settings.model_validate(
        {"model_path": model_path, "providers": ["CPUExecutionProvider"], "warmup_runs": 1, **overrides}
    )
    return TestClient(create_app(settings))


def _wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _in_flight(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("alexnet_in_flight_requests "):
            return float(line.split()[1]) - 1  # not counting this scrape
    raise AssertionError("no in-flight gauge")


def _post(client: TestClient) -> httpx.Response:
    response: httpx.Response = client.post("/v1/predict", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
    return response


def test_at_capacity_requests_get_503_at_once(served_model_path: Path, gate: threading.Event) -> None:
    with _client(served_model_path, max_queue_size=1, max_batch_size=1) as client, ThreadPoolExecutor(1) as pool:
        _wait_until(lambda: client.get("/health/ready").status_code == 200)
        gate.clear()
        held: Future[httpx.Response] = pool.submit(_post, client)
        _wait_until(lambda: _in_flight(client) == 1)
        started = time.perf_counter()
        shed = _post(client)
        elapsed = time.perf_counter() - started
        gate.set()
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json() == {
            "error": {
                "code": "overloaded",
                "message": "the server is at capacity (1 images in flight); retry shortly",
            }
        }
        # Shed without decoding or queueing; generous bound for a shared 2-core machine.
        assert elapsed < 1.0
        assert held.result(timeout=RELEASE_TIMEOUT_S).status_code == 200


def test_past_the_deadline_is_504(served_model_path: Path, gate: threading.Event) -> None:
    with _client(served_model_path, request_timeout_s=0.2) as client:
        _wait_until(lambda: client.get("/health/ready").status_code == 200)
        gate.clear()
        response = _post(client)
        gate.set()
        assert response.status_code == 504
        assert response.json() == {
            "error": {"code": "deadline_exceeded", "message": "the prediction took longer than 0.2 s; retry later"}
        }


@pytest.mark.slow
def test_sigterm_drains_then_exits_0(served_model_path: Path, tmp_path: Path) -> None:
    env = {"ALEXNET_DRAIN_DELAY_S": "2"}
    with live_server(served_model_path, tmp_path, env) as server:
        server.process.send_signal(signal.SIGTERM)
        ready = httpx.get(f"{server.url}/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json() == {
            "error": {
                "code": "model_not_ready",
                "message": "the model is loading, warming up or the server is draining",
            }
        }
        # Still serving while the load balancer notices.
        during = httpx.post(f"{server.url}/v1/predict", content=_jpeg(), headers={"Content-Type": "image/jpeg"})
        assert during.status_code == 200
        assert server.process.wait(timeout=30) == 0
        log = server.log()
    assert "received SIGTERM: reporting not-ready" in log
    assert "Finished server process" in log


@pytest.mark.slow
def test_sigterm_under_load_completes_every_accepted_request(served_model_path: Path, tmp_path: Path) -> None:
    image = _jpeg()
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer(url: str) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    # A connection per request: a request the server never accepted shows as refused, not as
                    # a keep-alive connection closed under it.
                    headers = {"Content-Type": "image/jpeg", "Connection": "close"}
                    response = http.post(f"{url}/v1/predict", content=image, headers=headers)
                    outcomes.append(str(response.status_code))
                except httpx.ConnectError:
                    outcomes.append("refused")  # not accepted: the listener is closed
                    return
                except httpx.TransportError as error:
                    outcomes.append(f"broken: {error!r}")  # accepted but dropped: a failure
                    return

    with live_server(served_model_path, tmp_path) as server, ThreadPoolExecutor(8) as pool:
        workers = [pool.submit(hammer, server.url) for _ in range(8)]
        _wait_until(lambda: len(outcomes) >= 16, timeout_s=60)
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=60)
        stop.set()
        for worker in workers:
            worker.result(timeout=60)
    assert exit_code == 0
    served = [outcome for outcome in outcomes if outcome != "refused"]
    assert served and all(outcome == "200" for outcome in served), sorted(set(outcomes))


@pytest.mark.slow
def test_a_failed_warm_up_is_logged_and_the_server_exits_non_zero(served_model_path: Path, tmp_path: Path) -> None:
    server = spawn_server(served_model_path, tmp_path / "server.log", module="tests.app.failing_warm_up")
    try:
        returncode = server.process.wait(timeout=STARTUP_TIMEOUT_S)
    finally:
        server.process.kill()
        server.process.wait()
    log = server.log()
    assert returncode == STARTUP_FAILURE_EXIT_CODE, log
    assert re.search(
        rf"ERROR +warm-up failed, so this process cannot serve: RuntimeError: {re.escape(WARM_UP_ERROR)}", log
    )
    assert "shutdown complete" in log, log


def test_a_run_stuck_past_the_deadlines_fails_liveness_until_it_returns(
    served_model_path: Path, gate: threading.Event
) -> None:
    with _client(served_model_path, request_timeout_s=0.2, stuck_run_deadlines=2) as client:
        _wait_until(lambda: client.get("/health/ready").status_code == 200)
        assert client.get("/health/live").status_code == 200
        gate.clear()
        assert _post(client).status_code == 504  # the caller gives up; the run itself stays stuck
        _wait_until(lambda: client.get("/health/live").status_code == 503)
        stuck = client.get("/health/live").json()
        v2_stuck = client.get("/v2/health/live")
        gate.set()
        _wait_until(lambda: client.get("/health/live").status_code == 200)
    assert stuck["error"]["code"] == "model_stuck"
    assert re.fullmatch(
        r"an inference run has not returned for \d+\.\d s, more than 2 request deadlines \(0\.4 s\); "
        r"the model is stuck, restart the process",
        stuck["error"]["message"],
    )
    assert (v2_stuck.status_code, v2_stuck.json()) == (503, {"live": False})


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_request_sent_on_an_accepted_connection_as_shutdown_begins_is_answered(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough that sending the request after the listener has closed is not a race in this test.
    monkeypatch.setattr(server_main, "ACCEPTED_REQUEST_GRACE_S", 2.0)
    image = _jpeg()
    request = (
        b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
        + f"Content-Length: {len(image)}\r\n\r\n".encode()
        + image
    )
    port = free_port()
    app = create_app(service_settings(served_model_path))
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None), threading.Event(), 0.0, threading.Event()
    )
    thread = threading.Thread(target=server.run, name="draining-server")
    thread.start()
    try:
        _wait_until(lambda: server.started, timeout_s=STARTUP_TIMEOUT_S)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            _wait_until(lambda: http.get("/health/ready").status_code == 200, timeout_s=STARTUP_TIMEOUT_S)
        _wait_until(lambda: not server.server_state.connections)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            _wait_until(lambda: len(server.server_state.connections) == 1)  # accepted, no request yet
            server.should_exit = True
            _wait_until(lambda: _refused(port))
            connection.sendall(request)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    assert not thread.is_alive()
