"""The real server as a child process: `python -m app` on a free loopback port, configured by ALEXNET_* only."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
READY_POLL_S = 0.2
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
# Metrics the benchmark reads around each load level (sums and counts of the server's own histograms).
SCRAPED_METRICS = (
    "alexnet_batch_size_sum",
    "alexnet_batch_size_count",
    "alexnet_inference_seconds_sum",
    "alexnet_decode_seconds_sum",
    "alexnet_queue_wait_seconds_sum",
)


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message points at its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """Start on enter (waiting for /health/ready), SIGTERM on exit. `env` holds the ALEXNET_* settings."""

    def __init__(self, settings_env: Mapping[str, str], *, cwd: Path, log_path: Path) -> None:
        self.port = free_port()
        self.settings_env = {**settings_env, "ALEXNET_HOST": HOST, "ALEXNET_PORT": str(self.port)}
        self._cwd = cwd
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def __enter__(self) -> ServerProcess:
        # The server sees only the settings given here, not ALEXNET_* variables from the benchmark's shell.
        env = {key: value for key, value in os.environ.items() if not key.startswith("ALEXNET_")}
        env.update(self.settings_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=self._cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ServerStartError(
                    f"the server exited with status {self._process.returncode} before it was ready; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(self.url("/health/ready"), timeout=HTTP_TIMEOUT_S) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(READY_POLL_S)
        raise ServerStartError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s; see {self.log_path}")

    def _stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("the server did not stop within %.0f s of SIGTERM; killing it", STOP_TIMEOUT_S)
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())

    def scrape_metrics(self) -> dict[str, float]:
        """The `SCRAPED_METRICS` values from /metrics (0 for any not yet exported)."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=HTTP_TIMEOUT_S) as response:
            text = response.read().decode("utf-8")
        values = dict.fromkeys(SCRAPED_METRICS, 0.0)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in values:
                values[name] = float(value)
        return values
