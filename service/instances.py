"""A level's model instances (Triton's `instance_group { count }`): `count` batchers over the level's
one session, each with its own inference thread and queue, so batches of one level run side by side.

Why: one onnxruntime thread per session is what runs fastest per sample on a small model, and at high
load one level's thread is then busy all the time while the other cores wait (the bench's overhead
section, digits at concurrency 64: the level 98% busy, the server using 1.2 of 2 cores). onnxruntime
runs one session from several threads at once; each run holds the GIL only to hand over its inputs
and take back its outputs.

A request goes to the instance it would start soonest on (`next`): an idle one, else the one with the
fewest samples queued and running. Each instance batches, orders, sheds and drains as service.batcher
says; what waits ahead of a request, and so what the policy predicts, is its instance's. The queue
limit (`max_queue_size`) is the level's in all: each instance holds its share. With one instance
(the default) this is that batcher and nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from service.batcher import Batcher, BatchResult


def share(total: int, count: int) -> int:
    """Each of `count` instances' part of a level's queue limit of `total` samples (at least 1)."""
    return max(1, total // count)


class Instances:
    __slots__ = ("batchers",)

    def __init__(self, batchers: list[Batcher]) -> None:
        if not batchers:
            raise ValueError("a level needs at least one instance")
        self.batchers = batchers

    def next(self) -> Batcher:
        """The instance a request arriving now starts soonest on: the first idle one, else the one
        with the fewest samples queued and running (the first of equals)."""
        if len(self.batchers) == 1:
            return self.batchers[0]
        best, fewest = self.batchers[0], -1
        for b in self.batchers:
            if b.idle:
                return b
            running = b.running_batch  # one read: the instance's thread may change it
            load = b.queued_samples + (running[1] if running is not None else 0)
            if fewest < 0 or load < fewest:
                best, fewest = b, load
        return best

    async def submit(self, rows: np.ndarray, **options: Any) -> BatchResult:
        """`Batcher.submit` on the instance `next` names when this runs (not when it is called: a
        request picks by the instances' state as it arrives)."""
        return await self.next().submit(rows, **options)

    @property
    def queued_samples(self) -> int:
        return sum(b.queued_samples for b in self.batchers)

    async def call(self, fn: Callable[[], object]) -> None:
        """Run `fn` on the first instance's thread (warm-up: every instance runs the same session)."""
        await self.batchers[0].call(fn)

    def start(self) -> None:
        for b in self.batchers:
            b.start()

    def stop_intake(self) -> None:
        for b in self.batchers:
            b.stop_intake()

    async def close(self, timeout_s: float = 0.0) -> None:
        await asyncio.gather(*(b.close(timeout_s) for b in self.batchers))
