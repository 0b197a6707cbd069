"""The shared server's API key, and what a test can see of a server process from outside: memory and health."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.app.live_server import LiveServer

KIB = 1024
MIB = 1024 * KIB
# The shared server runs as in production: default limits, prediction routes behind a bearer token.
API_KEY = "reliability-test-key"
AUTH_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def resident_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS in /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * KIB
    raise AssertionError(f"no VmRSS for process {pid}")


def assert_healthy(server: LiveServer) -> None:
    """The process is still running and says it is ready."""
    assert server.process.poll() is None, f"the server exited with {server.process.returncode}:\n{server.log()}"
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
