"""Log lines for people and for machines: the format follows the terminal unless ALEXNET_LOG_FORMAT says."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.inference import CPU_FALLBACK_WARNING
from app.logs import LogFormat, configure_logging, resolve_format
from app.request_context import request_id_var
from tests.app.live_server import STARTUP_TIMEOUT_S, free_port

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")
# What onnxruntime's own C++ logger and its library preload print when CUDA is missing.
ONNXRUNTIME_TEXT = ("[E:onnxruntime", "[W:onnxruntime", "onnxruntime::", "Failed to load", "\x1b[")


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(log_format: LogFormat | None, stream: io.StringIO, request_id: str = "-") -> str:
    configure_logging("info", log_format, stream)
    token = request_id_var.set(request_id)
    try:
        logging.getLogger("app.test").warning("model %s loaded", "alexnet", extra={"duration_ms": 1.5})
    finally:
        request_id_var.reset(token)
    return stream.getvalue()


def test_unset_format_is_decided_by_the_terminal() -> None:
    assert Settings().log_format is None
    assert resolve_format(None, TerminalStream()) == "plain"
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format("json", TerminalStream()) == "json"
    assert resolve_format("plain", io.StringIO()) == "plain"


@pytest.mark.usefixtures("restore_logging")
def test_machines_get_one_json_object_per_line() -> None:
    (line,) = emit(None, io.StringIO(), request_id="req-7").splitlines()
    entry = json.loads(line)
    assert entry.pop("time")
    assert entry == {
        "level": "WARNING",
        "logger": "app.test",
        "message": "model alexnet loaded",
        "request_id": "req-7",
        "duration_ms": 1.5,
    }


@pytest.mark.usefixtures("restore_logging")
def test_a_terminal_gets_readable_lines_with_the_request_id_inside_a_request() -> None:
    (outside,) = emit(None, TerminalStream()).splitlines()
    assert PLAIN_LINE.match(outside)
    assert outside.endswith(" WARNING model alexnet loaded")
    (inside,) = emit(None, TerminalStream(), request_id="req-7").splitlines()
    assert inside.endswith(" WARNING model alexnet loaded [req-7]")


@pytest.mark.usefixtures("restore_logging")
def test_an_explicit_format_wins_over_the_terminal() -> None:
    assert json.loads(emit("json", TerminalStream()))["message"] == "model alexnet loaded"
    assert PLAIN_LINE.match(emit("plain", io.StringIO()))


def _read_until_ready(master: int, url: str, process: subprocess.Popen[bytes]) -> bytes:
    """Everything the server writes to its terminal until it answers /health/ready (drained as it comes)."""
    output = bytearray()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        while select.select([master], [], [], 0.1)[0]:
            try:
                output += os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
        try:
            if httpx.get(f"{url}/health/ready", timeout=2.0).status_code == 200:
                return bytes(output)
        except httpx.TransportError:
            pass
    raise AssertionError(f"server not ready (exit {process.poll()}):\n{output.decode(errors='replace')}")


@pytest.mark.slow
def test_python_m_app_in_a_terminal_prints_readable_lines_and_no_onnxruntime_noise(served_model_path: Path) -> None:
    """`make serve` at a terminal, with the default providers (CUDA first) on whatever this machine has."""
    port = free_port()
    environment = {
        **{name: value for name, value in os.environ.items() if not name.startswith("ALEXNET_")},
        "ALEXNET_PORT": str(port),
        "ALEXNET_MODEL_PATH": str(served_model_path),
        "ALEXNET_AUTO_EXPORT": "false",
    }
    master, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], env=environment, stdin=terminal, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    try:
        output = _read_until_ready(master, f"http://127.0.0.1:{port}", process).decode(errors="replace")
    finally:
        process.kill()
        process.wait(timeout=30)
        os.close(master)

    lines = [line for line in output.replace("\r\n", "\n").splitlines() if line.strip()]
    assert lines, "the server printed nothing"
    assert [line for line in lines if not PLAIN_LINE.match(line)] == []
    assert [text for text in ONNXRUNTIME_TEXT if text in output] == []
    warnings = [line for line in lines if " WARNING " in line]
    assert all(CPU_FALLBACK_WARNING in line or "UNTRAINED MODEL" in line for line in warnings), warnings
