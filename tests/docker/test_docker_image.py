"""The Docker image, built and run for real: health, a prediction, a non-root user, no torch, a clean stop.

The session starts its own `dockerd` (own data root, exec root, socket and pid file, stopped by PID at the
end whatever happens), builds the local Debian base with `docker/build-base.sh` (kept between runs in the
persistent data root, so a warm run only rebuilds what changed) and the CPU image with untrained weights.
The GPU image differs only by `--build-arg CUDA=true` and is built the same way (docs/docker.md).

Cold (packages to install, nothing cached) this takes 3 to 4 minutes on 2 cores; warm, about 1 minute. The
base is rebuilt (about 45 s) whenever build-base.sh or the host's CA certificates change.
Where Docker cannot run at all (not Linux, not root, dockerd refused its privileges) it is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from tests.reliability.flood import flood, flood_forms, twelve_megapixel_photo

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_BASE_SCRIPT = REPO_ROOT / "docker" / "build-base.sh"
# Persistent on purpose: CI reruns on the same machine reuse the base image and the build cache.
DATA_ROOT = Path("/var/lib/alexnet-serve-docker")
EXEC_ROOT = Path("/run/alexnet-serve-docker")
SOCKET_PATH = DATA_ROOT / "docker.sock"
PID_FILE = DATA_ROOT / "dockerd.pid"
DOCKERD_LOG = DATA_ROOT / "dockerd.log"
CLIENT_CONFIG_DIR = DATA_ROOT / "client-config"

APT_PACKAGES = ("docker.io", "debootstrap")
BASE_IMAGE_REPOSITORY = "alexnet-serve-base"
# What build-base.sh copies into the base: when any of it changes (a new proxy CA), the base is rebuilt.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CERTS_DIR = Path("/etc/ssl/certs")
IMAGE_TAG = "alexnet-serve:test"
CONTAINER_PORT = 8000
# The build cache (pip downloads included) may keep this much between runs.
BUILD_CACHE_KEEP = "8GB"

DOCKERD_START_TIMEOUT_S = 60.0
DOCKERD_STOP_TIMEOUT_S = 30.0
APT_TIMEOUT_S = 600.0
BASE_BUILD_TIMEOUT_S = 900.0
IMAGE_BUILD_TIMEOUT_S = 1200.0
COMMAND_TIMEOUT_S = 120.0
# The image checks every 10 s and the server warms up in a few seconds; this leaves room for a slow disk.
HEALTHY_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.5
STOP_GRACE_S = 10
SHUTDOWN_LOG_LINES = ("Shutting down", "Finished server process")
TOP_K = 5
NUM_CLASSES = 1000
# dockerd's own words when the kernel or the sandbox refuses it what it needs.
PRIVILEGE_ERRORS = ("operation not permitted", "permission denied", "must be run as root")


@dataclass(frozen=True)
class DockerCli:
    """The docker client, pointed at this session's daemon."""

    executable: str
    host: str

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": self.host,
            # Our own client config: no credential helpers or contexts from the user's ~/.docker.
            "DOCKER_CONFIG": str(CLIENT_CONFIG_DIR),
            "DOCKER_BUILDKIT": "1",
        }

    def run(
        self, *args: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.executable, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{_tail(result.stdout + result.stderr)}")
        return result

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def container_state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.run("inspect", "--format", "{{json .State}}", name).stdout)
        return state

    def logs(self, name: str) -> str:
        result = self.run("logs", name, check=False)
        return result.stdout + result.stderr


@dataclass(frozen=True)
class RunningContainer:
    name: str
    base_url: str


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _ensure_docker_installed() -> None:
    """Install docker.io and debootstrap with apt when either is missing (CI runs as root on Debian)."""
    if shutil.which("dockerd") and shutil.which("debootstrap"):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("dockerd or debootstrap is missing and there is no apt-get to install them")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
    ):
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{_tail(result.stdout + result.stderr)}")


def _docker_client() -> str:
    # Prefer the client the distribution package installs beside dockerd: another `docker` earlier on PATH
    # may be a newer build that needs the buildx plugin for BuildKit.
    client = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
    if client is None:
        pytest.fail("dockerd is installed but the docker client is not")
    return client


def _start_dockerd() -> subprocess.Popen[bytes]:
    dockerd = shutil.which("dockerd")
    assert dockerd is not None
    for directory in (DATA_ROOT, EXEC_ROOT, CLIENT_CONFIG_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    SOCKET_PATH.unlink(missing_ok=True)
    with DOCKERD_LOG.open("wb") as log:
        return subprocess.Popen(
            [
                dockerd,
                f"--data-root={DATA_ROOT / 'data'}",
                f"--exec-root={EXEC_ROOT}",
                f"--pidfile={PID_FILE}",
                f"--host=unix://{SOCKET_PATH}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_dockerd(process: subprocess.Popen[bytes], docker: DockerCli) -> None:
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = _tail(DOCKERD_LOG.read_text(errors="replace"), lines=15)
            if any(error in log.lower() for error in PRIVILEGE_ERRORS):
                pytest.skip(f"dockerd cannot run here (exit {process.returncode}): {log.splitlines()[-1]}")
            pytest.fail(f"dockerd exited {process.returncode} while starting; {DOCKERD_LOG}:\n{log}")
        if SOCKET_PATH.exists() and docker.run("version", check=False).returncode == 0:
            return
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"dockerd did not answer within {DOCKERD_START_TIMEOUT_S:.0f} s; see {DOCKERD_LOG}")


def _stop_dockerd(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=DOCKERD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def docker() -> Iterator[DockerCli]:
    """A dockerd of our own for the session; stopped by its PID afterwards, whatever happens."""
    if sys.platform != "linux":
        pytest.skip("Docker containers need a Linux host")
    if os.geteuid() != 0:
        pytest.skip("starting dockerd (and installing it) needs root")
    _ensure_docker_installed()
    client = DockerCli(executable=_docker_client(), host=f"unix://{SOCKET_PATH}")
    process = _start_dockerd()
    try:
        _wait_for_dockerd(process, client)
        yield client
    finally:
        _stop_dockerd(process)


def _base_image_tag() -> str:
    """`alexnet-serve-base:bookworm-<digest>` of the script and the host CA certificates it trusts."""
    inputs = [BUILD_BASE_SCRIPT]
    inputs += sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []
    inputs += sorted(path for path in HOST_CERTS_DIR.glob("*.pem") if path.is_file() and not path.is_symlink())
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.read_bytes())
    return f"{BASE_IMAGE_REPOSITORY}:bookworm-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session")
def base_image(docker: DockerCli) -> str:
    """The debootstrap'd Python base, built once per script and host CAs, and reused by later runs."""
    tag = _base_image_tag()
    if docker.image_exists(tag):
        return tag
    result = subprocess.run(
        [str(BUILD_BASE_SCRIPT), tag],
        env={**docker.environment(), "DOCKER": docker.executable},
        capture_output=True,
        text=True,
        timeout=BASE_BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{BUILD_BASE_SCRIPT} exited {result.returncode}:\n{_tail(result.stdout + result.stderr)}")
    superseded = docker.run("images", "--format={{.Repository}}:{{.Tag}}", BASE_IMAGE_REPOSITORY).stdout.split()
    for old_tag in superseded:
        if old_tag != tag:
            docker.run("rmi", old_tag, check=False)
    return tag


@pytest.fixture(scope="session")
def image(docker: DockerCli, base_image: str) -> str:
    """The CPU image with untrained weights, built from this checkout."""
    docker.run(
        "build",
        "--progress=plain",
        f"--build-arg=BASE_IMAGE={base_image}",
        "--build-arg=WEIGHTS=random",
        "--build-arg=CUDA=false",
        f"--tag={IMAGE_TAG}",
        str(REPO_ROOT),
        timeout=IMAGE_BUILD_TIMEOUT_S,
    )
    # Keep the persistent data root bounded: drop superseded images and old build cache.
    docker.run("image", "prune", "--force")
    docker.run("builder", "prune", "--force", f"--keep-storage={BUILD_CACHE_KEEP}")
    return IMAGE_TAG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_healthy(docker: DockerCli, name: str) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    status = "unknown"
    while time.monotonic() < deadline:
        state = docker.container_state(name)
        status = state.get("Health", {}).get("Status", "without a health check")
        if status == "healthy":
            return
        if not state["Running"] or status == "unhealthy":
            break
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"container {name} is {status!r}, not healthy; its log:\n{_tail(docker.logs(name))}")


@pytest.fixture()
def container(docker: DockerCli, image: str) -> Iterator[RunningContainer]:
    """A container of the image on 127.0.0.1, once Docker calls it healthy; removed afterwards."""
    name = f"alexnet-serve-test-{uuid.uuid4().hex[:12]}"
    port = _free_port()
    docker.run("run", "--detach", f"--name={name}", f"--publish=127.0.0.1:{port}:{CONTAINER_PORT}", image)
    try:
        _wait_until_healthy(docker, name)
        yield RunningContainer(name=name, base_url=f"http://127.0.0.1:{port}")
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)


def _jpeg_bytes() -> bytes:
    image = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_image_labels_say_untrained_cpu_build(docker: DockerCli, image: str) -> None:
    labels = json.loads(docker.run("inspect", "--format", "{{json .Config.Labels}}", image).stdout)
    assert labels["io.alexnet-serve.trained"] == "false"
    assert labels["io.alexnet-serve.weights"] == "random"
    assert labels["io.alexnet-serve.cuda"] == "false"
    assert labels["org.opencontainers.image.title"] == "alexnet-serve"


def test_healthy_container_predicts_top5_for_a_jpeg(container: RunningContainer) -> None:
    response = httpx.post(
        f"{container.base_url}/v1/predict",
        files={"file": ("gradient.jpg", _jpeg_bytes(), "image/jpeg")},
        timeout=30.0,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    top5 = body["top5"]
    assert len(top5) == TOP_K
    for entry in top5:
        assert set(entry) >= {"index", "wnid", "label", "probability"}
        assert 0 <= entry["index"] < NUM_CLASSES
        assert entry["wnid"].startswith("n")
        assert 0.0 <= entry["probability"] <= 1.0
    probabilities = [entry["probability"] for entry in top5]
    assert probabilities == sorted(probabilities, reverse=True)
    assert len({entry["index"] for entry in top5}) == TOP_K
    assert body["top1"] == top5[0]
    assert body["model"]["weights"] == "random"
    assert body["model"]["trained"] is False


def test_server_process_is_not_root(docker: DockerCli, container: RunningContainer) -> None:
    status = docker.run("exec", container.name, "cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))

    real, effective, saved, filesystem = (int(uid) for uid in uid_line.split()[1:])
    assert 0 not in (real, effective, saved, filesystem), uid_line


def test_torch_is_not_importable(docker: DockerCli, image: str) -> None:
    result = docker.run("run", "--rm", image, "python", "-c", "import torch", check=False)

    assert result.returncode == 1
    assert "No module named 'torch'" in result.stderr


def test_docker_stop_ends_the_server_cleanly(docker: DockerCli, container: RunningContainer) -> None:
    started = time.monotonic()
    docker.run("stop", f"--time={STOP_GRACE_S}", container.name, timeout=STOP_GRACE_S + COMMAND_TIMEOUT_S)
    elapsed = time.monotonic() - started

    state = docker.container_state(container.name)
    log = docker.logs(container.name)
    assert state["ExitCode"] == 0, _tail(log)
    assert elapsed < STOP_GRACE_S
    assert any(line in log for line in SHUTDOWN_LOG_LINES), _tail(log)
    # No terminal under `docker run` (no -t): ALEXNET_LOG_FORMAT unset means one JSON object per line.
    not_json = [line for line in log.splitlines() if line.strip() and not _is_json_object(line)]
    assert not_json == [], _tail(log)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def test_docker_stop_while_the_model_loads_ends_the_container_at_once(docker: DockerCli, image: str) -> None:
    # As PID 1, Python ignored SIGTERM until uvicorn installed its handlers: `docker stop` during the
    # seconds of imports and model loading waited out the grace period and ended in SIGKILL (137).
    name = f"alexnet-serve-test-{uuid.uuid4().hex[:12]}"
    docker.run("run", "--detach", f"--name={name}", image)
    try:
        started = time.monotonic()
        docker.run("stop", f"--time={STOP_GRACE_S}", name, timeout=STOP_GRACE_S + COMMAND_TIMEOUT_S)
        elapsed = time.monotonic() - started
        state = docker.container_state(name)
        log = docker.logs(name)
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)
    assert (state["ExitCode"], elapsed < STOP_GRACE_S / 2) in {(0, True), (143, True)}, _tail(log)
    # Startup completing would mean the SIGTERM was ignored, or came too late to test loading.
    assert "Started server process" not in log, _tail(log)


BASE_DEPLOYMENT = REPO_ROOT / "docker" / "k8s" / "base" / "deployment.yaml"
# Kubernetes' binary memory suffixes, as `docker run --memory` writes them.
DOCKER_MEMORY_UNITS = {"Mi": "m", "Gi": "g"}


def _manifest_limits() -> tuple[str, str]:
    """The base Deployment's container limits as `docker run` takes them: (memory, CPUs)."""
    deployment = yaml.safe_load(BASE_DEPLOYMENT.read_text())
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    memory = str(limits["memory"])
    unit = DOCKER_MEMORY_UNITS[memory[-2:]]
    return f"{memory[:-2]}{unit}", str(limits["cpu"])


def test_a_flood_of_uploads_within_the_manifests_memory_limit_is_not_oom_killed(docker: DockerCli, image: str) -> None:
    """The same flood as tests/reliability/test_memory_budget.py, at the Kubernetes manifest's memory and CPU
    limits: the container is not OOM-killed, never restarts, and is ready afterwards."""
    memory, cpus = _manifest_limits()
    name = f"alexnet-serve-flood-{uuid.uuid4().hex[:12]}"
    port = _free_port()
    docker.run(
        "run",
        "--detach",
        f"--name={name}",
        f"--memory={memory}",
        f"--memory-swap={memory}",  # no swap: over the limit is an OOM kill, as in a pod
        f"--cpus={cpus}",
        f"--publish=127.0.0.1:{port}:{CONTAINER_PORT}",
        image,
    )
    try:
        _wait_until_healthy(docker, name)
        base_url = f"http://127.0.0.1:{port}"
        outcomes: dict[str, dict[str, int]] = {}
        for form_name, form in flood_forms(twelve_megapixel_photo()).items():
            outcomes[form_name] = dict(asyncio.run(flood(base_url, form)).outcomes)
        state = docker.container_state(name)
        restarts = docker.run("inspect", "--format", "{{.RestartCount}}", name).stdout.strip()
        ready = httpx.get(f"{base_url}/health/ready", timeout=10)
        stats = docker.run("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
        logger.info("flood at --memory=%s --cpus=%s: %s; memory afterwards %s", memory, cpus, outcomes, stats)
        assert (state["OOMKilled"], state["Running"], restarts) == (False, True, "0"), _tail(docker.logs(name))
        assert ready.status_code == 200, ready.text
        for form_outcomes in outcomes.values():
            assert form_outcomes.get("200", 0) > 0, outcomes
            assert set(form_outcomes) <= {"200", "503 overloaded retry-after=1"} | {
                outcome for outcome in form_outcomes if outcome.startswith("transport error")
            }, outcomes
    finally:
        docker.run("rm", "--force", "--volumes", name, check=False)
