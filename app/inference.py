"""The one owner of the onnxruntime session: load, check providers, warm up, run."""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.config import CPU_PROVIDER, CUDA_PROVIDER, TENSORRT_PROVIDER, Settings
from app.cpus import usable_cpus
from app.errors import ModelLoadError
from app.plan import solo_threads
from model.metadata import INPUT_NAME, NUM_CLASSES, OUTPUT_NAME, ModelCard, ModelCardError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

UNTRAINED_WARNING = "the model has random, untrained weights: its predictions are noise"
CPU_FALLBACK_WARNING = "CUDA was requested but is not active: inference runs on the CPU"
GPU_PROVIDERS = frozenset({CUDA_PROVIDER, TENSORRT_PROVIDER})
# onnxruntime lists its TensorRT provider as available whether or not TensorRT itself is installed.
TENSORRT_LIBRARY = "libnvinfer.so.10"
# onnxruntime's C++ logger severities: 2 (warning) is its default, 4 (fatal) keeps it silent.
ORT_DEFAULT_LOG_SEVERITY = 2
ORT_SILENT_LOG_SEVERITY = 4
# ort.preload_dlls prints one such line per library it cannot load, instead of raising.
_PRELOAD_FAILURE = re.compile(r"^Failed to load (\S+?): ", re.MULTILINE)


@dataclass(frozen=True)
class ProviderReport:
    requested: list[str]
    active: list[str]
    cuda_fallback_reason: str | None

    @property
    def on_gpu(self) -> bool:
        """Whether the first active provider (the one onnxruntime gives the graph to) is not the CPU's."""
        return bool(self.active) and self.active[0] != CPU_PROVIDER


class OnnxModel:
    """An onnxruntime session plus the model card read from the file it was built from.

    `run` is thread-safe: concurrent runs share the session. An optional solo session (the same model with more
    intra-op threads) serves `run_solo`, for batches that have the machine to themselves.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        card: ModelCard,
        providers: ProviderReport,
        *,
        io_binding: bool = False,
        solo_session: ort.InferenceSession | None = None,
        solo_threads: int | None = None,
    ) -> None:
        self._session = session
        self._solo_session = solo_session
        self.solo_threads = solo_threads if solo_session is not None else None
        self._io_binding = io_binding
        self.card = card
        self.providers = providers
        self.input_shape: list[int | str] = [
            dim if isinstance(dim, int) else str(dim) for dim in session.get_inputs()[0].shape
        ]

    @property
    def warnings(self) -> list[str]:
        found = []
        if not self.card.trained:
            found.append(UNTRAINED_WARNING)
        if self.providers.cuda_fallback_reason is not None:
            found.append(CPU_FALLBACK_WARNING)
        return found

    def run(self, batch: FloatArray) -> FloatArray:
        """Probabilities [N, 1000] for a preprocessed batch [N, 3, S, S]. Blocking: call off the event loop."""
        return self._run_on(self._session, batch)

    def run_solo(self, batch: FloatArray) -> FloatArray:
        """As `run`, on the solo session when there is one: for a batch alone on the machine."""
        return self._run_on(self._solo_session or self._session, batch)

    def _run_on(self, session: ort.InferenceSession, batch: FloatArray) -> FloatArray:
        if self._io_binding:
            binding = session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, batch)
            binding.bind_output(OUTPUT_NAME, "cpu")
            session.run_with_iobinding(binding)
            bound: FloatArray = binding.copy_outputs_to_cpu()[0]
            return bound
        outputs = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        probabilities: FloatArray = outputs[0]
        return probabilities

    def warm_up(
        self, runs: int, batch_sizes: tuple[int, ...] = (1,), solo_batch_sizes: tuple[int, ...] | None = None
    ) -> None:
        """Run dummy batches so the first real requests do not pay for allocation and kernel selection.

        The solo session, if any, is warmed at `solo_batch_sizes` (default: `batch_sizes`; empty: not at all).
        """
        size = self.card.preprocessing.input_size
        plan = [(self._session, batch_size) for batch_size in batch_sizes]
        if self._solo_session is not None:
            solo_sizes = batch_sizes if solo_batch_sizes is None else solo_batch_sizes
            plan += [(self._solo_session, batch_size) for batch_size in solo_sizes]
        for (session, batch_size), _ in itertools.product(plan, range(runs)):
            self._run_on(session, np.zeros((batch_size, 3, size, size), dtype=np.float32))


def load_model(settings: Settings) -> OnnxModel:
    """Open `settings.model_path`, honouring REQUIRE_CUDA / REQUIRE_TRAINED. Raises `ModelLoadError`."""
    path = settings.model_path
    if not path.is_file():
        raise ModelLoadError(
            f"model file {path} does not exist; build it with `python -m model export` or set ALEXNET_MODEL_PATH"
        )
    wants_gpu = not GPU_PROVIDERS.isdisjoint(settings.providers)
    with _onnxruntime_quiet(settings.log_level):
        # TensorRT runs on the CUDA libraries too, so asking for it alone still preloads them.
        unloaded = _preload_cuda_libraries() if wants_gpu else []
        session = _open_session(path, settings)
    card = _read_card(session, path)
    _check_signature(session, card, path)

    active = list(session.get_providers())
    tensorrt_missing = TENSORRT_PROVIDER in settings.providers and not _tensorrt_installed()
    if tensorrt_missing:
        logger.warning("TensorRT was requested but %s is not installed: TensorRT is skipped", TENSORRT_LIBRARY)
    falls_back = wants_gpu and GPU_PROVIDERS.isdisjoint(active)
    reason = _cuda_fallback_reason(settings.providers, unloaded, tensorrt_missing) if falls_back else None
    report = ProviderReport(requested=list(settings.providers), active=active, cuda_fallback_reason=reason)
    if reason is not None:
        if settings.require_cuda:
            raise ModelLoadError(f"ALEXNET_REQUIRE_CUDA is set but CUDA is not active: {reason}")
        logger.warning("%s (%s); active providers: %s", CPU_FALLBACK_WARNING, reason, ", ".join(active))
    else:
        if unloaded:
            logger.warning("these CUDA libraries did not preload: %s", ", ".join(unloaded))
        logger.info("onnxruntime providers active: %s", ", ".join(active))

    if not card.trained:
        if settings.require_trained:
            raise ModelLoadError(
                f"ALEXNET_REQUIRE_TRAINED is set but {path} has untrained ({card.weights}) weights; "
                "export it with trained weights: python -m model export --weights bvlc"
            )
        logger.warning("UNTRAINED MODEL: %s (%s, weights=%s)", UNTRAINED_WARNING, path, card.weights)
    logger.info(
        "model %s loaded from %s: weights=%s sha256=%s trained=%s",
        card.architecture,
        path,
        card.weights,
        card.weights_sha256[:16],
        card.trained,
    )
    # On the CPU provider binding buys nothing; on CUDA it saves an output allocation and copy per run.
    use_binding = settings.io_binding and active[0] != CPU_PROVIDER
    threads = solo_threads(settings, on_gpu=report.on_gpu, cpus=usable_cpus())
    solo = None
    if threads is not None:
        # CPU only (the plan has no solo session on a GPU): nothing to probe again.
        solo = _open_session(path, settings.model_copy(update={"providers": [CPU_PROVIDER]}), intra_op_threads=threads)
        logger.info("solo session open: a request alone on the model runs with %d intra-op threads", threads)
    return OnnxModel(session, card, report, io_binding=use_binding, solo_session=solo, solo_threads=threads)


def session_options(settings: Settings, *, intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Options for a session with `settings`' threads, or `intra_op_threads` when given."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.intra_op_spinning else "0")
    # Each run is sequential inside; parallelism comes from intra-op threads and concurrent runs, not graph branches.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Memory patterns are planned and kept per input shape; dynamic batching produces every batch size from
    # 1 to max_batch_size, so they would grow RSS for each new size long after warm-up.
    options.enable_mem_pattern = False
    return options


def _open_session(path: Path, settings: Settings, *, intra_op_threads: int | None = None) -> ort.InferenceSession:
    options = session_options(settings, intra_op_threads=intra_op_threads)
    providers: list[str | tuple[str, dict[str, Any]]] = []
    for name in settings.providers:
        if name == CUDA_PROVIDER:
            cuda_options: dict[str, Any] = {
                "device_id": settings.device_id,
                "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                "arena_extend_strategy": settings.cuda_arena_extend_strategy,
            }
            if settings.cuda_mem_limit_bytes:
                cuda_options["gpu_mem_limit"] = settings.cuda_mem_limit_bytes
            providers.append((name, cuda_options))
        elif name == TENSORRT_PROVIDER:
            tensorrt_options = {
                "device_id": settings.device_id,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(settings.tensorrt_cache_dir),
            }
            providers.append((name, tensorrt_options))
        else:
            providers.append(name)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped exceptions for bad files and providers
        raise ModelLoadError(f"onnxruntime cannot load {path}: {error}") from error


def _read_card(session: ort.InferenceSession, path: Path) -> ModelCard:
    try:
        return ModelCard.from_props(dict(session.get_modelmeta().custom_metadata_map))
    except ModelCardError as error:
        raise ModelLoadError(f"{path}: {error}") from error


def _check_signature(session: ort.InferenceSession, card: ModelCard, path: Path) -> None:
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    size = card.preprocessing.input_size
    if INPUT_NAME not in inputs or list(inputs[INPUT_NAME][1:]) != [3, size, size]:
        raise ModelLoadError(f"{path}: expected input {INPUT_NAME!r} [N,3,{size},{size}], found {inputs}")
    if OUTPUT_NAME not in outputs or outputs[OUTPUT_NAME][-1] != NUM_CLASSES:
        raise ModelLoadError(f"{path}: expected output {OUTPUT_NAME!r} [N,{NUM_CLASSES}], found {outputs}")


@contextlib.contextmanager
def _onnxruntime_quiet(log_level: str) -> Iterator[None]:
    """Silence onnxruntime's own logger while providers are probed: an unusable GPU is explained by our one
    warning, not by its raw C++ errors. At debug level its messages stay."""
    if log_level == "debug":
        yield
        return
    ort.set_default_logger_severity(ORT_SILENT_LOG_SEVERITY)
    try:
        yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def _preload_cuda_libraries() -> list[str]:
    """Load the CUDA/cuDNN libraries (the `cuda` extra installs them as NVIDIA wheels; onnxruntime finds them only
    once preloaded). Returns the names of those that did not load."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            ort.preload_dlls(directory="")
    except Exception as error:  # onnxruntime raises untyped errors here; the fallback reason carries it
        return [f"(preload failed: {error})"]
    logger.debug("onnxruntime's CUDA preload said: %s", printed.getvalue().strip() or "nothing")
    return [Path(name).name for name in _PRELOAD_FAILURE.findall(printed.getvalue())]


def _tensorrt_installed() -> bool:
    try:
        ctypes.CDLL(TENSORRT_LIBRARY)
    except OSError:
        return False
    return True


def _cuda_fallback_reason(requested: list[str], unloaded: list[str], tensorrt_missing: bool) -> str:
    """The likely cause, for where it runs: the GPU image has every CUDA library, so there it is the GPU itself."""
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        return f"this onnxruntime build has no CUDA support (available: {available})"
    if unloaded:
        return (
            f"the CUDA libraries {', '.join(unloaded)} did not load: "
            "install them with `pip install 'alexnet-serve[cuda]'`"
        )
    if tensorrt_missing and CUDA_PROVIDER not in requested:
        return f"TensorRT's {TENSORRT_LIBRARY} is not installed and CUDAExecutionProvider was not requested"
    return (
        "the CUDA libraries loaded, but no NVIDIA driver or GPU is visible: "
        "run the container with `--gpus all` and the NVIDIA Container Toolkit, or check `nvidia-smi`"
    )
