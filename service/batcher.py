"""Runs one level's batches: requests go into a BatchQueue; a batch runs whenever the level is free.

- A request that finds its level idle starts at once. Requests that arrive while a batch runs
  queue; the next batch takes what is queued (up to `max_batch_size` rows) as soon as it ends.
- With `max_delay_s` > 0 (opt-in) a partial batch on an idle level waits up to that long to fill.
- Order (priorities, FIFO, chunking of large requests) is the queue's (service.batch_queue): a
  request's rows run in chunks of at most `max_batch_size`, interleaved with other requests' rows,
  and its answer is reassembled in order.
- The queue is bounded in samples: a request that does not fit raises Unavailable (503).
- A request whose deadline passes while rows of it are queued raises DeadlineExceeded (504) and its
  queued rows never run. The deadlines of a level's requests share one timer (`_Deadlines`), armed
  for the earliest: a timer made and cancelled per request cost more than the heap. One given a
  `finish_by` (its latency budget, when shedding is on) is kept out of batches predicted (`cost_s`)
  to end after it: the batch is cut short before rows that would make it late
  (service.batch_queue), and it raises Shed (503), unrun, once not even the next batch could end in
  time. One whose rows are all running is awaited up to `max_overrun_s` more, then abandoned (504),
  so a stuck session leaves no request hanging.
- An error in a batch reaches every request with rows in it.
- `close()` stops intake, lets the queue drain (up to a timeout), fails what is left, stops the thread.
- Batches run on one daemon thread per level, so a session stuck in a run cannot hold up the exit.
  The thread hands a finished batch back with one `call_soon_threadsafe`; the loop takes the next
  batch in that same callback. Except when the level is what holds answers back (a row of it costs
  more than the loop's own work per request, `loop_cost_s`, and at least half a batch queued while
  it ran): then the thread takes the next batch itself under the queue's lock and runs it at once,
  the loop only delivering outputs (at concurrency 64 on the digits full level the hop through a
  busy or sleeping loop left the level idle a median 3.8 ms between 20 ms batches).
- With `inline_max_s` > 0, a request that finds its level idle, with nobody else arriving, runs on
  the event loop itself when the level's last batch, at least as large as this request, took at most
  `inline_max_s`: at low load the hop to the thread and back costs more than such a small run blocks
  the loop (two thread wake-ups, each waiting for a core on a busy machine: a median ~0.1 ms and a
  p90 of ~2 ms here, and ~0.2 ms more CPU per request, the run itself slower on a cold core).
  "Nobody else arriving" is known or looked at, not guessed. Known: the caller says no other request
  is in flight in the whole server, nor can be on its way (`only_request`; service.engine: one
  request in flight, one open connection), so it runs at once. Else the request holds
  the level for `SETTLE_TURNS` turns of the loop (requests whose bytes are already in reach are read
  and reach their batcher meanwhile, and queue behind it); if any came, it joins them and the batch
  runs on the thread, as at high load; if none, it runs inline. Its deadline is checked before it
  runs; a slow level keeps to its thread. `run_inline` (default: `run`) is what runs it; the server's
  (service.runtime.Watchdog) ends a run that stalls, raising Interrupted: the request's rows run
  on the thread, and the level keeps to its thread for `inline_pause_s`, twice that after a stall
  soon after the last pause (within as long again as it lasted), and so on; a stall after a clean
  stretch that long pauses `inline_pause_s` again. So a stall costs the loop a bounded pause, a
  level that keeps stalling ever rarer ones, and the machine's own stalls (a hypervisor's pause of
  the server's core, every minute or so on a busy host) keep a level off the loop for `inline_pause_s`
  each: neither one stall for good (the bench's latency floor lost its 1/2 level to one: 1.46x the
  bare app) nor ever longer pauses over the process's life (its 1/8 level ran 1.66x the bare app,
  slower than 1/4, at 15% steal).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

import numpy as np

from service.batch_queue import BatchQueue, Part, Request
from service.errors import BadRequest, DeadlineExceeded, InferenceFailed, ServiceError, Shed, Unavailable
from service.runtime import Interrupted

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]
RunFn = Callable[[np.ndarray], Outputs]
BatchObserver = Callable[[int, float], None]  # (batch samples, compute seconds)
CostFn = Callable[[int], float]  # batch samples -> predicted compute seconds
Done = Callable[[Any, BaseException | None], None]  # a worker job's (result, error), on its thread
_TIMER_GRAIN_S = 0.001  # event-loop timers cannot wait less than this
# Turns of the event loop an inline candidate waits for company: the first lets the loop read the
# sockets that are ready (their requests' tasks are created behind it), the second lets those tasks
# run up to their batcher (a request with a complete body gets there without suspending).
SETTLE_TURNS = 2


class BatchResult(NamedTuple):  # a tuple: made once per request, several times cheaper than a dataclass
    outputs: Outputs  # this request's rows only, in its order
    queue_s: float  # arrival to its first batch's start
    compute_s: float  # compute of the batches its rows ran in
    batch_size: int  # the largest batch its rows ran in


class _Worker:
    """One daemon thread running jobs in order (a ThreadPoolExecutor's threads are joined at exit).
    A job's outcome goes to its `done(result, error)`, called on the thread: a batch needs no
    concurrent Future (a Condition and its lock made per batch) to come back."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Done] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        self._jobs.put((fn, args, done))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()

        def done(result: Any, error: BaseException | None) -> None:
            if not future.set_running_or_notify_cancel():
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        self.run(fn, args, done)
        return future

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._do(*job)
            del job  # a finished batch's rows are not kept until the next one comes

    @staticmethod
    def _do(fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            done(None, exc)
        else:
            done(result, None)

    def shutdown(self) -> None:
        self._jobs.put(None)


class _Deadlines:
    """The deadlines of a batcher's requests on one event-loop timer, armed for the earliest one. The
    heap holds its requests weakly: one answered before its deadline is dropped when the timer reaches
    it or by a compaction (once COMPACT_AFTER answers are more than half the heap), and its rows and
    outputs are freed at once. So no timer is made or cancelled per request."""

    COMPACT_AFTER = 1024

    def __init__(self, expire: Callable[[Request], None]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int, weakref.ref[Request]]] = []  # (deadline, seq, request)
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._due = float("inf")  # the deadline the timer is armed for
        self._answered = 0  # answered since the last compaction (an upper bound of those in the heap)

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, loop: asyncio.AbstractEventLoop, request: Request) -> None:
        heapq.heappush(self._heap, (request.deadline, next(self._seq), weakref.ref(request)))
        if request.deadline < self._due:
            self._arm(loop, request.deadline)

    def answered(self) -> None:
        """A request of the heap has its answer (or its error)."""
        self._answered += 1
        if self._answered > self.COMPACT_AFTER and 2 * self._answered > len(self._heap):
            self._heap = [e for e in self._heap if _waiting(e[2]()) is not None]
            heapq.heapify(self._heap)
            self._answered = 0

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due = None, float("inf")

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = deadline
        when = loop.time() + max(0.0, deadline - time.monotonic())
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._due = None, float("inf")
        heap, now = self._heap, time.monotonic()
        while heap and (heap[0][0] <= now or _waiting(heap[0][2]()) is None):
            request = _waiting(heapq.heappop(heap)[2]())
            if request is not None:
                self._expire(request)
        if heap:
            self._arm(loop, heap[0][0])


def _waiting(request: Request | None) -> Request | None:
    """The request if it still waits for its answer."""
    return request if request is not None and not request.future.done() else None


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
        inline_max_s: float = 0.0,
        inline_pause_s: float = 1.0,
        run_inline: RunFn | None = None,
        cost_s: CostFn = lambda n: 0.0,
        loop_cost_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._cost_s = cost_s
        self._loop_cost_s = loop_cost_s  # the event loop's own seconds per request (_chains)
        self._retry_after = retry_after
        self.max_overrun_s = max_overrun_s  # how long a running request is awaited past its deadline
        self._queue = BatchQueue(max_queue_samples)
        self.running_samples = 0
        self.running_since: float | None = None
        # (since, samples) of the running batch, in one attribute: the level's thread changes it
        # while the loop reads (a chained batch), and one read of it is consistent, two reads of
        # running_since may not be (None by the second)
        self.running_batch: tuple[float, int] | None = None
        self._running: list[Part] = []
        self._fill_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._stopped = False  # closed past its drain: late results are dropped
        self._drained: asyncio.Event | None = None
        self.inline_max_s = inline_max_s
        self.inline_pause_s = inline_pause_s  # after the first stall of an inline run; doubled after each
        self.stalls = 0  # inline runs the watchdog ended
        self._streak = 0  # stalls in a row, each soon after the last pause: the pause is 2**streak long
        self._clean_from = 0.0  # time.monotonic() after which a stall starts a new streak
        self.inline_from = 0.0  # time.monotonic() before which the level keeps to its thread (a stall)
        self._run_inline = run_inline
        self._last_compute_s = float("inf")  # of the last batch; no inline run before one finished
        self._last_rows = 0  # and its size: a larger request is not known to be small enough
        self._settling = False  # an inline candidate holds the level while it looks for company
        self._worker = _Worker(f"infer-{name}")
        # the queue and the running batch, shared by the event loop and the level's thread (which
        # takes the next batch itself, see _run_batches)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines = _Deadlines(self._expire)

    @property
    def max_queue_samples(self) -> int:
        return self._queue.max_samples

    @property
    def queued_samples(self) -> int:
        return self._queue.samples

    @property
    def idle(self) -> bool:
        return not self._queue and self.running_since is None and not self._settling

    def start(self) -> None:
        """Bind to the running event loop (batches are handed back to it)."""
        self._loop = asyncio.get_running_loop()

    async def call(self, fn: Callable[[], object]) -> None:
        """Run `fn` on this level's inference thread (warm-up runs where batches will run)."""
        await asyncio.wrap_future(self._worker.submit(fn))

    async def submit(
        self,
        rows: np.ndarray,
        *,
        deadline: float,
        priority: int = 0,
        max_wait_s: float | None = None,
        finish_by: float = float("inf"),
        only_request: bool = False,
    ) -> BatchResult:
        """Queue `rows` (a caller's whole request) and wait for its outputs. On an idle level its
        first batch starts within `max_wait_s` (at most the batcher's max delay), full or not.
        A batch of it predicted to end after `finish_by` is not run: Shed (503). `only_request`: no
        other request is in flight in the server (an inline run needs no settle turns)."""
        if self._closing:
            raise Unavailable(f"{self.name}: shutting down, not accepting requests")
        n = len(rows)
        if n > self._queue.max_samples:
            raise BadRequest(f"{n} rows in one request exceed the queue limit of {self._queue.max_samples}")
        self._check_room(n)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._inline_pays(n, max_wait_s):
            if only_request or await self._alone():
                done = self._inline(rows, deadline, time.monotonic())
                if done is not None:
                    return done
            elif not self._queue.fits(n):  # others queued while it looked, and filled the queue
                self._kick()
                self._check_room(n)
        now = time.monotonic()  # (after an inline try the watchdog ended, the rows go to the thread)
        wait = self.max_delay_s if max_wait_s is None else min(max_wait_s, self.max_delay_s)
        request = Request(
            rows, priority, deadline, now, now + max(0.0, wait), loop.create_future(), finish_by
        )
        with self._lock:
            self._queue.put(request)
        self._deadlines.add(loop, request)  # not wait_for + shield: this is the hot path of every request
        self._kick()
        try:
            result: BatchResult = await request.future
            return result
        except asyncio.CancelledError:  # the caller went away: its queued rows leave the queue
            with self._lock:
                self._queue.remove(request)
            raise
        finally:
            if request.timer is not None:  # awaited past its deadline (_expire)
                request.timer.cancel()
            self._deadlines.answered()

    def _check_room(self, n: int) -> None:
        if not self._queue.fits(n):
            raise Unavailable(
                f"{self.name}: queue full ({self._queue.samples} samples waiting, limit "
                f"{self._queue.max_samples})",
                retry_after_s=self._retry_after(),
            )

    def _inline_pays(self, n: int, max_wait_s: float | None) -> bool:
        """Whether this request may run inline (see the module docstring), if nobody else comes: the
        level idle, no batching delay asked for, and a last batch at least this large that was fast."""
        return (
            self._last_compute_s <= self.inline_max_s
            and self.running_since is None
            and not self._settling
            and not self._queue
            and n <= self._last_rows
            and (self.max_delay_s <= 0 or max_wait_s == 0)
            and (not self.inline_from or time.monotonic() >= self.inline_from)
        )

    async def _alone(self) -> bool:
        """Hold the level for SETTLE_TURNS turns of the loop (requests arriving meanwhile queue, and
        no batch starts); True if none came and the level is still the candidate's to run inline.
        False: the candidate joins the queue, which starts the batch with it."""
        self._settling = True
        try:
            for _ in range(SETTLE_TURNS):
                await asyncio.sleep(0)
        except BaseException:  # the caller went away: whoever queued behind it starts now
            self._settling = False
            self._kick()
            raise
        self._settling = False
        if self._closing:
            self._kick()
            raise Unavailable(f"{self.name}: shutting down, not accepting requests")
        return not self._queue and self.running_since is None

    def _inline(self, rows: np.ndarray, deadline: float, now: float) -> BatchResult | None:
        """The request run on the loop; None if the watchdog ended the run (inline is then off)."""
        if deadline <= now:
            raise DeadlineExceeded(f"{self.name}: deadline passed before running")
        run = self._run_inline or self._run
        t0 = time.perf_counter()
        try:
            outputs = run(rows)
        except Interrupted as exc:
            now = time.monotonic()
            self._streak = 0 if now >= self._clean_from else self._streak
            pause_s = self.inline_pause_s * 2**self._streak
            self.stalls, self._streak = self.stalls + 1, self._streak + 1
            self.inline_from = now + pause_s
            self._clean_from = self.inline_from + pause_s
            log.warning("%s: %s; this level runs on its thread for the next %g s", self.name, exc, pause_s)
            return None
        except ServiceError:
            raise
        except Exception as exc:
            raise InferenceFailed(f"{self.name}: inference failed: {type(exc).__name__}: {exc}") from exc
        compute = time.perf_counter() - t0
        self._last_compute_s, self._last_rows = compute, len(rows)
        if self._on_batch is not None and self._loop is not None:  # after the answer is written: its
            self._loop.call_soon(self._on_batch, len(rows), compute)  # statistics wait one turn
        return BatchResult(outputs, 0.0, compute, len(rows))

    def _kick(self) -> None:
        """Start the next batch if the level is free and a batch is due (on the event loop)."""
        while True:
            with self._lock:
                if self.running_since is not None or self._stopped or self._settling:
                    return
                if not self._queue:
                    break
                now = time.monotonic()
                if self.max_delay_s > 0 and not self._closing and self._queue.samples < self.max_batch_size:
                    start_by = self._queue.oldest_start_by()
                    if start_by is not None and start_by - now >= _TIMER_GRAIN_S:
                        self._arm_fill_timer(start_by - now)
                        return
                parts, expired, late = self._queue.take(self.max_batch_size, now, self._cost_s)
                self._mark_running(parts, now)
            self._fail_unrun(expired, late)
            if parts:
                self._worker.run(self._run_batches, (parts,), self._thread_failed)
                return
        if self._closing and self._drained is not None:
            self._drained.set()

    def _arm_fill_timer(self, delay_s: float) -> None:
        if self._fill_timer is not None:
            self._fill_timer.cancel()
        assert self._loop is not None
        self._fill_timer = self._loop.call_later(delay_s, self._fill_timer_fired)

    def _fill_timer_fired(self) -> None:
        self._fill_timer = None
        self._kick()

    def _mark_running(self, parts: list[Part], start: float) -> None:
        """`parts` run from `start` (none: the level is free). Under the lock."""
        self._running = parts
        self.running_samples = sum(p.stop - p.start for p in parts)
        self.running_since = start if parts else None
        self.running_batch = (start, self.running_samples) if parts else None
        for p in parts:
            if p.request.first_start is None:
                p.request.first_start = start

    def _fail_unrun(self, expired: list[Request], late: list[Request]) -> None:
        for request in expired:
            _fail(request, DeadlineExceeded(f"{self.name}: deadline passed before running"))
        for request in late:
            _fail(request, Shed(f"{self.name}: cannot be answered within its latency budget; not run"))

    def _run_batches(self, parts: list[Part]) -> None:
        """On the level's thread: run `parts`, then, while `_chains` says so, take the next batch here
        and run it at once (see the module docstring), handing each batch's outputs (or error) back
        to the event loop as it ends."""
        loop = self._loop
        assert loop is not None
        while parts:
            batch = parts[0].rows if len(parts) == 1 else np.concatenate([p.rows for p in parts])
            size = len(batch)
            t0 = time.perf_counter()
            outputs: Outputs | None = None
            error: BaseException | None = None
            try:
                outputs = self._run(batch)
            except BaseException as exc:
                error = exc
            compute = time.perf_counter() - t0
            del batch
            nxt: list[Part] = []
            expired: list[Request] = []
            late: list[Request] = []
            with self._lock:
                now = time.monotonic()
                if error is None and self._chains(compute, size, parts):
                    nxt, expired, late = self._queue.take(self.max_batch_size, now, self._cost_s)
                self._mark_running(nxt, now)
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits any more
                loop.call_soon_threadsafe(self._finished, parts, outputs, compute, error, expired, late)
            parts = nxt

    def _thread_failed(self, result: object, error: BaseException | None) -> None:
        """_run_batches' own end, on the level's thread: if it failed outside a run (a bug), the
        batch it held gets the error and the level is free again, rather than held forever."""
        if error is None:
            return
        log.error("%s: batch loop failed", self.name, exc_info=error)
        with self._lock:
            running = self._running
            self._mark_running([], time.monotonic())
        loop = self._loop
        if loop is not None and running:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finished, running, None, 0.0, error, [], [])

    def _chains(self, compute_s: float, rows: int, parts: list[Part]) -> bool:
        """Whether the level's thread takes the next batch itself (see _run_batches), under the
        lock: the level, not the event loop, holds answers back (a row of it cost more than the
        loop's work for a request, and work piled up about as fast as it ran: at least half a
        batch), with no batching delay to honour (else the loop's fill timer decides), and the
        batch that ended held no latency-budgeted request (those are shed at the head of the queue
        by the loop's pace: chained, the bench's overload at 4x fell from 99.4% of answers within
        budget to 97.6% in back-to-back runs)."""
        return (
            all(p.request.finish_by == float("inf") for p in parts)
            and not self._stopped
            and (self.max_delay_s <= 0 or self._closing)
            and compute_s >= rows * self._loop_cost_s()
            and 2 * self._queue.samples >= rows
        )

    def _finished(
        self,
        parts: list[Part],
        outputs: Outputs | None,
        compute: float,
        error: BaseException | None,
        expired: list[Request],
        late: list[Request],
    ) -> None:
        """On the event loop: a batch's outputs (or error) to its requests, then the next batch if
        the level's thread did not take one."""
        if self._stopped:
            return  # closed past its drain timeout; those requests got 503
        self._fail_unrun(expired, late)
        if error is None:
            assert outputs is not None
            size, offset = sum(p.stop - p.start for p in parts), 0
            self._last_compute_s, self._last_rows = compute, size
            if self._on_batch is not None:
                self._on_batch(size, compute)
            for p in parts:
                rows = p.stop - p.start
                _deliver(p, {k: v[offset : offset + rows] for k, v in outputs.items()}, compute, size)
                offset += rows
        else:
            if not isinstance(error, ServiceError):
                error = InferenceFailed(f"{self.name}: inference failed: {type(error).__name__}: {error}")
            with self._lock:
                for p in parts:
                    self._queue.remove(p.request)
            for p in parts:
                _fail(p.request, error)
        self._kick()

    def _expire(self, request: Request) -> None:
        """The deadline passed: 504 if rows of it are still queued (those never run); if all its
        rows are running, its answer is moments away and is awaited `max_overrun_s` more."""
        if request.future.done():
            return
        with self._lock:
            queued = request.left > 0
            if queued:
                self._queue.remove(request)
        if queued:
            _fail(request, DeadlineExceeded(f"{self.name}: deadline passed while queued; not executed"))
        elif self.max_overrun_s is not None:
            assert self._loop is not None
            request.timer = self._loop.call_later(self.max_overrun_s, self._abandon, request)

    def _abandon(self, request: Request) -> None:
        _fail(
            request,
            DeadlineExceeded(
                f"{self.name}: still running {self.max_overrun_s:g} s past its deadline (a stuck "
                "session?); answer abandoned"
            ),
        )

    def stop_intake(self) -> None:
        """Refuse new requests (503); what is queued runs without waiting for batches to fill."""
        self._closing = True
        if self._fill_timer is not None:
            self._fill_timer.cancel()
            self._fill_timer = None
        if self._loop is not None:
            self._kick()

    async def close(self, timeout_s: float = 0.0) -> None:
        """Stop intake, let queued work finish for up to `timeout_s`, fail the rest (503)."""
        self._drained = asyncio.Event()
        self.stop_intake()
        if self._queue or self.running_since is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        with self._lock:  # the level's thread takes no batch from here on
            self._stopped = True
            running, left = self._running, self._queue.drain()
            self._mark_running([], 0.0)
        for p in running:
            _fail(p.request, Unavailable(f"{self.name}: shut down while this request ran"))
        for request in left:
            _fail(request, Unavailable(f"{self.name}: shut down before this request ran"))
        self._deadlines.cancel()
        self._worker.shutdown()


def _deliver(part: Part, outputs: Outputs, compute_s: float, batch_size: int) -> None:
    request = part.request
    request.parts.append(outputs)
    request.done_rows += part.stop - part.start
    request.compute_s += compute_s
    request.batch_size = max(request.batch_size, batch_size)
    if request.done_rows < request.n or request.future.done():
        return
    pieces = request.parts
    mine = pieces[0] if len(pieces) == 1 else {k: np.concatenate([o[k] for o in pieces]) for k in pieces[0]}
    assert request.first_start is not None
    queue_s = request.first_start - request.enqueued
    request.future.set_result(BatchResult(mine, queue_s, request.compute_s, request.batch_size))


def _fail(request: Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
