"""Settings from the environment: the ALEXNET_ prefix and the comma-separated provider list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

import app.cpus
from app.config import CPU_PROVIDER, CUDA_PROVIDER, Settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("CPUExecutionProvider", [CPU_PROVIDER]),
        ("CUDAExecutionProvider,CPUExecutionProvider", [CUDA_PROVIDER, CPU_PROVIDER]),
        (" CUDAExecutionProvider , CPUExecutionProvider ,", [CUDA_PROVIDER, CPU_PROVIDER]),
    ],
)
def test_providers_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("ALEXNET_PROVIDERS", value)
    assert Settings().providers == expected


@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_provider_list_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ALEXNET_PROVIDERS", value)
    with pytest.raises(ValidationError, match="at least one execution provider is required"):
        Settings()


def test_defaults_ask_for_cuda_then_cpu() -> None:
    settings = Settings()
    assert settings.providers == [CUDA_PROVIDER, CPU_PROVIDER]
    assert settings.model_path == Path("model/alexnet.onnx")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.require_cuda, settings.require_trained, settings.api_key) == (False, False, None)


def test_every_setting_is_read_with_the_alexnet_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    environment = {
        "ALEXNET_MODEL_PATH": str(tmp_path / "served.onnx"),
        "ALEXNET_PORT": "9123",
        "ALEXNET_HOST": "0.0.0.0",
        "ALEXNET_LOG_LEVEL": "warning",
        "ALEXNET_DEVICE_ID": "1",
        "ALEXNET_REQUIRE_CUDA": "true",
        "ALEXNET_REQUIRE_TRAINED": "1",
        "ALEXNET_INTRA_OP_THREADS": "3",
        "ALEXNET_MAX_BODY_BYTES": "1234",
        "ALEXNET_MAX_IMAGE_PIXELS": "5678",
        "ALEXNET_MAX_BATCH_IMAGES": "4",
        "ALEXNET_API_KEY": "sesame",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.model_path == tmp_path / "served.onnx"
    assert (settings.port, settings.host, settings.log_level) == (9123, "0.0.0.0", "warning")
    assert (settings.device_id, settings.require_cuda, settings.require_trained) == (1, True, True)
    assert settings.intra_op_threads == 3
    assert (settings.max_body_bytes, settings.max_image_pixels, settings.max_batch_images) == (1234, 5678, 4)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sesame"
    assert "sesame" not in repr(settings)


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("MODEL_PATH", "/elsewhere.onnx")
    monkeypatch.setenv("PROVIDERS", "CPUExecutionProvider")
    settings = Settings()
    assert settings.port == 8000
    assert settings.model_path == Path("model/alexnet.onnx")
    assert settings.providers == [CUDA_PROVIDER, CPU_PROVIDER]


@pytest.mark.parametrize(("name", "value"), [("ALEXNET_PORT", "70000"), ("ALEXNET_MAX_BODY_BYTES", "0")])
def test_out_of_range_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_thread_defaults_follow_a_two_cpu_cgroup_quota_not_the_hosts_cpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`docker run --cpus 2` on a 64-CPU host: cgroup v2 `cpu.max` says 2 CPUs; the affinity mask says 64."""
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "cgroup").write_text("0::/\n")
    monkeypatch.setattr(app.cpus, "CGROUP_MOUNT", tmp_path)
    monkeypatch.setattr(app.cpus, "PROC_SELF_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)

    settings = Settings()

    assert settings.decode_threads == 2
    assert settings.intra_op_threads == 1
