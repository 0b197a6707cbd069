"""The shared server's API key, and what a test can see of a server process from outside: memory, threads, health."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class PeakMemory:
    before: int
    peak: int = 0

    @property
    def growth(self) -> int:
        return self.peak - self.before


@contextmanager
def sampled_peak_memory(pid: int, interval_s: float) -> Iterator[PeakMemory]:
    """Polls the server's resident memory while the block runs; `peak` is the largest value seen."""
    memory = PeakMemory(before=resident_bytes(pid))
    memory.peak = memory.before
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            memory.peak = max(memory.peak, resident_bytes(pid))

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield memory
    finally:
        done.set()
        sampler.join()
        memory.peak = max(memory.peak, resident_bytes(pid))


def thread_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def assert_healthy(server: LiveServer) -> None:
    """The process is still running and says it is ready."""
    assert server.process.poll() is None, f"the server exited with {server.process.returncode}:\n{server.log()}"
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
