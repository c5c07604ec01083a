"""A dynamic batcher for one level: requests queue, batches form, inference runs in a thread.

- A batch starts when `max_batch_size` samples are waiting or the oldest has waited `max_delay_s`.
- Lower priority numbers run first; FIFO within a priority.
- A caller's multi-row request is never split; one bigger than `max_batch_size` runs alone.
- The queue is bounded in samples: a request that does not fit raises Unavailable (503).
- A request whose deadline passes before its batch starts raises DeadlineExceeded (504), unexecuted;
  one whose batch is running is awaited up to `max_overrun_s` more, then abandoned (504), so a stuck
  session leaves no request hanging.
- An error in a batch reaches every request of that batch.
- `close()` stops intake, lets the queue drain (up to a timeout), fails what is left, stops the thread.
- Batches run on one daemon thread per level, so a session stuck in a run cannot hold up the exit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest, DeadlineExceeded, InferenceFailed, ServiceError, Unavailable

Outputs = dict[str, np.ndarray]
RunFn = Callable[[np.ndarray], Outputs]
BatchObserver = Callable[[int, float], None]  # (batch samples, compute seconds)
_TIMER_GRAIN_S = 0.001


@dataclass(frozen=True)
class BatchResult:
    outputs: Outputs  # this request's rows only
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass(order=True)
class _Pending:
    priority: int
    seq: int
    rows: np.ndarray = field(compare=False)
    deadline: float = field(compare=False)  # time.monotonic()
    enqueued: float = field(compare=False)
    start_by: float = field(compare=False)  # the batch must start by then, full or not
    future: asyncio.Future[BatchResult] = field(compare=False)
    started: bool = field(default=False, compare=False)
    dropped: bool = field(default=False, compare=False)
    timer: asyncio.TimerHandle | None = field(default=None, compare=False)

    @property
    def n(self) -> int:
        return len(self.rows)


class _Worker:
    """One daemon thread running jobs in order (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)

    def shutdown(self) -> None:
        self._jobs.put(None)


class Batcher:
    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_samples: int,
        on_batch: BatchObserver | None = None,
        retry_after: Callable[[], int] = lambda: 1,
        max_overrun_s: float | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_samples = max_queue_samples
        self._on_batch = on_batch
        self._retry_after = retry_after
        self.max_overrun_s = max_overrun_s  # how long a running request is awaited past its deadline
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self.queued_samples = 0
        self.running_samples = 0
        self.running_since: float | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._worker = _Worker(f"infer-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self.queued_samples == 0 and self.running_since is None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def call(self, fn: Callable[[], object]) -> None:
        """Run `fn` on this level's inference thread (warm-up runs where batches will run)."""
        await asyncio.wrap_future(self._worker.submit(fn))

    async def submit(
        self, rows: np.ndarray, *, deadline: float, priority: int = 0, max_wait_s: float | None = None
    ) -> BatchResult:
        """Queue `rows` (a caller's whole batch) and wait for its outputs. The batch it joins starts
        within `max_wait_s` (at most the batcher's max delay) even if not full."""
        if self._closing:
            raise Unavailable(f"{self.name}: shutting down, not accepting requests")
        if len(rows) > self.max_queue_samples:
            raise BadRequest(
                f"{len(rows)} rows in one request exceed the queue limit of {self.max_queue_samples}"
            )
        if self.queued_samples + len(rows) > self.max_queue_samples:
            raise Unavailable(
                f"{self.name}: queue full ({self.queued_samples} samples waiting, limit "
                f"{self.max_queue_samples})",
                retry_after_s=self._retry_after(),
            )
        now = time.monotonic()
        wait = self.max_delay_s if max_wait_s is None else min(max_wait_s, self.max_delay_s)
        loop = asyncio.get_running_loop()
        item = _Pending(
            priority, next(self._seq), rows, deadline, now, now + max(0.0, wait), loop.create_future()
        )
        heapq.heappush(self._heap, item)
        self.queued_samples += item.n
        self._wake.set()
        # one timer per request, not wait_for + shield: this is the hot path of every request
        item.timer = loop.call_later(max(0.0, deadline - now), self._expire, item)
        try:
            return await item.future
        except asyncio.CancelledError:  # the caller went away: unqueue unless already running
            self._drop(item)
            raise
        finally:
            item.timer.cancel()

    def _expire(self, item: _Pending) -> None:
        """The request's deadline passed: unexecuted if still queued (504); if its batch is running,
        its answer is moments away and is awaited `max_overrun_s` more (a stuck session: 504)."""
        if item.future.done():
            return
        if not item.started:
            self._drop(item)
            item.future.set_exception(
                DeadlineExceeded(f"{self.name}: deadline passed while queued; not executed")
            )
        elif self.max_overrun_s is not None:
            item.timer = asyncio.get_running_loop().call_later(self.max_overrun_s, self._abandon, item)

    def _abandon(self, item: _Pending) -> None:
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceeded(
                    f"{self.name}: still running {self.max_overrun_s:g} s past its deadline (a stuck "
                    "session?); answer abandoned"
                )
            )

    def _drop(self, item: _Pending) -> None:
        if not item.dropped and not item.started:
            item.dropped = True
            self.queued_samples -= item.n

    async def _loop(self) -> None:
        while True:
            while not self._heap:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._wait_for_batch()
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _wait_for_batch(self) -> None:
        while self.queued_samples < self.max_batch_size and not self._closing:
            remaining = min((p.start_by for p in self._heap if not p.dropped), default=0.0) - time.monotonic()
            if remaining < _TIMER_GRAIN_S:  # event-loop timers cannot wait less than this
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        now = time.monotonic()
        while self._heap:
            head = self._heap[0]
            if head.dropped or head.future.done():
                heapq.heappop(self._heap)
                self._drop(head)
                continue
            if batch and size + head.n > self.max_batch_size:
                break
            heapq.heappop(self._heap)
            self.queued_samples -= head.n
            head.dropped = True  # out of the queue either way
            if head.deadline <= now:
                head.future.set_exception(DeadlineExceeded(f"{self.name}: deadline passed before running"))
                continue
            head.started = True
            batch.append(head)
            size += head.n
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        start = time.monotonic()
        self.running_samples, self.running_since = len(rows), start
        outputs: Outputs = {}
        error: BaseException | None = None
        try:
            outputs, compute = await asyncio.wrap_future(self._worker.submit(self._timed, rows))
        except asyncio.CancelledError:  # closed past its drain timeout mid-batch
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(Unavailable(f"{self.name}: shut down while this request ran"))
            raise
        except ServiceError as exc:
            error = exc
        except Exception as exc:
            error = InferenceFailed(f"{self.name}: inference failed: {type(exc).__name__}: {exc}")
        if error is not None:
            compute = time.monotonic() - start
        self.running_samples, self.running_since = 0, None
        if error is None and self._on_batch is not None:
            self._on_batch(len(rows), compute)
        offset = 0
        for p in batch:
            part = slice(offset, offset + p.n)
            offset += p.n
            if p.future.done():
                continue
            if error is not None:
                p.future.set_exception(error)
            else:
                mine = {k: v[part] for k, v in outputs.items()}
                p.future.set_result(BatchResult(mine, start - p.enqueued, compute, len(rows)))

    def _timed(self, rows: np.ndarray) -> tuple[Outputs, float]:
        t0 = time.perf_counter()
        outputs = self._run(rows)
        return outputs, time.perf_counter() - t0

    def stop_intake(self) -> None:
        """Refuse new requests (503); what is queued runs without waiting for batches to fill."""
        self._closing = True
        self._wake.set()

    async def close(self, timeout_s: float = 0.0) -> None:
        """Stop intake, let queued work finish for up to `timeout_s`, fail the rest (503)."""
        self.stop_intake()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        for item in self._heap:
            if not item.dropped and not item.future.done():
                item.future.set_exception(Unavailable(f"{self.name}: shut down before this request ran"))
        self._heap.clear()
        self.queued_samples = 0
        self._worker.shutdown()
