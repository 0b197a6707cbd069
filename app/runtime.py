"""What the lifespan builds and the routes use: the model, the decode pool and the batcher, plus readiness."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from app.batching import InferenceResult, MicroBatcher, RecentPeak
from app.budget import MemoryBudget
from app.config import DEFAULT_TOP_K, Settings
from app.errors import (
    DeadlineExceededError,
    InvalidParameterError,
    MemoryBudgetFullError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceError,
)
from app.explain import (
    Explained,
    baseline_fill,
    explanation_response,
    image_as_seen,
    occluded_variants,
    render_overlay,
)
from app.inference import OnnxModel
from app.metrics import Metrics
from app.plan import inference_plan
from app.postprocessing import TOP5, ranked
from app.preprocessing import decoding_bytes, load_image, open_image, preprocess
from app.schemas import Baseline, ClassScore, ExplainResponse, ExplainTimingMs, ModelSummary, PredictResponse, TimingMs
from model.metadata import Preprocessing

logger = logging.getLogger(__name__)

T = TypeVar("T")
# The load's demand is the peak of admitted images over the last 0.5-1 s: longer than a batch of 8 takes on CPU
# (~0.25 s), so a closed loop's whole concurrency is seen; short, so a load that stops is forgotten quickly.
DEMAND_WINDOW_S = 0.5


def prepare_image(
    data: bytes, pre: Preprocessing, settings: Settings, budget: MemoryBudget | None = None
) -> tuple[npt.NDArray[np.float32], float, float]:
    """What the server does to each upload before inference: (tensor [3, S, S], decode ms, preprocess ms).

    The decoded pixels are charged to `budget` from the header's size until only the tensor is left.
    """
    started = time.perf_counter()
    draft_size = pre.resize_size if settings.fast_jpeg_decode else None
    opened = open_image(data, max_pixels=settings.max_image_pixels, draft_size=draft_size)
    with budget.charged(decoding_bytes(opened)) if budget is not None else contextlib.nullcontext():
        decoded = load_image(opened)
        decoded_at = time.perf_counter()
        tensor = preprocess(decoded.image, pre)
        del opened, decoded
    finished = time.perf_counter()
    return tensor, (decoded_at - started) * 1000.0, (finished - decoded_at) * 1000.0


class Runtime:
    def __init__(
        self,
        settings: Settings,
        model: OnnxModel,
        metrics: Metrics | None = None,
        drain: threading.Event | None = None,
        fatal: threading.Event | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics or Metrics()
        self.budget = budget or MemoryBudget(settings.memory_budget_bytes)
        self.started_at = time.monotonic()
        self.plan = inference_plan(settings, on_gpu=model.providers.on_gpu, solo=model.solo_threads)
        self.max_batch_size = self.plan.max_batch_size
        # What a steady load keeps admitted: between two of a client's requests, `_admitted` misses it.
        self._recent_admitted = RecentPeak(DEMAND_WINDOW_S)
        self._batcher = MicroBatcher(
            model.run,
            max_batch_size=self.max_batch_size,
            timeout_ms=settings.batch_timeout_ms,
            max_queue_size=settings.max_queue_size,
            instances=self.plan.instances,
            run_solo=model.run_solo if model.solo_threads else None,
            busy_delay_ms=settings.busy_batch_delay_ms,
            pending=lambda: self._admitted,
            demand=self._recent_admitted.value,
            on_batch=self._observe_batch,
        )
        # Decoding, preprocessing and the other CPU work of requests (v2 parsing, occlusion, overlays).
        self._decode_pool = (
            self._batcher.inference_threads
            if self.plan.decode_on_inference_threads
            else ThreadPoolExecutor(self.plan.decode_threads, thread_name_prefix="decode")
        )
        self._ready = asyncio.Event()
        self._draining = False
        # Set from outside (SIGTERM) to report not-ready while in-flight requests finish.
        self._drain = drain or threading.Event()
        # Set here when the model can no longer serve (warm-up failed): `python -m app` then exits non-zero.
        self._fatal = fatal or threading.Event()
        self.failure: str | None = None
        self._admitted = 0
        self._warm_up_task: asyncio.Task[None] | None = None
        card = model.card
        self.metrics.describe_model(
            name=card.name,
            weights=card.weights,
            trained=card.trained,
            provider=model.providers.active[0],
            sha256=card.weights_sha256,
        )
        self.metrics.track_queue_depth(lambda: self.queue_depth)
        self.metrics.track_readiness(lambda: self.ready)

    @property
    def ready(self) -> bool:
        """What probes see: warmed up, and not draining."""
        return self._accepting and not self._drain.is_set()

    @property
    def _accepting(self) -> bool:
        # During the drain delay predictions are still served: only the probes say "go elsewhere".
        return self._ready.is_set() and not self._draining

    @property
    def queue_depth(self) -> int:
        return self._batcher.depth

    @property
    def runs_started_at(self) -> list[float]:
        """When each inference run now in flight started (time.perf_counter()), oldest first."""
        return self._batcher.runs_started_at

    def liveness_problem(self) -> str | None:
        """Why this process should be restarted (a failed warm-up, a stuck run), or None while it is healthy."""
        if self.failure is not None:
            return self.failure
        started = self.runs_started_at
        limit_s = self.settings.stuck_run_deadlines * self.settings.request_timeout_s
        if started and (running_s := time.perf_counter() - started[0]) > limit_s:
            return (
                f"an inference run has not returned for {running_s:.1f} s, more than "
                f"{self.settings.stuck_run_deadlines:g} request deadlines ({limit_s:g} s); "
                "the model is stuck, restart the process"
            )
        return None

    def model_summary(self) -> ModelSummary:
        card = self.model.card
        return ModelSummary(name=card.name, weights=card.weights, sha256=card.weights_sha256, trained=card.trained)

    async def start(self) -> None:
        """Start the batcher and warm up in the background; ready once warm-up has finished."""
        self._batcher.start()
        device = "GPU" if self.model.providers.on_gpu else "CPU"
        logger.info(
            "micro-batching: up to %d images per run (%s), batch timeout %g ms, admission limit %d images",
            self.max_batch_size,
            "configured" if self.settings.max_batch_size is not None else f"the {device} default",
            self.settings.batch_timeout_ms,
            self.settings.max_queue_size,
        )
        logger.info("%s", self.plan.describe())
        self._warm_up_task = asyncio.create_task(self._warm_up(), name="warm-up")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        self._draining = True
        if self._warm_up_task is not None:
            await self._warm_up_task
        await self._batcher.stop()
        self._decode_pool.shutdown(wait=True)

    async def _warm_up(self) -> None:
        started = time.perf_counter()
        # Warm the shapes real traffic will use, single images and full batches, with as many runs at once as
        # the plan allows: onnxruntime's arena then already holds what concurrent runs need (two concurrent
        # batches of 16 after a sequential warm-up grew RSS by 75 MiB, 18 %, on the first loaded batches).
        # The solo session never runs two batches at once, and with several instances and no batch timeout only
        # single images (a burst is shared out, so its first batch finds the rest still queued): it is warmed
        # once, at batch 1 only then, which keeps about 75 MiB of batch-16 buffers out of its arena.
        sizes = tuple(sorted({1, self.max_batch_size}))
        solo_sizes = (1,) if self.plan.instances > 1 else sizes
        runs = self.settings.warmup_runs
        try:
            await asyncio.gather(
                *(
                    asyncio.to_thread(self.model.warm_up, runs, sizes, solo_sizes if instance == 0 else ())
                    for instance in range(self.plan.instances)
                )
            )
        except Exception as error:
            await self._fail(f"warm-up failed, so this process cannot serve: {type(error).__name__}: {error}", error)
            return
        self._ready.set()
        logger.info(
            "warm-up done in %.0f ms (%d runs); ready to serve",
            (time.perf_counter() - started) * 1000.0,
            self.settings.warmup_runs,
        )

    async def _fail(self, reason: str, cause: BaseException) -> None:
        """Stop serving for good: log why at ERROR, release the inference and decode threads, ask to exit."""
        self.failure = reason
        logger.error("%s; exiting so that the process is restarted", reason, exc_info=cause)
        await self._batcher.stop()
        self._decode_pool.shutdown(wait=False)
        self._fatal.set()

    def ensure_ready(self) -> None:
        if not self._accepting:
            raise ModelNotReadyError("the model is still loading or warming up; retry when /health/ready is 200")

    async def predict(self, data: bytes, top_k: int) -> PredictResponse:
        """Decode, preprocess, infer (batched) and label one image, within the request deadline."""
        self.ensure_ready()
        try:
            with self._admitted_images(1):
                response = await self._within_deadline(self._predict(data, top_k))
        except ServiceError as error:
            self.metrics.images.labels(error.code).inc()
            raise
        timing = response.timing_ms
        self._observe_image(timing.decode, timing.preprocess, timing.queue)
        return response

    async def infer_images(self, blobs: list[bytes]) -> npt.NDArray[np.float32]:
        """Probabilities [N, 1000] for N encoded images; the first bad image fails the call and cancels the rest."""
        self.ensure_ready()

        async def one(data: bytes) -> npt.NDArray[np.float32]:
            tensor, decode_ms, preprocess_ms = await self._prepare_off_loop(data)
            result = await self._batcher.infer(tensor)
            self._observe_image(decode_ms, preprocess_ms, result.queue_ms)
            return result.probabilities

        return np.stack(await self._all_or_nothing([functools.partial(one, blob) for blob in blobs]))

    async def infer_tensors(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities [N, 1000] for already preprocessed images [N, 3, S, S]."""
        self.ensure_ready()

        async def one(row: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            result = await self._batcher.infer(row)
            self._observe_image(None, None, result.queue_ms)
            return result.probabilities

        return np.stack(await self._all_or_nothing([functools.partial(one, row) for row in batch]))

    async def off_loop(self, work: Callable[[], T]) -> T:
        """CPU-heavy request work besides decoding (parsing a v2 body) on the decode pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, work)

    async def _all_or_nothing(self, jobs: Sequence[Callable[[], Coroutine[Any, Any, T]]]) -> list[T]:
        """One request's images as one admitted unit, within the deadline: the first failure cancels the rest,
        and admission is held until every image has finished or been cancelled."""
        finished = 0
        failed = False

        async def counted(job: Callable[[], Coroutine[Any, Any, T]]) -> T:
            nonlocal finished, failed
            try:
                outcome = await job()
            except ServiceError as error:
                finished, failed = finished + 1, True
                self.metrics.images.labels(error.code).inc()
                raise
            finished += 1
            return outcome

        async def all_of_them() -> list[T]:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(counted(job)) for job in jobs]
            except BaseExceptionGroup as group_error:
                # The first failure cancelled its siblings: it is the one to report.
                raise group_error.exceptions[0] from None
            return [task.result() for task in tasks]

        try:
            with self._admitted_images(len(jobs)):
                return await self._within_deadline(all_of_them())
        except ServiceError as error:
            # Images without an outcome of their own: refused with the request, or cancelled with a sibling.
            self.metrics.images.labels("cancelled" if failed else error.code).inc(len(jobs) - finished)
            raise

    def _observe_image(self, decode_ms: float | None, preprocess_ms: float | None, queue_ms: float) -> None:
        self.metrics.images.labels("ok").inc()
        if decode_ms is not None and preprocess_ms is not None:
            self.metrics.decode_seconds.observe(decode_ms / 1000.0)
            self.metrics.preprocess_seconds.observe(preprocess_ms / 1000.0)
        self.metrics.queue_seconds.observe(queue_ms / 1000.0)

    async def explain(
        self, data: bytes, *, target: int | None, grid: int, baseline: Baseline, overlay: bool
    ) -> Explained:
        """Occlusion sensitivity for one image: it and its grid² occluded copies are one request's batch rows."""
        self.ensure_ready()
        rows = 1 + grid * grid
        if rows > self.settings.max_queue_size:
            raise InvalidParameterError(
                f"grid {grid} needs {rows} images in flight, over this server's limit of "
                f"{self.settings.max_queue_size}; use a smaller grid"
            )
        started = time.perf_counter()
        try:
            # Every row counts against admission and, as a tensor, against the memory budget, so explanations
            # cannot bypass overload protection.
            with self._admitted_images(rows), self._reserved_tensors(rows):
                explained = await self._within_deadline(self._explain(data, target, grid, baseline, overlay))
        except ServiceError as error:
            self.metrics.explanations.labels(error.code).inc()
            raise
        self.metrics.explanations.labels("ok").inc()
        self.metrics.explain_seconds.observe(time.perf_counter() - started)
        return explained

    @contextlib.contextmanager
    def _admitted_images(self, count: int) -> Iterator[None]:
        """Admission control: bound the images in flight (decoding, queued, running) and shed the rest at once."""
        if count > self.settings.max_queue_size:
            # Never admissible, however long the client waits: not a "retry shortly".
            raise PayloadTooLargeError(
                f"{count} images in one request, but at most {self.settings.max_queue_size} can be in flight; "
                "split the request"
            )
        if self._admitted + count > self.settings.max_queue_size:
            raise OverloadedError(
                f"the server is at capacity ({self.settings.max_queue_size} images in flight); retry shortly"
            )
        self._admitted += count
        self._recent_admitted.observe(self._admitted)
        try:
            yield
        finally:
            self._admitted -= count

    @contextlib.contextmanager
    def _reserved_tensors(self, count: int) -> Iterator[None]:
        """Reserve `count` preprocessed tensors in the memory budget, or shed the request with 503 at once."""
        size = self.model.card.preprocessing.input_size
        reserved = count * 3 * size * size * np.dtype(np.float32).itemsize
        if not self.budget.try_reserve(reserved):
            self.metrics.budget_refusals.inc()
            raise MemoryBudgetFullError(
                f"the server's memory budget ({self.budget.limit_bytes} bytes) has no room for {count} image tensors "
                "now; retry shortly"
            )
        try:
            yield
        finally:
            self.budget.release(reserved)

    async def _within_deadline(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await work
        except TimeoutError:
            raise DeadlineExceededError(
                f"the prediction took longer than {self.settings.request_timeout_s:g} s; retry later"
            ) from None

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference_seconds.observe(seconds)

    async def _predict(self, data: bytes, top_k: int) -> PredictResponse:
        started = time.perf_counter()
        tensor, decode_ms, preprocess_ms = await self._prepare_off_loop(data)
        result = await self._batcher.infer(tensor)
        total_ms = (time.perf_counter() - started) * 1000.0
        return self._response(top_k, decode_ms, preprocess_ms, result, total_ms)

    async def _explain(
        self, data: bytes, target: int | None, grid: int, baseline: Baseline, overlay: bool
    ) -> Explained:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Decoded once; the occluded copies are made from the preprocessed tensor.
        tensor, decode_ms, preprocess_ms = await self._prepare_off_loop(data)
        pre = self.model.card.preprocessing
        occlusion_started = time.perf_counter()
        fill = baseline_fill(baseline, pre)
        variants = await loop.run_in_executor(self._decode_pool, occluded_variants, tensor, grid, fill)
        inference_started = time.perf_counter()
        results = await asyncio.gather(*(self._batcher.infer(row) for row in (tensor, *variants)))
        inferred = time.perf_counter()
        prediction = self._response(DEFAULT_TOP_K, decode_ms, preprocess_ms, results[0], (inferred - started) * 1000.0)
        original = results[0].probabilities
        response = explanation_response(
            prediction,
            original,
            np.stack([result.probabilities for result in results[1:]]),
            target=prediction.top1.index if target is None else target,
            grid=grid,
            baseline=baseline,
            labels=self.model.card.labels,
            input_size=pre.input_size,
            timing=ExplainTimingMs(
                decode=round(decode_ms, 3),
                preprocess=round(preprocess_ms, 3),
                occlusion=round((inference_started - occlusion_started) * 1000.0, 3),
                inference=round((inferred - inference_started) * 1000.0, 3),
                render=0.0,
                total=round((inferred - started) * 1000.0, 3),
                rows=len(results),
            ),
        )
        if not overlay:
            return Explained(response=response, overlay_png=None)
        png = await loop.run_in_executor(self._decode_pool, self._overlay_png, tensor, response)
        finished = time.perf_counter()
        timing = response.timing_ms.model_copy(
            update={
                "render": round((finished - inferred) * 1000.0, 3),
                "total": round((finished - started) * 1000.0, 3),
            }
        )
        return Explained(response=response.model_copy(update={"timing_ms": timing}), overlay_png=png)

    def _overlay_png(self, tensor: npt.NDArray[np.float32], response: ExplainResponse) -> bytes:
        image = image_as_seen(tensor, self.model.card.preprocessing)
        scores = np.asarray(response.scores, dtype=np.float32)
        return render_overlay(
            image, scores, label=response.target.label, text=response.text, warnings=response.warnings
        )

    async def _prepare_off_loop(self, data: bytes) -> tuple[npt.NDArray[np.float32], float, float]:
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, self._prepare, data)

    def _prepare(self, data: bytes) -> tuple[npt.NDArray[np.float32], float, float]:
        return prepare_image(data, self.model.card.preprocessing, self.settings, self.budget)

    def _response(
        self,
        top_k: int,
        decode_ms: float,
        preprocess_ms: float,
        result: InferenceResult,
        total_ms: float,
    ) -> PredictResponse:
        labels = self.model.card.labels
        scores = [
            ClassScore(index=label.index, wnid=label.wnid, label=label.label, probability=probability)
            for label, probability in ranked(result.probabilities, labels, max(top_k, TOP5))
        ]
        return PredictResponse(
            top1=scores[0],
            top5=scores[:TOP5],
            predictions=scores[:top_k],
            model=self.model_summary(),
            timing_ms=TimingMs(
                decode=round(decode_ms, 3),
                preprocess=round(preprocess_ms, 3),
                queue=round(result.queue_ms, 3),
                inference=round(result.inference_ms, 3),
                total=round(total_ms, 3),
                batch_size=result.batch_size,
            ),
            warnings=self.model.warnings,
        )
