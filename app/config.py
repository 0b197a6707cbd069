"""The one place that reads the environment: every knob is an `ALEXNET_*` variable."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.cpus import usable_cpus

CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
MAX_TOP_K = 1000
DEFAULT_TOP_K = 5
# Occlusion explanations: cells per side. 14×14 = 196 copies plus the original stay under the default
# admission limit (max_queue_size 256).
DEFAULT_EXPLAIN_GRID = 7
MIN_EXPLAIN_GRID = 2
MAX_EXPLAIN_GRID = 14
# Micro-batch caps when ALEXNET_MAX_BATCH_SIZE is unset. On CPU the per-image cost stops falling near batch 8-16
# (0.67x of batch 1 at 8, 0.63x at 32), so larger batches only add latency. A GPU's cost per batch grows far
# slower than the batch (not yet measured here: bench/gpu_check.sh times batch 1/8/64/256).
CPU_MAX_BATCH_SIZE = 16
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024
# A multipart body is charged twice (app/limits.py), and the largest one must always fit an idle budget.
MULTIPART_CHARGE_FACTOR = 2
GPU_MAX_BATCH_SIZE = 64
# Concurrent runs on a GPU when ALEXNET_INFERENCE_INSTANCES is unset: two let one batch's host-device copies
# overlap the other's kernels (as Triton's default of instances per GPU does); not yet measured here.
GPU_INFERENCE_INSTANCES = 2


def _default_decode_threads() -> int:
    # Every thread default counts the CPUs this process may use (affinity, cgroup quota), not the host's.
    return usable_cpus()


def _default_intra_op_threads(fields: dict[str, Any]) -> int:
    # The usable CPUs shared among the concurrent runs: 1 thread each with the CPU default of one run per CPU.
    # Two 1-thread runs on one session beat one 2-thread run on 2 cores (docs/performance.md, Model instances).
    cores = usable_cpus()
    return max(1, cores // (fields.get("inference_instances") or cores))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALEXNET_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Unset: readable lines when stderr is a terminal (`make serve`), JSON otherwise (containers, log shippers).
    log_format: Literal["json", "plain"] | None = None

    model_path: Path = Path("model/alexnet.onnx")
    # Build the model on first start when `model_path` is missing (trained BVLC weights if they can be had).
    auto_export: bool = True
    weights_cache_dir: Path = Path.home() / ".cache" / "alexnet-serve"

    # Comma-separated in the environment, e.g. "CUDAExecutionProvider,CPUExecutionProvider".
    providers: Annotated[list[str], NoDecode] = [CUDA_PROVIDER, CPU_PROVIDER]
    device_id: int = Field(default=0, ge=0)
    require_cuda: bool = False
    # CUDA EP tuning. HEURISTIC avoids an exhaustive cuDNN search for every new batch size.
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    cuda_mem_limit_bytes: int = Field(default=0, ge=0, description="0 means no limit")
    # Bind input and output buffers explicitly (saves an output allocation and copy per run on GPU).
    io_binding: bool = True
    tensorrt_cache_dir: Path = Path.home() / ".cache" / "alexnet-serve" / "tensorrt"
    require_trained: bool = False
    # Decode large JPEGs at reduced scale (Pillow draft mode): much faster, but no longer bit-exact with the
    # reference preprocessing (see docs/preprocessing.md). Off by default: correctness first.
    fast_jpeg_decode: bool = False
    # Concurrent runs on the model (Triton's "model instances"), sharing one session. None: one per usable CPU
    # on the CPU, GPU_INFERENCE_INSTANCES on a GPU. Declared before the thread count, whose default uses it.
    inference_instances: int | None = Field(default=None, ge=1)
    # Threads inside each run. Default: the usable CPUs divided among the instances. 0 lets onnxruntime pick.
    intra_op_threads: int = Field(default_factory=_default_intra_op_threads, ge=0)
    # On the CPU, a lone request (no other image decoding, queued or running) runs on a second session with every
    # usable CPU: the machine's best single-image latency, for a second copy of the weights (about 250 MB).
    solo_session: bool = True
    # onnxruntime's intra-op threads busy-wait between runs by default; on a CPU shared with the decode
    # threads that burns the cores decoding needs. Worth enabling only with dedicated inference cores.
    intra_op_spinning: bool = False
    decode_threads: int = Field(default_factory=_default_decode_threads, ge=1)
    # With one 1-thread run per CPU, uploads are decoded on the inference threads instead of `decode_threads`
    # threads of their own: a thread decodes only between its batches, as the in-process ceiling does, so a
    # decode never preempts a running batch (photos at c=16: the machine 191-193% -> 195-196% busy).
    decode_on_inference_threads: bool = True
    # Freed image memory Pillow keeps for the next decode. Large images are served by fresh mmaps (so RSS does not
    # creep), whose pages each new 12 MP photo faulted in again: ~25 ms of CPU. Bounded; 0 turns it off.
    image_block_cache_bytes: int = Field(default=96 * 1024 * 1024, ge=0)
    warmup_runs: int = Field(default=2, ge=0)

    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    # Bytes that request bodies and decoding images may hold at once; bodies beyond it get 503 unread. The
    # default fits the Kubernetes limit (docs/reliability.md, Memory, has the formula and the arithmetic).
    memory_budget_bytes: int = Field(
        default=DEFAULT_MEMORY_BUDGET_BYTES,
        ge=1,
        description="bytes request bodies (multipart twice) and decoding images may hold at once; "
        "a body that does not fit gets 503 with Retry-After, unread",
    )
    # The whole body must arrive within this, else 408: slow senders cannot hold the budget for ever.
    body_read_timeout_s: float = Field(
        default=60.0, gt=0, description="seconds the whole request body may take to arrive (408 after it)"
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_batch_images: int = Field(default=32, ge=1)

    # Dynamic micro-batching: requests queued while a batch runs share the next session.run; a positive
    # `batch_timeout_ms` also waits that long for more. 0 by default: a lone request never waits, and under
    # load batches fill anyway (measured: c=1 queue wait 2.3 -> 0.03 ms, c=16 throughput unchanged).
    # None: CPU_MAX_BATCH_SIZE or GPU_MAX_BATCH_SIZE, by the provider that actually runs the model.
    max_batch_size: int | None = Field(default=None, ge=1)
    batch_timeout_ms: float = Field(default=0.0, ge=0)
    # While another batch runs (the machine is busy), an idle model instance waits for its share of the images the
    # load keeps in flight, this long at most: on CPU a batch of 1 costs ~51 ms of CPU per image against ~28 at 8,
    # so under load small batches halve throughput (docs/performance.md). A lone request never waits.
    busy_batch_delay_ms: float = Field(default=100.0, ge=0)
    max_queue_size: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # An inference run still going after this many request deadlines is stuck (a hung GPU, a deadlocked
    # driver): /health/live then answers 503 so the orchestrator restarts the process.
    stuck_run_deadlines: float = Field(default=4.0, gt=0)
    graceful_shutdown_s: float = Field(default=20.0, ge=0)
    # After SIGTERM, keep serving while reporting not-ready, so load balancers stop routing here first.
    drain_delay_s: float = Field(default=0.0, ge=0)

    api_key: SecretStr | None = None
    # Browsers may call the API from these origins (comma-separated); none by default: CORS stays closed.
    cors_origins: Annotated[list[str], NoDecode] = []

    @field_validator("providers", "cors_origins", mode="before")
    @classmethod
    def _split_comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key")
    @classmethod
    def _no_empty_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # compose's `${API_KEY}` of an unset variable is "", and "" matched a missing Authorization header.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "ALEXNET_API_KEY is set but empty; set a key, or unset the variable to run without authentication"
            )
        return value

    @model_validator(mode="after")
    def _budget_holds_the_largest_body(self) -> Settings:
        if self.memory_budget_bytes < MULTIPART_CHARGE_FACTOR * self.max_body_bytes:
            raise ValueError(
                f"ALEXNET_MEMORY_BUDGET_BYTES ({self.memory_budget_bytes}) must be at least "
                f"{MULTIPART_CHARGE_FACTOR} x ALEXNET_MAX_BODY_BYTES ({self.max_body_bytes}), "
                "or the largest allowed upload could never be admitted"
            )
        return self

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is required")
        return value


@cache
def get_settings() -> Settings:
    return Settings()
