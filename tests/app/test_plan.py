"""The inference plan by device: instances, threads per run, the solo session, decode threads, batch cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import CPU_PROVIDER, CUDA_PROVIDER, Settings
from app.plan import InferencePlan, inference_instances, inference_plan, solo_threads


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"model_path": Path("unused.onnx"), "providers": [CUDA_PROVIDER, CPU_PROVIDER]}
    return Settings.model_validate({**values, **overrides})


def test_on_the_cpu_every_usable_cpu_runs_a_one_thread_instance_and_a_lone_batch_gets_them_all() -> None:
    plan = inference_plan(settings(intra_op_threads=1, decode_threads=3), on_gpu=False, solo=8, cpus=8)
    assert plan == InferencePlan(
        device="CPU",
        usable_cpus=8,
        instances=8,
        intra_op_threads=1,
        solo_threads=8,
        decode_threads=8,  # the inference threads, whatever decode_threads says
        decode_on_inference_threads=True,
        max_batch_size=16,
    )
    assert plan.describe() == (
        "inference plan (CPU, 8 usable CPUs): 8 concurrent runs of 1 threads each, a lone request gets 8 threads; "
        "the inference threads decode between their batches; batches up to 16 images"
    )


@pytest.mark.parametrize(
    ("overrides", "on_gpu", "cpus"),
    [
        ({"decode_on_inference_threads": False}, False, 4),
        ({}, True, 4),  # a GPU run leaves its thread waiting: decoding gets threads of its own
        ({"intra_op_threads": 2}, False, 4),  # two runs of two threads: only two threads would decode
        ({"inference_instances": 2}, False, 4),  # fewer runs than CPUs: as above
    ],
)
def test_decoding_has_threads_of_its_own_unless_there_is_a_one_thread_run_per_cpu(
    overrides: dict[str, object], on_gpu: bool, cpus: int
) -> None:
    plan = inference_plan(
        settings(**{"intra_op_threads": 1, "decode_threads": 3, **overrides}), on_gpu=on_gpu, solo=None, cpus=cpus
    )
    assert (plan.decode_on_inference_threads, plan.decode_threads) == (False, 3)
    assert "; 3 decode threads;" in plan.describe()


def test_on_a_gpu_two_instances_overlap_copies_with_compute_and_there_is_no_solo_session() -> None:
    # A fake provider report: only `on_gpu` reaches the plan, so the GPU plan is checked on any machine.
    configured = settings(intra_op_threads=1, decode_threads=4)
    assert solo_threads(configured, on_gpu=True, cpus=4) is None
    plan = inference_plan(configured, on_gpu=True, solo=None, cpus=4)
    assert (plan.device, plan.instances, plan.solo_threads, plan.max_batch_size) == ("GPU", 2, None, 64)
    assert "a lone request" not in plan.describe() and "no solo session" in plan.describe()


@pytest.mark.parametrize("on_gpu", [False, True])
def test_configured_instances_win_on_either_device(on_gpu: bool) -> None:
    assert inference_instances(settings(inference_instances=3), on_gpu=on_gpu, cpus=8) == 3


@pytest.mark.parametrize(
    ("overrides", "cpus", "expected"),
    [
        ({"intra_op_threads": 1}, 4, 4),
        ({"intra_op_threads": 2}, 4, 4),
        ({"intra_op_threads": 4}, 4, None),  # each run already has every CPU
        ({"intra_op_threads": 0}, 4, None),  # onnxruntime's choice: every core already
        ({"intra_op_threads": 1}, 1, None),  # one CPU: nothing to gain
        ({"intra_op_threads": 1, "solo_session": False}, 4, None),
    ],
)
def test_the_solo_session_exists_only_where_it_adds_threads(
    overrides: dict[str, object], cpus: int, expected: int | None
) -> None:
    assert solo_threads(settings(**overrides), on_gpu=False, cpus=cpus) == expected
