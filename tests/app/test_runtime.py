"""The runtime's device-dependent defaults: the micro-batch cap, the shapes it warms up, the inference plan."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from starlette.testclient import TestClient

from app import runtime as runtime_module
from app.cpus import usable_cpus
from app.inference import OnnxModel, ProviderReport, load_model
from app.main import create_app
from app.plan import max_batch_size
from app.runtime import Runtime
from tests.app.failing_warm_up import WARM_UP_ERROR, failing_warm_up
from tests.app.sample_images import scene_bytes
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
    calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []

    def recording_warm_up(
        self: OnnxModel,
        runs: int,
        batch_sizes: tuple[int, ...] = (1,),
        solo_batch_sizes: tuple[int, ...] | None = None,
    ) -> None:
        calls.append((batch_sizes, solo_batch_sizes))

    monkeypatch.setattr(OnnxModel, "warm_up", recording_warm_up)
    # The CPU session stands in for a GPU one: only the device the runtime sees matters here.
    monkeypatch.setattr(ProviderReport, "on_gpu", property(lambda report: on_gpu))
    caplog.set_level(logging.INFO, logger="app.runtime")
    settings = service_settings(served_model_path, max_batch_size=configured)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)

    # Once per instance, at the same time: the arena then holds what concurrent runs need before "ready". The solo
    # session (if any) once, and with several instances at batch 1 only: it is never given more then.
    instances = 2 if on_gpu else usable_cpus()
    solo_sizes = (1,) if instances > 1 else warmed
    assert sorted(calls, key=lambda call: call[1] == ()) == [(warmed, solo_sizes)] + [(warmed, ())] * (instances - 1)
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
    shared = not on_gpu and threads == 1 and expected_instances >= cpus
    assert plan == {
        "device": device,
        "usable_cpus": cpus,
        "instances": expected_instances,
        "intra_op_threads": threads,
        "solo_threads": solo,
        "decode_threads": expected_instances if shared else 2,
        "decode_on_inference_threads": shared,
        "max_batch_size": 64 if on_gpu else 16,
    }
    lone = f"a lone request gets {solo} threads" if solo else "no solo session"
    decoding = "the inference threads decode between their batches" if shared else "2 decode threads"
    assert (
        f"inference plan ({device}, {cpus} usable CPUs): {expected_instances} concurrent runs of {threads} threads "
        f"each, {lone}; {decoding}; batches up to {plan['max_batch_size']} images"
    ) in caplog.messages


@pytest.mark.parametrize(("shared", "decoding_thread"), [(True, "inference_"), (False, "decode_")])
def test_uploads_are_decoded_on_the_inference_threads_when_the_plan_says_so(
    shared: bool, decoding_thread: str, served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, set[str]] = {"decode": set(), "run": set()}
    prepare, run = runtime_module.prepare_image, OnnxModel.run

    def recording_prepare(*args: Any, **kwargs: Any) -> Any:
        threads["decode"].add(threading.current_thread().name.rstrip("0123456789"))
        return prepare(*args, **kwargs)

    def recording_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        threads["run"].add(threading.current_thread().name.rstrip("0123456789"))
        return run(self, batch)

    monkeypatch.setattr(runtime_module, "prepare_image", recording_prepare)
    monkeypatch.setattr(OnnxModel, "run", recording_run)
    settings = service_settings(
        served_model_path, inference_instances=usable_cpus(), solo_session=False, decode_on_inference_threads=shared
    )
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        assert client.get("/health").json()["inference"]["decode_on_inference_threads"] is shared
        threads["run"].clear()  # warm-up runs
        response = client.post("/v1/predict", content=scene_bytes(320, 240), headers={"Content-Type": "image/jpeg"})

    assert response.status_code == 200
    assert threads == {"decode": {decoding_thread}, "run": {"inference_"}}


def test_a_lone_request_runs_on_the_solo_session_and_its_answer_is_the_shared_sessions(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if usable_cpus() < 2:
        pytest.skip("one usable CPU: there is no solo session to use")
    sessions: list[str] = []
    shared_run, solo_run = OnnxModel.run, OnnxModel.run_solo

    def recording_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        sessions.append("shared")
        return shared_run(self, batch)

    def recording_solo_run(self: OnnxModel, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        sessions.append("solo")
        return solo_run(self, batch)

    monkeypatch.setattr(OnnxModel, "run", recording_run)
    monkeypatch.setattr(OnnxModel, "run_solo", recording_solo_run)
    settings = service_settings(served_model_path, solo_session=True, warmup_runs=0)
    body = scene_bytes(320, 240)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        lone = client.post("/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
        assert sessions == ["solo"]
        with TestClient(create_app(service_settings(served_model_path, warmup_runs=0))) as without_solo:
            wait_until_ready(without_solo)
            shared = without_solo.post("/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})

    assert (lone.status_code, shared.status_code) == (200, 200)
    assert sessions == ["solo", "shared"]
    for ours, theirs in zip(lone.json()["top5"], shared.json()["top5"], strict=True):
        assert ours["index"] == theirs["index"]
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-6)


def test_a_failed_warm_up_releases_the_threads_and_asks_to_exit(
    served_model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(OnnxModel, "warm_up", failing_warm_up)
    settings = service_settings(served_model_path)
    model = load_model(settings)
    fatal = threading.Event()

    async def fail_to_warm_up() -> tuple[Runtime, set[str]]:
        runtime = Runtime(settings, model, fatal=fatal)
        await runtime.start()
        for _ in range(1000):
            if fatal.is_set():
                break
            await asyncio.sleep(0.01)
        tasks = {task.get_name() for task in asyncio.all_tasks()}
        await runtime.stop()
        return runtime, tasks

    with caplog.at_level(logging.ERROR, logger="app.runtime"):
        runtime, tasks = asyncio.run(fail_to_warm_up())

    assert fatal.is_set()
    assert runtime.failure == f"warm-up failed, so this process cannot serve: RuntimeError: {WARM_UP_ERROR}"
    assert runtime.liveness_problem() == runtime.failure  # /health/live: 503 for the orchestrator too
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [(record.name, record.getMessage()) for record in errors] == [
        ("app.runtime", f"{runtime.failure}; exiting so that the process is restarted")
    ]
    assert errors[0].exc_info is not None  # the cause's traceback
    assert not any(name.startswith("micro-batcher") for name in tasks)
    with pytest.raises(RuntimeError, match="after shutdown"):
        runtime._decode_pool.submit(int)  # released, not merely idle
