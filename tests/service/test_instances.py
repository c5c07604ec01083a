"""A level's instances: batches run side by side, requests go where they start soonest, the queue
limit is the level's in all, and a close drains every instance."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import live_server, make_settings, sample_inputs
from slow_session import SLOW, Slow

from export.manifest import Manifest
from service.batcher import Batcher
from service.errors import Unavailable
from service.instances import Instances, share


def rows(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.float32)


def soon(s: float = 5.0) -> float:
    return time.monotonic() + s


class Held:
    """Doubles its input once `gate` opens; counts how many runs are inside it at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.current_thread().name)
        try:
            self.gate.wait(5)
            return {"y": x * 2}
        finally:
            with self.lock:
                self.inside -= 1


def run(test: Callable[[Instances, Held], Awaitable[None]], count: int = 2, queue: int = 64) -> None:
    async def main() -> None:
        model = Held()
        batchers = [
            Batcher(
                model,
                name=f"test#{i}",
                max_batch_size=4,
                max_delay_s=0.0,
                max_queue_samples=share(queue, count),
            )
            for i in range(count)
        ]
        instances = Instances(batchers)
        instances.start()
        try:
            await test(instances, model)
        finally:
            model.gate.set()
            await instances.close(1.0)

    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 5 s")


def test_two_instances_run_two_batches_at_once_on_two_threads() -> None:
    async def test(instances: Instances, model: Held) -> None:
        first = asyncio.ensure_future(instances.submit(rows(1, 1.0), deadline=soon()))
        await until(lambda: model.inside == 1)
        second = asyncio.ensure_future(instances.submit(rows(1, 2.0), deadline=soon()))
        await until(lambda: model.inside == 2)  # one instance would hold it in its queue
        model.gate.set()
        a, b = await first, await second
        assert a.outputs["y"][0, 0] == 2.0 and b.outputs["y"][0, 0] == 4.0
        assert model.most_inside == 2 and len(model.threads) == 2

    run(test)


def test_one_instance_runs_one_batch_at_a_time() -> None:
    async def test(instances: Instances, model: Held) -> None:
        first = asyncio.ensure_future(instances.submit(rows(1), deadline=soon()))
        await until(lambda: model.inside == 1)
        second = asyncio.ensure_future(instances.submit(rows(1), deadline=soon()))
        await until(lambda: instances.queued_samples == 1)
        await asyncio.sleep(0.05)
        assert model.inside == 1
        model.gate.set()
        await first, await second
        assert model.most_inside == 1

    run(test, count=1)


def test_a_request_goes_to_the_instance_with_the_least_work_ahead_of_it() -> None:
    async def test(instances: Instances, model: Held) -> None:
        a, b = instances.batchers
        busy = [asyncio.ensure_future(instances.submit(rows(n), deadline=soon())) for n in (4, 1)]
        await until(lambda: model.inside == 2)
        assert a.running_batch is not None and b.running_batch is not None
        big, small = (a, b) if a.running_batch[1] == 4 else (b, a)
        assert instances.next() is small  # 1 sample running against 4
        waiting = asyncio.ensure_future(instances.submit(rows(2), deadline=soon()))
        await until(lambda: small.queued_samples == 2)
        assert big.queued_samples == 0 and instances.queued_samples == 2
        assert instances.next() is small  # 1 + 2 against 4 ahead
        model.gate.set()
        for f in [*busy, waiting]:
            await f

    run(test)


def test_the_queue_limit_is_the_levels_in_all() -> None:
    assert share(64, 2) == 32 and share(10, 3) == 3 and share(1, 4) == 1

    async def test(instances: Instances, model: Held) -> None:
        running = [asyncio.ensure_future(instances.submit(rows(1), deadline=soon())) for _ in range(2)]
        await until(lambda: model.inside == 2)
        queued = [asyncio.ensure_future(instances.submit(rows(4), deadline=soon())) for _ in range(2)]
        await until(lambda: instances.queued_samples == 8)  # 4 on each, each instance's share
        with pytest.raises(Unavailable, match="queue full"):
            await instances.submit(rows(1), deadline=soon())
        model.gate.set()
        for f in running + queued:
            await f

    run(test, queue=8)


def test_close_drains_every_instance_then_refuses_new_work() -> None:
    async def test(instances: Instances, model: Held) -> None:
        futures = [asyncio.ensure_future(instances.submit(rows(1), deadline=soon())) for _ in range(4)]
        await until(lambda: model.inside == 2)
        closing = asyncio.ensure_future(instances.close(2.0))
        await asyncio.sleep(0.02)
        with pytest.raises(Unavailable, match="shutting down"):
            await instances.submit(rows(1), deadline=soon())
        model.gate.set()
        await closing
        assert all(f.result().outputs["y"].shape == (1, 2) for f in futures)

    run(test)


def test_a_level_has_at_least_one_instance() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Instances([])


@pytest.mark.parametrize("instances", [1, 2])
def test_a_server_with_two_instances_per_level_runs_a_second_request_beside_the_first(
    bundle_path: Path, manifest: Manifest, instances: int
) -> None:
    """`level_instances=2` on a real uvicorn: a request that arrives while the level's first
    instance runs a 400 ms batch starts at once on the second; with one instance it waits."""
    x = sample_inputs(manifest, 2)
    x[0].flat[0] = SLOW + 400  # the session sleeps 400 ms on this batch
    url = f"/v1/models/{manifest.name}/predict"

    def body(i: int) -> dict[str, object]:
        return {"inputs": [x[i].tolist()], "sparsity_level": "full"}

    async def two(base: str) -> list[dict[str, object]]:
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as one,
            httpx.AsyncClient(base_url=base) as other,
        ):
            slow = asyncio.ensure_future(one.post(url, json=body(0), timeout=10))
            await asyncio.sleep(0.1)  # the slow batch is running
            fast = await other.post(url, json=body(1))
            return [r.json() for r in (await slow, fast)]

    settings = make_settings(bundle_path, max_queue_delay_ms=0.0, level_instances=instances)
    with live_server(settings, session_factory=Slow) as address:
        slow, fast = asyncio.run(two(f"http://{address}"))
    assert slow["batch_size"] == fast["batch_size"] == 1
    assert slow["compute_ms"] >= 400  # type: ignore[operator]
    if instances == 2:
        assert fast["queue_ms"] < 100  # type: ignore[operator]
    else:
        assert fast["queue_ms"] > 200  # type: ignore[operator]
