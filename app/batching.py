"""Dynamic micro-batching: concurrent requests share one `session.run`, with up to N runs in flight.

Each of `instances` workers (Triton's "model instances") takes the oldest waiting image, gathers its share
of whatever else is queued (waiting at most `timeout_ms` for more), runs the batch on its own inference
thread, and fans results back out. While batches run, new requests queue up, so batches grow with load and
cost nothing when idle. A batch that finds nothing else queued, running or on its way (`pending`) may go to
`run_solo` instead (e.g. a run with every core), so a lone request gets the machine's best latency.
When another batch is already running, the machine is busy and a batch of one would cost nearly twice the
CPU per image of a batch of eight: an idle instance then waits for its share of the images the load keeps in
flight (`demand`, less the rows running; at most its share of a full batch), or `busy_delay_ms` at most. When
a run ends the share is worked out again, so an instance stops waiting once nothing more is expected.
The queue is bounded: when full, callers get `OverloadedError` at once instead of unbounded waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
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


class RecentPeak:
    """The highest count seen over the last one to two windows: how many images a steady load keeps in flight,
    even at the moments when some of its requests are between one answer and the next."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._window_started = clock()
        self._previous = 0
        self._current = 0

    def observe(self, count: int) -> None:
        self._roll()
        self._current = max(self._current, count)

    def value(self) -> int:
        self._roll()
        return max(self._previous, self._current)

    def _roll(self) -> None:
        elapsed = self._clock() - self._window_started
        if elapsed < self._window_s:
            return
        # A window with nothing observed after a long quiet spell holds no peak either.
        self._previous = self._current if elapsed < 2 * self._window_s else 0
        self._current = 0
        self._window_started += self._window_s * (elapsed // self._window_s)


class _BatchBuffer:
    """One model instance's input buffer: its batches are stacked (on the inference thread) into the same memory."""

    def __init__(self, rows: int) -> None:
        self._rows = rows
        self._buffer: FloatArray | None = None

    def run(self, run: RunBatch, tensors: list[FloatArray]) -> tuple[FloatArray, float, float]:
        """(probabilities, start, end): timed here, so a wait for a free thread counts as queueing."""
        started = time.perf_counter()
        shape = tensors[0].shape
        if self._buffer is None or self._buffer.shape[1:] != shape or len(self._buffer) < len(tensors):
            self._buffer = np.empty((max(self._rows, len(tensors)), *shape), dtype=np.float32)
        batch = np.stack(tensors, out=self._buffer[: len(tensors)])
        probabilities = run(batch)
        # The next batch overwrites the buffer while callers may still read these rows.
        if np.shares_memory(probabilities, self._buffer):
            probabilities = probabilities.copy()
        return probabilities, started, time.perf_counter()


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        timeout_ms: float,
        max_queue_size: int,
        instances: int = 1,
        run_solo: RunBatch | None = None,
        busy_delay_ms: float = 0.0,
        pending: Callable[[], int] | None = None,
        demand: Callable[[], int] | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._run_solo = run_solo
        self._on_batch = on_batch
        self._max_batch_size = max_batch_size
        self._instances = instances
        self._timeout_s = timeout_ms / 1000.0
        self._busy_delay_s = busy_delay_ms / 1000.0
        # Images admitted upstream and not yet answered (decoding, queued or running): a batch that holds all of
        # them is truly alone. Without it, only the queue and the runs are looked at.
        self._pending = pending
        # Images the load keeps in flight (e.g. the recent peak of `pending`): a busy instance waits for its share
        # of them. `pending` alone undercounts: a closed-loop client's next request is still on the wire or in
        # the HTTP layer when the first of its batch-mates arrives, and the instance then ran a batch of one.
        # Without it: a full share while a run is in flight, nothing once it ends.
        self._demand = demand
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue_size)
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="inference")
        self._workers: list[asyncio.Task[None]] = []
        self._accepting = False
        # (time handed to the inference threads (time.perf_counter()), images) of each run in flight, by run
        # number; a liveness check reads the times.
        self._running: dict[int, tuple[float, int]] = {}
        # Set (and replaced) whenever a run ends: what an instance waiting for company also wakes on.
        self._run_ended = asyncio.Event()
        self._run_numbers = itertools.count()
        self._forming = asyncio.Lock()

    @property
    def depth(self) -> int:
        """Images waiting, not counting the batches being run."""
        return self._queue.qsize()

    @property
    def inference_threads(self) -> ThreadPoolExecutor:
        """The `instances` threads that run the batches, shut down by `stop`. Other work submitted to them waits for
        a free thread, in arrival order with the batches."""
        return self._executor

    @property
    def runs_started_at(self) -> list[float]:
        """When each run now in flight was handed to the inference threads (time.perf_counter()), oldest first;
        empty when idle."""
        return sorted(started for started, _ in self._running.values())

    def start(self) -> None:
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._work(), name=f"micro-batcher-{number}") for number in range(self._instances)
        ]

    async def stop(self) -> None:
        """Refuse new work, finish what is queued, then release the inference threads."""
        self._accepting = False
        while (not self._queue.empty() or self._running) and not all(worker.done() for worker in self._workers):
            await asyncio.sleep(0.005)
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
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
        # This instance's batches are stacked into one buffer, reused: a fresh one per batch (5 MB at 8 images)
        # came from a new mmap each time, and faulting its pages in cost more than copying into it.
        buffer = _BatchBuffer(self._max_batch_size)
        while True:
            # One batch forms at a time (as in Triton's scheduler): two instances gathering at once split the
            # arrivals between them and each ran a fraction of a batch.
            async with self._forming:
                jobs = await self._gather()
            live = [job for job in jobs if not job.future.done()]  # callers that gave up are skipped
            if not live:
                continue
            run = self._run_batch
            if self._run_solo is not None and self._alone(len(live)):
                run = self._run_solo  # alone on the machine: it may use the cores the other instances would
            number = next(self._run_numbers)
            self._running[number] = (time.perf_counter(), len(live))
            try:
                tensors = [job.tensor for job in live]
                probabilities, started, finished = await loop.run_in_executor(self._executor, buffer.run, run, tensors)
            except Exception:
                logger.exception("inference failed for a batch of %d", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(InferenceError("inference failed; the error is in the server log"))
                continue
            finally:
                del self._running[number]
                self._run_ended.set()
                self._run_ended = asyncio.Event()
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

    def _alone(self, batch_size: int) -> bool:
        if self._running or not self._queue.empty():
            return False
        return self._pending is None or self._pending() <= batch_size

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        started = time.perf_counter()
        # Share what is already waiting among the idle instances, so a burst starts all of them at once
        # instead of one instance taking every image while the others (and their cores) sit idle.
        idle = max(1, self._instances - len(self._running))
        share = min(self._max_batch_size, math.ceil((1 + self._queue.qsize()) / idle))
        while len(jobs) < share:
            jobs.append(self._queue.get_nowait())
        if self._running and self._busy_delay_s > 0:
            # Busy: wait for this instance's share rather than run a tiny batch beside the running one.
            await self._fill_while_busy(jobs, started + self._busy_delay_s)
        # With a batch timeout, wait that long for more to arrive.
        await self._fill(jobs, self._max_batch_size, started + self._timeout_s)
        return jobs

    def _busy_target(self) -> int:
        """This instance's share of a full batch, but no more than the images the load keeps in flight beyond the
        rows now running."""
        share = max(1, self._max_batch_size // self._instances)
        if self._demand is None:
            return share if self._running else 1
        running_rows = sum(rows for _, rows in self._running.values())
        return max(1, min(share, self._demand() - running_rows))

    async def _fill_while_busy(self, jobs: list[_Job], deadline: float) -> None:
        # The target is worked out again after every arrival and every run that ends.
        while len(jobs) < self._busy_target():
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            getter = asyncio.ensure_future(self._queue.get())
            ended = asyncio.ensure_future(self._run_ended.wait())
            try:
                await asyncio.wait((getter, ended), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                if getter.done():
                    jobs.append(getter.result())
                else:
                    getter.cancel()

    async def _fill(self, jobs: list[_Job], size: int, deadline: float) -> None:
        while len(jobs) < size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return
