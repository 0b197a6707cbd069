"""Dynamic micro-batching: concurrent requests share one `session.run`.

One worker takes the oldest waiting image, gathers whatever else is queued (waiting at most
`timeout_ms` for more), runs the batch on a dedicated inference thread, and fans results back out.
While a batch runs, new requests queue up, so batches grow with load and cost nothing when idle.
The queue is bounded: when full, callers get `OverloadedError` at once instead of unbounded waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.errors import InferenceError, ModelNotReadyError, OverloadedError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
RunBatch = Callable[[FloatArray], FloatArray]
BatchObserver = Callable[[int, float], None]


@dataclass(frozen=True)
class InferenceResult:
    probabilities: FloatArray
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Job:
    tensor: FloatArray
    future: asyncio.Future[InferenceResult]
    enqueued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        timeout_ms: float,
        max_queue_size: int,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._timeout_s = timeout_ms / 1000.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None
        self._accepting = False
        self._busy = False

    @property
    def depth(self) -> int:
        """Images waiting, not counting the batch being run."""
        return self._queue.qsize()

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then release the inference thread."""
        self._accepting = False
        while (not self._queue.empty() or self._busy) and self._worker is not None and not self._worker.done():
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def infer(self, tensor: FloatArray) -> InferenceResult:
        """Queue one preprocessed image [3, S, S]; resolves when its batch has run."""
        if not self._accepting:
            raise ModelNotReadyError("the server is shutting down; retry on another replica")
        job = _Job(tensor=tensor, future=asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise OverloadedError(
                f"the inference queue is full ({self._queue.maxsize} images waiting); retry shortly"
            ) from None
        return await job.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            live = [job for job in jobs if not job.future.done()]  # callers that gave up are skipped
            if not live:
                continue
            self._busy = True
            started = time.perf_counter()
            try:
                batch = np.stack([job.tensor for job in live])
                probabilities = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception:
                logger.exception("inference failed for a batch of %d", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(InferenceError("inference failed; the error is in the server log"))
                continue
            finally:
                self._busy = False
            finished = time.perf_counter()
            inference_ms = (finished - started) * 1000.0
            if self._on_batch is not None:
                self._on_batch(len(live), finished - started)
            for row, job in zip(probabilities, live, strict=True):
                if not job.future.done():
                    job.future.set_result(
                        InferenceResult(
                            probabilities=row,
                            queue_ms=(started - job.enqueued_at) * 1000.0,
                            inference_ms=inference_ms,
                            batch_size=len(live),
                        )
                    )

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = time.perf_counter() + self._timeout_s
        while len(jobs) < self._max_batch_size:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return jobs
