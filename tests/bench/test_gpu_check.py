"""The GPU check's failure paths, which are all a machine without a GPU can exercise: each stops with its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = REPO_ROOT / "bench" / "gpu_check.sh"
CHECK_TIMEOUT_S = 120
FAKE_GPU = "NVIDIA H100 80GB HBM3, 580.65.06, 81559 MiB"


def _run_gpu_check(path_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    env = {"PATH": str(path_dir), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [bash, str(GPU_CHECK), *args], capture_output=True, text=True, env=env, timeout=CHECK_TIMEOUT_S, check=False
    )


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH with only what the script needs before its first check (no nvidia-smi)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("dirname",):
        found = shutil.which(name)
        assert found is not None
        (folder / name).symlink_to(found)
    return folder


def test_stops_without_an_nvidia_driver(tools: Path) -> None:
    result = _run_gpu_check(tools)
    assert result.returncode == 1
    assert result.stderr == "gpu_check: FAIL: nvidia-smi not found: no NVIDIA driver on this machine\n"


def test_names_the_gpu_then_stops_without_the_wheel_folder(tools: Path, tmp_path: Path) -> None:
    fake = tools / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho '{FAKE_GPU}'\n")
    fake.chmod(0o755)
    missing = tmp_path / "no-wheels-here"

    result = _run_gpu_check(tools, str(missing))

    assert result.returncode == 1
    assert result.stdout == f"gpu_check: GPU 0: {FAKE_GPU}\n"
    assert result.stderr == (
        f"gpu_check: FAIL: wheel folder '{missing}' not found; prepare it with the pip download command at the top "
        f"of {GPU_CHECK}\n"
    )


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU may be usable here: CUDA would be active")
def test_cuda_check_reports_the_silent_cpu_fallback(served_model_path: Path) -> None:
    """onnxruntime-gpu lists CUDA as available without CUDA's libraries, then falls back to the CPU quietly."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.cuda", str(served_model_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 3
    assert "OK:" not in result.stdout  # onnxruntime's preload_dlls prints what it could not load there
    assert result.stderr.splitlines()[-1] == (
        "FAIL: CUDAExecutionProvider is not active (active: CPUExecutionProvider): no GPU visible, a driver older "
        "than CUDA 13 needs, or the nvidia-* CUDA 13 / cuDNN 9 wheels are missing; onnxruntime's own error is "
        "printed above"
    )
