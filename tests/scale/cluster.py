"""A one-machine cluster for end-to-end scale tests: replicas of the real server behind HAProxy, and a load generator.

Everything listens on loopback only. HAProxy comes from Debian (installed here if missing: CI runs as root) and
health-checks each replica's /health/ready, as a Kubernetes Service's endpoints follow the readiness probe.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.app.live_server import LiveServer, free_port, spawn_server

BACKEND = "replicas"
HEALTH_CHECK_PATH = "/health/ready"
HEALTH_CHECK_INTERVAL_MS = 250
STOP_TIMEOUT_S = 30.0
LB_START_TIMEOUT_S = 10.0
APT_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Replica:
    name: str
    server: LiveServer

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.server.process


@contextmanager
def start_replicas(
    count: int, model_path: Path, log_dir: Path, env: Mapping[str, str], *, prefix: str = "r"
) -> Iterator[list[Replica]]:
    """`count` ready servers (`python -m app`), each on its own loopback port; killed by PID on exit."""
    started: list[Replica] = []
    try:
        for index in range(count):
            server = spawn_server(model_path, log_dir / f"replica-{prefix}{index}.log", env)
            started.append(Replica(name=f"{prefix}{index}", server=server))
        # Started together, waited for together: they load the model in parallel.
        for replica in started:
            replica.server.wait_ready()
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.kill()
        for replica in started:
            replica.process.wait(timeout=STOP_TIMEOUT_S)


def haproxy_executable() -> str:
    """Debian's haproxy, installed with apt-get when missing (CI runs as root)."""
    found = shutil.which("haproxy")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("haproxy is not installed and only root can apt-get it: apt-get install haproxy")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "haproxy"]
    if subprocess.run(install, env=environment, capture_output=True, timeout=APT_TIMEOUT_S).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update"], env=environment, check=True, capture_output=True, timeout=APT_TIMEOUT_S)
        subprocess.run(install, env=environment, check=True, capture_output=True, timeout=APT_TIMEOUT_S)
    found = shutil.which("haproxy")
    if not found:
        raise RuntimeError("apt-get installed haproxy, yet it is not on PATH")
    return found


@dataclass(frozen=True)
class ServerStats:
    status: str
    sessions_total: int
    # Why the last health check ended as it did: L7STS with the HTTP status, L4CON for a refused connection…
    check_status: str
    check_code: str


class LoadBalancer:
    """HAProxy in front of the replicas, driven through its admin socket."""

    def __init__(self, url: str, admin_socket: Path, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.admin_socket = admin_socket
        self.process = process
        self.log_path = log_path

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5.0)
            connection.connect(str(self.admin_socket))
            connection.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def answers(self) -> bool:
        try:
            self.command("show info")
        except OSError:
            return False
        return True

    def stats(self) -> dict[str, ServerStats]:
        """Each replica's state (UP, DOWN, MAINT…), its last health check, and the sessions routed to it so far."""
        table = self.command("show stat").removeprefix("# ")
        return {
            row["svname"]: ServerStats(
                status=row["status"],
                sessions_total=int(row["stot"]),
                check_status=row["check_status"].removeprefix("* "),
                check_code=row["check_code"],
            )
            for row in csv.DictReader(io.StringIO(table))
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def set_enabled(self, replica: str, enabled: bool) -> None:
        self.command(f"set server {BACKEND}/{replica} state {'ready' if enabled else 'maint'}")

    def wait_for(self, statuses: Mapping[str, str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            current = {name: server.status for name, server in self.stats().items() if name in statuses}
            if current == statuses:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy reports {current}, expected {dict(statuses)}")
            time.sleep(0.05)


def haproxy_config(port: int, admin_socket: Path, backends: Mapping[str, str]) -> str:
    servers = "\n".join(f"    server {name} {address} check" for name, address in backends.items())
    return f"""\
global
    maxconn 512
    stats socket {admin_socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client {int(REQUEST_TIMEOUT_S)}s
    timeout server {int(REQUEST_TIMEOUT_S)}s
    timeout check 2s
    # No retries and no redispatch: a request the balancer sends to a closing replica must fail visibly here,
    # not be rescued by a retry. Only the server's drain may keep every request whole.
    retries 0

frontend inference
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    option httpchk GET {HEALTH_CHECK_PATH}
    http-check expect status 200
    # Out of rotation after one failed check, back after two good ones.
    default-server inter {HEALTH_CHECK_INTERVAL_MS}ms fall 1 rise 2
{servers}
"""


@contextmanager
def start_load_balancer(replicas: list[Replica], work_dir: Path) -> Iterator[LoadBalancer]:
    """HAProxy on a free loopback port with every replica UP; stopped by PID on exit."""
    port = free_port()
    admin_socket = work_dir / "haproxy.sock"
    admin_socket.unlink(missing_ok=True)
    config = work_dir / "haproxy.cfg"
    backends = {replica.name: replica.server.url.removeprefix("http://") for replica in replicas}
    config.write_text(haproxy_config(port, admin_socket, backends))
    log_path = work_dir / "haproxy.log"
    with log_path.open("wb") as log_file:
        # -db: stay in the foreground, so this PID is HAProxy itself.
        process = subprocess.Popen(
            [haproxy_executable(), "-db", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
    balancer = LoadBalancer(f"http://127.0.0.1:{port}", admin_socket, process, log_path)
    try:
        deadline = time.monotonic() + LB_START_TIMEOUT_S
        while not balancer.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"HAProxy did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        balancer.wait_for(dict.fromkeys(backends, "UP"), timeout_s=LB_START_TIMEOUT_S)
        yield balancer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class LoadResult:
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def throughput(self) -> float:
        return self.statuses[200] / self.seconds


def generate_load(url: str, body: bytes, *, concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """POST `body` to `url`/v1/predict from `concurrency` threads, closed-loop, for `seconds` or `max_requests`."""
    lock = threading.Lock()
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    issued = 0
    started = time.monotonic()
    deadline = started + seconds

    def take_ticket() -> bool:
        nonlocal issued
        with lock:
            if issued >= max_requests or time.monotonic() >= deadline:
                return False
            issued += 1
            return True

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
            while take_ticket():
                try:
                    response = client.post("/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    statuses[response.status_code] += 1

    threads = [threading.Thread(target=worker, name=f"load-{index}") for index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(seconds=time.monotonic() - started, statuses=statuses, errors=errors)
