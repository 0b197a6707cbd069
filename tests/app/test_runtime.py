"""The runtime's device-dependent defaults: the micro-batch cap, the shapes it warms up, the inference plan."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.cpus import usable_cpus
from app.inference import OnnxModel, ProviderReport
from app.main import create_app
from app.plan import max_batch_size
from tests.app.service_support import service_settings, wait_until_ready


@pytest.mark.parametrize(
    ("configured", "on_gpu", "expected"),
    [(None, False, 16), (None, True, 64), (7, False, 7), (7, True, 7)],  # 16 and 64: docs/configuration.md
)
def test_max_batch_size_is_the_configured_one_else_the_devices_default(
    configured: int | None, on_gpu: bool, expected: int, served_model_path: Path
) -> None:
    settings = service_settings(served_model_path, max_batch_size=configured)
    assert max_batch_size(settings, on_gpu=on_gpu) == expected


@pytest.mark.parametrize(
    ("configured", "on_gpu", "warmed", "source"),
    [
        (None, False, (1, 16), "the CPU default"),
        (None, True, (1, 64), "the GPU default"),
        (1, True, (1,), "configured"),
        (5, False, (1, 5), "configured"),
    ],
)
def test_warm_up_runs_single_images_and_full_batches(
    configured: int | None,
    on_gpu: bool,
    warmed: tuple[int, ...],
    source: str,
    served_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[int, ...]] = []

    def recording_warm_up(self: OnnxModel, runs: int, batch_sizes: tuple[int, ...] = (1,)) -> None:
        calls.append(batch_sizes)

    monkeypatch.setattr(OnnxModel, "warm_up", recording_warm_up)
    # The CPU session stands in for a GPU one: only the device the runtime sees matters here.
    monkeypatch.setattr(ProviderReport, "on_gpu", property(lambda report: on_gpu))
    caplog.set_level(logging.INFO, logger="app.runtime")
    settings = service_settings(served_model_path, max_batch_size=configured)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)

    assert calls == [warmed]
    expected = (
        f"micro-batching: up to {warmed[-1]} images per run ({source}), batch timeout 0 ms, admission limit 256 images"
    )
    assert expected in caplog.messages


@pytest.mark.parametrize(
    ("on_gpu", "instances", "device"),
    [(False, None, "CPU"), (True, None, "GPU"), (True, 3, "GPU"), (False, 1, "CPU")],
)
def test_the_inference_plan_is_logged_at_startup_and_shown_in_health(
    on_gpu: bool,
    instances: int | None,
    device: str,
    served_model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A fake provider report makes the CPU session stand in for a GPU one: the plan is tested on any machine.
    monkeypatch.setattr(ProviderReport, "on_gpu", property(lambda report: on_gpu))
    caplog.set_level(logging.INFO, logger="app.runtime")
    cpus = usable_cpus()
    settings = service_settings(served_model_path, inference_instances=instances, solo_session=True)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        plan = client.get("/health").json()["inference"]

    expected_instances = instances or (2 if on_gpu else cpus)
    threads = max(1, cpus // (instances or cpus))
    solo = cpus if not on_gpu and threads < cpus else None
    assert plan == {
        "device": device,
        "usable_cpus": cpus,
        "instances": expected_instances,
        "intra_op_threads": threads,
        "solo_threads": solo,
        "decode_threads": 2,
        "max_batch_size": 64 if on_gpu else 16,
    }
    lone = f"a lone request gets {solo} threads" if solo else "no solo session"
    assert (
        f"inference plan ({device}, {cpus} usable CPUs): {expected_instances} concurrent runs of {threads} threads "
        f"each, {lone}; 2 decode threads; batches up to {plan['max_batch_size']} images"
    ) in caplog.messages
