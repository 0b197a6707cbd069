"""The runtime's device-dependent defaults: the micro-batch cap and the shapes it warms up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.config import CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE
from app.inference import OnnxModel
from app.main import create_app
from app.runtime import max_batch_size
from tests.app.service_support import service_settings, wait_until_ready


@pytest.mark.parametrize(
    ("configured", "on_gpu", "expected"),
    [(None, False, CPU_MAX_BATCH_SIZE), (None, True, GPU_MAX_BATCH_SIZE), (7, False, 7), (7, True, 7)],
)
def test_max_batch_size_is_the_configured_one_else_the_devices_default(
    configured: int | None, on_gpu: bool, expected: int, served_model_path: Path
) -> None:
    settings = service_settings(served_model_path, max_batch_size=configured)
    assert max_batch_size(settings, on_gpu=on_gpu) == expected


def test_device_defaults_differ() -> None:
    assert (CPU_MAX_BATCH_SIZE, GPU_MAX_BATCH_SIZE) == (16, 64)


@pytest.mark.parametrize(("configured", "warmed"), [(None, (1, CPU_MAX_BATCH_SIZE)), (1, (1,)), (5, (1, 5))])
def test_warm_up_runs_single_images_and_full_batches(
    configured: int | None,
    warmed: tuple[int, ...],
    served_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[int, ...]] = []
    real_warm_up = OnnxModel.warm_up

    def recording_warm_up(self: OnnxModel, runs: int, batch_sizes: tuple[int, ...] = (1,), **kwargs: Any) -> None:
        calls.append(batch_sizes)
        real_warm_up(self, runs, batch_sizes, **kwargs)

    monkeypatch.setattr(OnnxModel, "warm_up", recording_warm_up)
    caplog.set_level(logging.INFO, logger="app.runtime")
    settings = service_settings(served_model_path, max_batch_size=configured)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)

    assert calls == [warmed]
    source = "configured" if configured is not None else "the CPU default"
    expected = (
        f"micro-batching: up to {warmed[-1]} images per run ({source}), batch timeout 0 ms, admission limit 256 images"
    )
    assert expected in caplog.messages
