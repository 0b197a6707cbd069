"""Settings from the environment: the ALEXNET_ prefix and the comma-separated provider list."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn
from pydantic import ValidationError
from starlette.testclient import TestClient

import app.__main__
import app.cpus
from app.__main__ import STARTUP_FAILURE_EXIT_CODE
from app.config import CPU_PROVIDER, CUDA_PROVIDER, Settings, get_settings
from app.main import AUTHENTICATION_LOG, create_app
from tests.app.service_support import service_settings


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


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_api_key_is_refused_not_taken_as_no_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # compose's `ALEXNET_API_KEY: ${API_KEY}` gives "" when API_KEY is unset; "" then matched a missing header.
    monkeypatch.setenv("ALEXNET_API_KEY", value)
    with pytest.raises(ValidationError, match="ALEXNET_API_KEY is set but empty"):
        Settings()


def test_the_server_refuses_to_start_with_an_empty_api_key_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ALEXNET_API_KEY": "",
        "ALEXNET_MODEL_PATH": str(tmp_path / "absent.onnx"),
        "ALEXNET_AUTO_EXPORT": "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == STARTUP_FAILURE_EXIT_CODE
    assert result.stderr.startswith("error: invalid configuration: ALEXNET_API_KEY: ")
    assert "ALEXNET_API_KEY is set but empty" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("api_key", "state"), [("s3cret", "on"), (None, "off")])
def test_startup_logs_whether_authentication_is_on(
    served_model_path: Path, caplog: pytest.LogCaptureFixture, api_key: str | None, state: str
) -> None:
    settings = service_settings(served_model_path, warmup_runs=0, api_key=api_key)
    with caplog.at_level(logging.INFO, logger="app.main"), TestClient(create_app(settings)):
        pass
    assert [message for message in caplog.messages if message.startswith("API key authentication")] == [
        AUTHENTICATION_LOG[state]
    ]


def test_graceful_shutdown_keeps_fractions_of_a_second(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[uvicorn.Config] = []
    monkeypatch.setenv("ALEXNET_GRACEFUL_SHUTDOWN_S", "0.5")
    monkeypatch.setenv("ALEXNET_MODEL_PATH", str(served_model_path))
    monkeypatch.setenv("ALEXNET_PROVIDERS", CPU_PROVIDER)
    monkeypatch.setattr(app.__main__, "configure_logging", lambda *args: None)
    monkeypatch.setattr(app.__main__, "_return_large_buffers_to_the_system", lambda: None)
    monkeypatch.setattr(app.__main__, "_reuse_image_memory", lambda cache_bytes: None)
    monkeypatch.setattr(app.__main__.DrainingServer, "run", lambda server: configs.append(server.config))
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit):  # the server never started
            app.__main__.main()
    finally:
        get_settings.cache_clear()
    assert [config.timeout_graceful_shutdown for config in configs] == [0.5]


def test_the_memory_budget_must_hold_the_largest_multipart_body() -> None:
    """A multipart body is charged twice; a budget smaller than that would refuse the largest upload for ever."""
    with pytest.raises(ValidationError, match=r"must be at least 2 x ALEXNET_MAX_BODY_BYTES \(100\)"):
        Settings(max_body_bytes=100, memory_budget_bytes=199)
    assert Settings(max_body_bytes=100, memory_budget_bytes=200).memory_budget_bytes == 200


def test_the_default_memory_budget_and_body_deadline() -> None:
    settings = Settings()
    assert (settings.memory_budget_bytes, settings.body_read_timeout_s) == (256 * 1024 * 1024, 60.0)
