"""Run the real server (`python -m app`) in a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode} before ready:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready within {STARTUP_TIMEOUT_S} s:\n{self.log()}")


def spawn_server(
    model_path: Path, log_path: Path, env: Mapping[str, str] | None = None, module: str = "app"
) -> LiveServer:
    """Start `python -m app` (or a `module` that wraps it) on a free loopback port, logging to `log_path`;
    does not wait for readiness."""
    port = free_port()
    environment = {
        **os.environ,
        "ALEXNET_HOST": "127.0.0.1",
        "ALEXNET_PORT": str(port),
        "ALEXNET_MODEL_PATH": str(model_path),
        "ALEXNET_AUTO_EXPORT": "false",
        "ALEXNET_LOG_FORMAT": "plain",
        "ALEXNET_PROVIDERS": "CPUExecutionProvider",
        **(env or {}),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=environment, stdout=log_file, stderr=subprocess.STDOUT
        )
    return LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)


@contextmanager
def live_server(model_path: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[LiveServer]:
    """A ready server; killed on exit if the test did not stop it."""
    server = spawn_server(model_path, log_dir / f"server-{free_port()}.log", env)
    process = server.process
    try:
        server.wait_ready()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
