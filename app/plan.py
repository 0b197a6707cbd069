"""How inference uses the machine: concurrent runs, threads per run, the lone-request session, decode threads
and the batch cap, by the device that actually runs the model. Logged at startup and shown in /health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.config import CPU_MAX_BATCH_SIZE, GPU_INFERENCE_INSTANCES, GPU_MAX_BATCH_SIZE, Settings
from app.cpus import usable_cpus


@dataclass(frozen=True)
class InferencePlan:
    device: Literal["CPU", "GPU"]
    usable_cpus: int
    instances: int
    intra_op_threads: int
    solo_threads: int | None
    decode_threads: int
    # The inference threads also decode (they are then the `decode_threads`).
    decode_on_inference_threads: bool
    max_batch_size: int

    def describe(self) -> str:
        solo = f"a lone request gets {self.solo_threads} threads" if self.solo_threads else "no solo session"
        threads = self.intra_op_threads or "onnxruntime's choice of"
        decoding = (
            "the inference threads decode between their batches"
            if self.decode_on_inference_threads
            else f"{self.decode_threads} decode threads"
        )
        return (
            f"inference plan ({self.device}, {self.usable_cpus} usable CPUs): {self.instances} concurrent runs "
            f"of {threads} threads each, {solo}; {decoding}; batches up to {self.max_batch_size} images"
        )


def max_batch_size(settings: Settings, *, on_gpu: bool) -> int:
    """The micro-batch cap: the configured one, else the default for the device that runs the model."""
    if settings.max_batch_size is not None:
        return settings.max_batch_size
    return GPU_MAX_BATCH_SIZE if on_gpu else CPU_MAX_BATCH_SIZE


def inference_instances(settings: Settings, *, on_gpu: bool, cpus: int) -> int:
    """Runs kept in flight at once: the configured count, else one per usable CPU, or a few per GPU."""
    if settings.inference_instances is not None:
        return settings.inference_instances
    return GPU_INFERENCE_INSTANCES if on_gpu else cpus


def solo_threads(settings: Settings, *, on_gpu: bool, cpus: int) -> int | None:
    """Threads for the lone-request session, or None when it would add nothing (GPU, or runs already use
    every CPU) or is switched off."""
    if not settings.solo_session or on_gpu or not 0 < settings.intra_op_threads < cpus:
        return None
    return cpus


def decode_on_inference_threads(settings: Settings, *, on_gpu: bool, instances: int, cpus: int) -> bool:
    """Whether the inference threads decode too: on the CPU when they are one 1-thread run per usable CPU, so each
    core alternates decoding and running like the in-process ceiling. A GPU run leaves its thread mostly waiting,
    and fewer or wider runs would leave decoding fewer threads than cores."""
    return settings.decode_on_inference_threads and not on_gpu and settings.intra_op_threads == 1 and instances >= cpus


def inference_plan(settings: Settings, *, on_gpu: bool, solo: int | None, cpus: int | None = None) -> InferencePlan:
    """The plan for `settings` on this device; `solo` is what the loaded model actually has."""
    cpus = cpus or usable_cpus()
    instances = inference_instances(settings, on_gpu=on_gpu, cpus=cpus)
    shared = decode_on_inference_threads(settings, on_gpu=on_gpu, instances=instances, cpus=cpus)
    return InferencePlan(
        device="GPU" if on_gpu else "CPU",
        usable_cpus=cpus,
        instances=instances,
        intra_op_threads=settings.intra_op_threads,
        solo_threads=solo,
        decode_threads=instances if shared else settings.decode_threads,
        decode_on_inference_threads=shared,
        max_batch_size=max_batch_size(settings, on_gpu=on_gpu),
    )
