"""mkdocs hook: the `ALEXNET_*` table in docs/configuration.md, generated from `app.config.Settings` at build time.

Names, types and defaults come from the model itself, so they cannot drift; the meanings are written here, and
tests/docs/test_docs.py fails when a field of `Settings` has none (or one is left here for a field that is gone).
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # build this checkout's docs, whatever the venv has installed
    sys.path.insert(0, str(REPO_ROOT))

from pydantic.fields import FieldInfo  # noqa: E402

from app.config import (  # noqa: E402
    CPU_MAX_BATCH_SIZE,
    GPU_INFERENCE_INSTANCES,
    GPU_MAX_BATCH_SIZE,
    Settings,
)

MARKER = "<!-- settings-table -->"
ENV_PREFIX = "ALEXNET_"

# Defaults computed when the server starts, described rather than shown as this build machine's values.
COMPUTED_DEFAULTS = {
    "inference_instances": f"one per usable CPU on CPU, `{GPU_INFERENCE_INSTANCES}` on GPU",
    "intra_op_threads": "the usable CPUs divided among the instances (`1` by default on CPU)",
    "decode_threads": "the usable CPUs",
    "max_batch_size": f"`{CPU_MAX_BATCH_SIZE}` on CPU, `{GPU_MAX_BATCH_SIZE}` on GPU",
    "log_format": "`plain` at a terminal, `json` otherwise",
}

MEANINGS = {
    "host": "address to listen on (`0.0.0.0` in containers)",
    "port": "port to listen on",
    "log_level": "log level; at `debug`, onnxruntime's own messages from provider probing are shown too",
    "log_format": "`json` (one object per line) or `plain` (time, level, message, request ID)",
    "model_path": "the ONNX file to serve",
    "auto_export": "build the model on first start when the file is missing (trained BVLC weights if they can "
    "be had, else a seeded untrained model, labelled so)",
    "weights_cache_dir": "where downloaded weights are kept",
    "providers": "onnxruntime execution providers, in priority order (comma-separated)",
    "device_id": "CUDA device",
    "require_cuda": "fail startup instead of falling back to CPU",
    "cudnn_conv_algo_search": "cuDNN convolution algorithm search; `HEURISTIC` avoids an exhaustive search for "
    "every new batch size",
    "cuda_arena_extend_strategy": "how the CUDA memory arena grows",
    "cuda_mem_limit_bytes": "CUDA memory arena limit in bytes (`0`: no limit)",
    "io_binding": "bind input and output buffers explicitly on GPU (saves an output allocation and copy per run)",
    "tensorrt_cache_dir": "where TensorRT engines are cached (with `TensorrtExecutionProvider`)",
    "require_trained": "fail startup if the model's weights are untrained",
    "fast_jpeg_decode": "decode large JPEGs at reduced scale: faster, not bit-exact "
    "(see [Preprocessing](preprocessing.md))",
    "inference_instances": "batches that may run on the model at once, sharing one session (Triton's model "
    "instances); the startup log and `/health` show the plan (see [Performance](performance.md))",
    "intra_op_threads": "threads inside each run (`0`: onnxruntime's choice)",
    "solo_session": "on CPU, a request alone on the machine (no other image decoding, queued or running) runs on a "
    "second session with every usable CPU (best "
    "single-image latency, for a second copy of the weights: about 250 MB for AlexNet)",
    "intra_op_spinning": "let onnxruntime's threads busy-wait between runs (only with cores dedicated to inference)",
    "image_block_cache_bytes": "freed image memory Pillow keeps for the next decode (rounded down to its 16 MiB "
    "blocks), so a large photo does not fault in fresh pages (~25 ms of CPU for a 12 MP photo); `0` turns it off",
    "decode_threads": "threads decoding and preprocessing images, when the inference threads do not decode",
    "decode_on_inference_threads": "on CPU with one 1-thread run per usable CPU (the default plan), decode uploads "
    "on the inference threads, between their batches, instead of on `ALEXNET_DECODE_THREADS` threads of their own: "
    "a decode then never preempts a running batch. `GET /health` shows which",
    "warmup_runs": "inference runs before reporting ready",
    "max_body_bytes": "largest request body (checked while streaming)",
    "max_image_pixels": "largest image, in pixels (checked from the header, before decoding)",
    "max_batch_images": "most images in one `/v1/predict/batch` request",
    "max_batch_size": "most images in one micro-batch (`1` turns batching off); unset, it follows the provider "
    "that actually runs the model, and the startup log says which",
    "batch_timeout_ms": "how long a batch waits for more images once it has one (`0`: none; requests that queue "
    "while a batch runs still share the next one)",
    "busy_batch_delay_ms": "while another batch runs, the longest an idle model instance waits for its share of "
    "the images the load keeps in flight (the peak of the last 0.5-1 s; a lone request never waits)",
    "max_queue_size": "images in flight (decoding, queued or running) before new requests get 503 at once",
    "request_timeout_s": "per-request deadline (504 after it)",
    "stuck_run_deadlines": "an inference run still going after this many request deadlines fails `/health/live` (503)",
    "graceful_shutdown_s": "after the listener closes, how long to wait for in-flight requests",
    "drain_delay_s": "after SIGTERM, keep serving this long while `/health/ready` says 503, so load balancers "
    "stop routing here first",
    "api_key": "when set, prediction routes need `Authorization: Bearer <key>`; health stays open",
    "cors_origins": "origins browsers may call the API from (comma-separated); CORS is closed without them",
}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(argument) for argument in arguments if argument is not type(None))
    if origin is list:
        return "comma-separated list"
    if origin is typing.Annotated:
        return _type_name(arguments[0])
    return {"SecretStr": "secret"}.get(getattr(annotation, "__name__", ""), getattr(annotation, "__name__", "?"))


def _default(name: str, field: FieldInfo) -> str:
    if name in COMPUTED_DEFAULTS:
        return COMPUTED_DEFAULTS[name]
    if field.default_factory is not None:
        return "computed at startup"
    value = field.default
    if value is None or value == []:
        return "unset"
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, Path):
        value = str(value).replace(str(Path.home()), "~", 1)
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table: one row per field of `Settings`, in declaration order."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = MEANINGS.get(name) or field.description or "(not yet described)"
        rows.append(f"| `{env_name(name)}` | {_type_name(field.annotation)} | {_default(name, field)} | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
