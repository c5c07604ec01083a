"""The queue a level's batches are formed from: put a request, take up to N rows.

Forming batches is kept apart from running them (service.batcher runs what is taken here), so
the order rules live in one small place with no threads, timers or event loop:

- Lower priority numbers first; FIFO within a priority.
- A request's rows are taken in order, as many as fit. A request with rows left goes to the back
  of its priority, so other requests' rows interleave with a large request's chunks: a 1-row request
  that arrives behind a max-size one waits for at most about two full batches.
- Bounded in samples (rows not yet taken); `fits` says whether a request would fit.
- A removed request (expired, cancelled, failed) is skipped lazily when it reaches the head.
- A request found at the head past its deadline is expired: it leaves the queue unrun, for the
  caller to fail.
- With a `cost` (rows -> predicted seconds of a batch), a batch holds only what it can finish in
  time: the head's rows join it while its predicted end (now + cost(rows in it)) is at or before the
  `finish_by` (the latest end of a request's batch that still meets its latency budget,
  service.policy.finish_by) of every request in it. A request that would end it too late waits for
  the next batch, unless that one too would end after its finish_by (now + cost(rows before it) +
  cost(its rows)): then it is late, and leaves the queue unrun. So under overload the requests
  queued behind one cannot make it late: its batch is cut short instead (on CPU a batch's cost is
  close to linear in its rows, so short batches cost little throughput), and what cannot be
  finished in time is shed when it reaches the head, not after the batch that would answer it late.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Request:
    """One caller's rows and what is known of their progress (the batcher fills in the rest)."""

    __slots__ = (
        "__weakref__",  # service.batcher's deadline heap holds requests weakly
        "batch_size",
        "compute_s",
        "deadline",
        "done_rows",
        "enqueued",
        "finish_by",
        "first_start",
        "future",
        "parts",
        "priority",
        "removed",
        "rows",
        "start_by",
        "taken",
        "timer",
    )  # fmt: skip

    def __init__(
        self,
        rows: np.ndarray,
        priority: int,
        deadline: float,
        enqueued: float,
        start_by: float,
        future: Any,
        finish_by: float = float("inf"),
    ) -> None:
        self.rows = rows  # [n, *input shape]
        self.priority = priority
        self.deadline = deadline  # time.monotonic()
        self.enqueued = enqueued
        self.start_by = start_by  # its first batch starts by then, full or not
        self.finish_by = finish_by  # a batch of it ending later would answer past its budget
        self.future = future
        self.taken = 0  # rows handed to batches so far
        self.done_rows = 0  # rows whose outputs came back
        self.removed = False  # out of the queue for good
        self.parts: list[dict[str, np.ndarray]] = []  # outputs per finished chunk, in row order
        self.first_start: float | None = None
        self.compute_s = 0.0
        self.batch_size = 0  # the largest batch any of its rows ran in
        self.timer: Any = None

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def left(self) -> int:
        """Rows still queued (not yet taken)."""
        return 0 if self.removed else self.n - self.taken


@dataclass(frozen=True, slots=True)
class Part:
    """Rows [start, stop) of a request, in a batch."""

    request: Request
    start: int
    stop: int

    @property
    def rows(self) -> np.ndarray:
        r = self.request.rows
        return r if self.start == 0 and self.stop == len(r) else r[self.start : self.stop]


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    request: Request = field(compare=False)


class BatchQueue:
    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self.samples = 0  # rows queued, not yet taken
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        return self.samples > 0

    def fits(self, rows: int) -> bool:
        return self.samples + rows <= self.max_samples

    def put(self, request: Request) -> None:
        heapq.heappush(self._heap, _Entry(request.priority, next(self._seq), request))
        self.samples += request.n

    def remove(self, request: Request) -> None:
        """Its rows not yet taken leave the queue (idempotent)."""
        if not request.removed:
            self.samples -= request.left
            request.removed = True

    def take(
        self, max_rows: int, now: float, cost: Callable[[int], float] | None = None
    ) -> tuple[list[Part], list[Request], list[Request]]:
        """Up to `max_rows` rows in priority order, and the requests found at the head expired
        (deadline passed) and late (see the module docstring; no `cost`: none is late), removed,
        for the caller to fail."""
        parts: list[Part] = []
        expired: list[Request] = []
        late: list[Request] = []
        room = max_rows
        earliest = float("inf")  # the earliest finish_by among the requests in the batch
        while room and self._heap:
            request = self._heap[0].request
            if request.removed or request.future.done():
                heapq.heappop(self._heap)
                self.remove(request)
                continue
            if request.deadline <= now:
                heapq.heappop(self._heap)
                self.remove(request)
                expired.append(request)
                continue
            start = request.taken
            stop = start + min(room, request.n - start)
            if cost is not None:
                rows = max_rows - room
                if now + cost(rows + stop - start) > min(earliest, request.finish_by):
                    if rows and now + cost(rows) + cost(stop - start) <= request.finish_by:
                        break  # it heads the next batch, which it can still make
                    heapq.heappop(self._heap)
                    self.remove(request)
                    late.append(request)
                    continue
                earliest = min(earliest, request.finish_by)
            parts.append(Part(request, start, stop))
            request.taken = stop
            self.samples -= stop - start
            room -= stop - start
            if stop == request.n:
                heapq.heappop(self._heap)
            else:  # rows left: to the back of its priority, behind whoever came meanwhile
                heapq.heapreplace(self._heap, _Entry(request.priority, next(self._seq), request))
        return parts, expired, late

    def oldest_start_by(self) -> float | None:
        """When the next batch must start, full or not (None: nothing queued)."""
        return min((e.request.start_by for e in self._heap if e.request.left), default=None)

    def drain(self) -> list[Request]:
        """Empty the queue; the requests that still had rows in it."""
        left = [e.request for e in self._heap if e.request.left]
        for request in left:
            self.remove(request)
        self._heap.clear()
        return left
