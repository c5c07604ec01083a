"""The dynamic batcher: idle start, batching during runs, chunking, priorities, queue bound, deadlines,
errors, close. Timing is controlled with the model's gate (a batch runs until the test opens it)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.batcher import Batcher, BatchResult
from service.errors import BadRequest, DeadlineExceeded, InferenceFailed, Unavailable
from service.runtime import Interrupted


class Model:
    """Doubles its input; records every batch it ran; optionally slow, blocked, or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.delay_s = delay_s
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.gate.wait(5)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(x.copy())
        return {"y": x * 2}


def run(test: Callable[..., Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        model = Model(**{k: kw.pop(k) for k in ("delay_s", "fail") if k in kw})
        opts = {"max_batch_size": 8, "max_delay_s": 0.02, "max_queue_samples": 64, **kw}
        batcher = Batcher(model, name="test", **opts)
        batcher.start()
        try:
            await test(batcher, model)
        finally:
            await batcher.close(1.0)

    asyncio.run(main())


def rows(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.float32)


def soon(s: float = 5.0) -> float:
    return time.monotonic() + s


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def running(b: Batcher) -> Callable[[], bool]:
    return lambda: b.running_since is not None


def queued(b: Batcher, samples: int) -> Callable[[], bool]:
    return lambda: b.queued_samples == samples


def test_a_lone_request_on_an_idle_level_starts_at_once() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        task = asyncio.create_task(b.submit(rows(1), deadline=soon()))
        await asyncio.sleep(0)  # one step of the loop: submit ran, no timer could have fired
        assert b.running_since is not None and b.running_samples == 1 and b.queued_samples == 0
        model.gate.set()
        assert (await task).batch_size == 1

    run(test, max_delay_s=0.0)


def test_requests_arriving_during_a_run_form_the_next_batch() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        first = asyncio.create_task(b.submit(rows(1, -1), deadline=soon()))
        await asyncio.sleep(0)
        assert b.running_samples == 1
        later = [asyncio.create_task(b.submit(rows(1, i), deadline=soon())) for i in range(6)]
        await until(queued(b, 6))
        model.gate.set()
        results = await asyncio.gather(first, *later)
        assert [len(x) for x in model.batches] == [1, 6]
        for i, r in enumerate(results[1:]):
            assert isinstance(r, BatchResult) and r.batch_size == 6
            np.testing.assert_array_equal(r.outputs["y"], rows(1, 2 * i))
            assert r.queue_s >= 0 and r.compute_s >= 0

    run(test, max_delay_s=0.0)


async def _second_batch_during_a_blocked_loop(
    b: Batcher, model: Model, finish_by: float = float("inf")
) -> tuple[bool, list[BatchResult]]:
    """Batch [1 row] runs; 6 rows queue behind it; the batch ends while the event loop is blocked
    (0.3 s). Whether the 6-row batch had started by the time the loop ran again, and the results."""
    model.gate.clear()
    first = asyncio.create_task(b.submit(rows(1, -1), deadline=soon(), finish_by=finish_by))
    await until(running(b))
    later = [asyncio.create_task(b.submit(rows(1, i), deadline=soon())) for i in range(6)]
    await until(queued(b, 6))
    model.gate.set()
    time.sleep(0.3)  # the loop is blocked: only the level's thread can start the next batch
    started = len(model.batches) == 2 or b.running_samples == 6
    return started, await asyncio.gather(first, *later)


def test_a_level_that_falls_behind_starts_its_next_batch_on_its_thread() -> None:
    async def test(b: Batcher, model: Model) -> None:
        started, results = await _second_batch_during_a_blocked_loop(b, model)
        assert started  # the next batch did not wait for the event loop
        assert [len(x) for x in model.batches] == [1, 6]
        for i, r in enumerate(results[1:]):
            np.testing.assert_array_equal(r.outputs["y"], rows(1, 2 * i))

    run(test, max_delay_s=0.0)


def test_after_a_batch_with_a_latency_budget_the_loop_takes_the_next() -> None:
    async def test(b: Batcher, model: Model) -> None:
        started, results = await _second_batch_during_a_blocked_loop(b, model, finish_by=soon(60))
        assert not started  # budgeted requests are shed at the loop's pace: no chaining after them
        assert [len(x) for x in model.batches] == [1, 6]
        assert all(isinstance(r, BatchResult) for r in results)

    run(test, max_delay_s=0.0)


def test_a_level_faster_than_the_loop_leaves_the_next_batch_to_the_loop() -> None:
    async def test(b: Batcher, model: Model) -> None:
        started, results = await _second_batch_during_a_blocked_loop(b, model)
        assert not started  # a row costs less than the loop's work per request: the loop starts it
        assert [len(x) for x in model.batches] == [1, 6]
        assert all(isinstance(r, BatchResult) for r in results)

    run(test, max_delay_s=0.0, loop_cost_s=lambda: 10.0)


def test_with_a_queue_delay_a_partial_batch_waits_to_fill() -> None:
    async def test(b: Batcher, model: Model) -> None:
        first = asyncio.create_task(b.submit(rows(1, 1), deadline=soon()))
        await asyncio.sleep(0)
        assert b.running_since is None and b.queued_samples == 1  # waiting for company
        second = asyncio.create_task(b.submit(rows(2, 2), deadline=soon()))
        await asyncio.gather(first, second)
        assert [len(x) for x in model.batches] == [3]

    run(test, max_delay_s=0.2)


def test_a_full_batch_starts_without_waiting_for_the_delay() -> None:
    async def test(b: Batcher, model: Model) -> None:
        tasks = [asyncio.create_task(b.submit(rows(2), deadline=soon())) for _ in range(4)]
        await asyncio.sleep(0)
        assert b.running_samples == 8
        await asyncio.gather(*tasks)
        assert [len(x) for x in model.batches] == [8]

    run(test, max_delay_s=10.0)


def test_large_requests_run_in_chunks_interleaved_and_come_back_in_order() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()  # hold the first batch so the rest queue up together
        first = asyncio.create_task(b.submit(rows(1), deadline=soon()))
        await until(running(b))
        big = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
        tasks = [asyncio.create_task(b.submit(x, deadline=soon())) for x in (rows(5, 3), rows(5, 4), big)]
        await until(queued(b, 22))
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        assert [len(x) for x in model.batches] == [1, 8, 8, 6]  # never more than max_batch_size
        np.testing.assert_array_equal(results[1].outputs["y"], rows(5, 6))
        np.testing.assert_array_equal(results[2].outputs["y"], rows(5, 8))
        np.testing.assert_array_equal(results[3].outputs["y"], big * 2)  # reassembled in order
        assert results[3].batch_size == 8

    run(test, max_delay_s=0.0)


def test_a_small_request_behind_a_max_size_one_waits_at_most_two_batches() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        big = asyncio.create_task(b.submit(rows(64, 1), deadline=soon()))  # the queue's limit
        await until(running(b))  # its first chunk runs
        small = asyncio.create_task(b.submit(rows(1, 7), deadline=soon()))
        await until(queued(b, 64 - 8 + 1))
        model.gate.set()
        await asyncio.gather(big, small)
        ran_in = next(i for i, x in enumerate(model.batches) if 7 in x)
        assert ran_in <= 2, [len(x) for x in model.batches]  # behind the running chunk and one more
        assert all(len(x) <= 8 for x in model.batches)

    run(test, max_delay_s=0.0)


def test_lower_priority_numbers_run_first() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        blocker = asyncio.create_task(b.submit(rows(8, -1), deadline=soon()))
        await until(running(b))
        tasks = [asyncio.create_task(b.submit(rows(8, p), deadline=soon(), priority=p)) for p in (5, 1, 3)]
        await until(queued(b, 24))
        model.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert [float(x[0, 0]) for x in model.batches] == [-1, 1, 3, 5]

    run(test)


def test_queue_bound_counts_samples_and_rejects_with_503() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        first = asyncio.create_task(b.submit(rows(4), deadline=soon()))
        await until(running(b))  # running now, so out of the queue
        second = asyncio.create_task(b.submit(rows(7), deadline=soon()))
        await until(queued(b, 7))
        with pytest.raises(Unavailable) as info:
            await b.submit(rows(2), deadline=soon())
        assert info.value.status == 503 and "Retry-After" in info.value.headers
        with pytest.raises(BadRequest):  # could never fit, retrying will not help
            await b.submit(rows(9), deadline=soon())
        model.gate.set()
        await asyncio.gather(first, second)
        assert b.queued_samples == 0

    run(test, max_queue_samples=8)


def test_expired_requests_get_504_and_are_not_executed() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        blocker = asyncio.create_task(b.submit(rows(8), deadline=soon()))
        await until(running(b))
        with pytest.raises(DeadlineExceeded) as info:
            await b.submit(rows(1, 7), deadline=soon(0.05))
        assert info.value.status == 504 and b.queued_samples == 0
        model.gate.set()
        await blocker
        ok = await b.submit(rows(1, 3), deadline=soon())
        assert ok.batch_size == 1
        assert all(7 not in x for x in model.batches)

    run(test)


def test_a_stuck_batch_leaves_no_request_hanging() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()  # the session hangs
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="answer abandoned"):
            await b.submit(rows(1), deadline=soon(0.05))
        assert 0.1 < time.monotonic() - started < 2
        model.gate.set()  # it comes back: the level serves again
        assert (await b.submit(rows(1, 2), deadline=soon())).batch_size == 1

    run(test, max_overrun_s=0.1)


def test_an_already_expired_request_never_runs() -> None:
    async def test(b: Batcher, model: Model) -> None:
        with pytest.raises(DeadlineExceeded):
            await b.submit(rows(1), deadline=time.monotonic() - 1)
        await asyncio.sleep(0.05)
        assert model.batches == []

    run(test)


def test_an_error_reaches_every_request_of_the_batch() -> None:
    async def test(b: Batcher, model: Model) -> None:
        results = await asyncio.gather(
            *(b.submit(rows(1), deadline=soon()) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, InferenceFailed) and "boom" in str(r) for r in results)
        model.fail = False
        assert (await b.submit(rows(1), deadline=soon())).batch_size == 1  # the batcher lives on

    run(test, fail=True)


def test_a_cancelled_request_leaves_the_queue() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        blocker = asyncio.create_task(b.submit(rows(8), deadline=soon()))
        await until(running(b))
        gone = asyncio.create_task(b.submit(rows(3, 9), deadline=soon()))
        await until(queued(b, 3))
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert b.queued_samples == 0
        model.gate.set()
        await blocker
        await asyncio.sleep(0.05)
        assert len(model.batches) == 1

    run(test)


def test_close_drains_the_queue_then_refuses_new_work() -> None:
    async def main() -> None:
        model = Model(delay_s=0.01)
        b = Batcher(model, name="t", max_batch_size=2, max_delay_s=0.0, max_queue_samples=64)
        b.start()
        tasks = [asyncio.create_task(b.submit(rows(2), deadline=soon())) for _ in range(5)]
        await asyncio.sleep(0)
        await b.close(timeout_s=5)
        assert all(t.done() and t.exception() is None for t in tasks)
        with pytest.raises(Unavailable):
            await b.submit(rows(1), deadline=soon())

    asyncio.run(main())


def test_close_past_its_timeout_fails_what_is_left_with_503() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()
        b = Batcher(model, name="t", max_batch_size=1, max_delay_s=0.0, max_queue_samples=64)
        b.start()
        tasks = [asyncio.create_task(b.submit(rows(1), deadline=soon())) for _ in range(3)]
        await until(lambda: b.running_since is not None and b.queued_samples == 2)
        await b.close(timeout_s=0.05)
        model.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, Unavailable) for r in results)

    asyncio.run(main())


def test_a_lone_request_on_a_small_idle_level_runs_inline() -> None:
    """After a fast batch, a request on the quiet level runs on the event loop: no thread hop, even
    when it comes at once after the last answer (a client at concurrency 1 on a level whose run takes
    longer than the client's turnaround)."""

    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(2), deadline=soon())  # the first batch runs on the thread, and times it
        threads = on_threads(b)
        result = await b.submit(rows(2, 3), deadline=soon())
        assert threads == [threading.current_thread().name]
        np.testing.assert_array_equal(result.outputs["y"], rows(2, 6))
        assert result.queue_s == 0 and result.batch_size == 2
        with pytest.raises(DeadlineExceeded):  # its deadline still holds
            await b.submit(rows(1), deadline=time.monotonic() - 1)
        model.gate.clear()  # a request larger than the last batch is not known to be small: thread
        task = asyncio.create_task(b.submit(rows(3), deadline=soon()))
        await asyncio.sleep(0)
        assert b.running_since is not None
        model.gate.set()
        await task
        assert len(model.batches) == 3

    run(test, max_delay_s=0.0, inline_max_s=1.0)


def on_threads(b: Batcher) -> list[str]:
    """The names of the threads the batcher's runs run on, from now on, in order."""
    names: list[str] = []
    model_call = b._run

    def recording(x: np.ndarray) -> dict[str, np.ndarray]:
        names.append(threading.current_thread().name)
        return model_call(x)

    b._run = recording
    return names


def test_requests_arriving_while_an_inline_candidate_looks_run_with_it_on_the_thread() -> None:
    """At load the candidate finds company within its settle: one batch, on the level's thread."""

    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())  # a fast first batch: the level may run inline
        threads = on_threads(b)
        tasks = [asyncio.create_task(b.submit(rows(1, i), deadline=soon())) for i in range(3)]
        results = await asyncio.gather(*tasks)
        assert [len(x) for x in model.batches] == [1, 3]
        assert threads == ["infer-test"]
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.outputs["y"], rows(1, 2 * i))
            assert r.batch_size == 3

    run(test, max_delay_s=0.0, inline_max_s=1.0)


def test_the_only_request_in_the_server_runs_inline_without_settling() -> None:
    """`only_request` (nothing else in flight, the engine's count): no settle turns, so a request
    arriving in the same turn does not join it: it waits for the inline run, then runs on its own
    (without `only_request` the two would form one batch of 2 on the thread)."""

    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())  # a fast first batch: the level may run inline
        threads = on_threads(b)
        alone = asyncio.create_task(b.submit(rows(1), deadline=soon(), only_request=True))
        later = asyncio.create_task(b.submit(rows(1, 3), deadline=soon()))
        first, second = await asyncio.gather(alone, later)
        assert [len(x) for x in model.batches] == [1, 1, 1]
        assert threads == ["MainThread", "MainThread"]  # each inline (the second settled: nobody came)
        assert first.batch_size == second.batch_size == 1
        np.testing.assert_array_equal(second.outputs["y"], rows(1, 6))

    run(test, max_delay_s=0.0, inline_max_s=1.0)


def test_while_a_candidate_looks_no_batch_starts_and_what_came_starts_if_it_goes() -> None:
    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())
        candidate = asyncio.create_task(b.submit(rows(1), deadline=soon()))
        await asyncio.sleep(0)  # it holds the level for its settle
        assert not b.idle
        other = asyncio.create_task(b.submit(rows(1, 5), deadline=soon()))
        await asyncio.sleep(0)
        assert b.queued_samples == 1 and b.running_since is None  # queued behind the candidate
        candidate.cancel()  # the candidate's caller goes away: the other request starts
        result = await other
        np.testing.assert_array_equal(result.outputs["y"], rows(1, 10))
        assert candidate.cancelled()

    run(test, max_delay_s=0.0, inline_max_s=1.0)


def test_a_candidate_still_looking_when_the_level_closes_gets_503() -> None:
    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())
        candidate = asyncio.create_task(b.submit(rows(1), deadline=soon()))
        await asyncio.sleep(0)
        b.stop_intake()
        with pytest.raises(Unavailable):
            await candidate
        assert len(model.batches) == 1

    run(test, max_delay_s=0.0, inline_max_s=1.0)


def test_a_stalled_inline_run_runs_again_on_the_thread_and_inline_pauses_longer_each_time() -> None:
    """A stalled inline run: its rows run on the thread, and the level keeps to its thread for
    inline_pause_s, then runs inline again; a second stall keeps it there twice as long."""
    pause_s = 0.2

    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())  # times a first, fast batch (on the thread)
        await asyncio.sleep(0.01)
        ended: list[str] = []

        def stalled(x: np.ndarray) -> dict[str, np.ndarray]:  # what the watchdog's end looks like
            ended.append(threading.current_thread().name)
            raise Interrupted("inline run ended after 20 ms")

        b._run_inline = stalled
        before = time.monotonic()
        result = await b.submit(rows(1, 4), deadline=soon())
        assert ended == [threading.current_thread().name]  # tried on the loop, once
        np.testing.assert_array_equal(result.outputs["y"], rows(1, 8))  # answered, from the thread
        assert len(model.batches) == 2 and b.stalls == 1
        assert before + pause_s <= b.inline_from <= time.monotonic() + pause_s
        await asyncio.sleep(0.01)
        threads = on_threads(b)
        await b.submit(rows(1), deadline=soon())
        assert len(ended) == 1 and threads == ["infer-test"]  # within the pause: the level's thread
        await asyncio.sleep(max(0.0, b.inline_from - time.monotonic()) + 0.01)
        before = time.monotonic()
        await b.submit(rows(1), deadline=soon())  # past it: inline again, and it stalls again
        assert len(ended) == 2 and b.stalls == 2
        assert before + 2 * pause_s <= b.inline_from <= time.monotonic() + 2 * pause_s  # twice as long
        b._run_inline = None  # the level recovers: its runs are the model's again
        await asyncio.sleep(max(0.0, b.inline_from - time.monotonic()) + 0.01)
        del threads[:]
        await b.submit(rows(1), deadline=soon())
        assert threads == [threading.current_thread().name]  # a level that recovers runs inline

    run(test, max_delay_s=0.0, inline_max_s=1.0, inline_pause_s=pause_s)


def test_a_stall_after_a_clean_stretch_pauses_inline_runs_only_inline_pause_s_again() -> None:
    """Stalls soon after each other double the pause; one that comes after a clean stretch as long
    as the last pause, after it ended, is a first stall again (the machine's occasional pauses do
    not add up over the process's life)."""
    pause_s = 0.05

    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())  # times a first, fast batch (on the thread)

        def stalled(x: np.ndarray) -> dict[str, np.ndarray]:
            raise Interrupted("inline run ended after 20 ms")

        b._run_inline = stalled
        pauses = []
        for wait_after_pause_s in (0.005, 0.005, 4 * 2 * pause_s + 0.02):
            await asyncio.sleep(max(0.0, b.inline_from - time.monotonic()) + wait_after_pause_s)
            before = time.monotonic()
            await b.submit(rows(1), deadline=soon())  # inline: it stalls, and runs on the thread
            pauses.append(b.inline_from - before)
        assert b.stalls == 3
        assert pause_s <= pauses[0] < 1.5 * pause_s and 2 * pause_s <= pauses[1] < 3 * pause_s
        assert pause_s <= pauses[2] < 1.5 * pause_s  # after 4 x the last pause clean: the first again

    run(test, max_delay_s=0.0, inline_max_s=1.0, inline_pause_s=pause_s)


def test_a_slow_level_keeps_running_on_its_thread() -> None:
    async def test(b: Batcher, model: Model) -> None:
        await b.submit(rows(1), deadline=soon())  # 20 ms: over the inline limit
        await asyncio.sleep(0.05)
        model.gate.clear()
        task = asyncio.create_task(b.submit(rows(1), deadline=soon()))
        await asyncio.sleep(0)  # inline, it would be blocked on the gate right here, on the loop
        assert b.running_since is not None
        model.gate.set()
        assert (await task).queue_s >= 0 and len(model.batches) == 2

    run(test, max_delay_s=0.0, delay_s=0.02, inline_max_s=0.01)


class TimerCount:
    """Counts the timers armed on the running loop (call_at and call_later)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = 0
        for name in ("call_at", "call_later"):
            real = getattr(loop, name)

            def counted(*args: Any, _real: Any = real) -> Any:
                self.armed += 1
                return _real(*args)

            monkeypatch.setattr(loop, name, counted)


def test_many_requests_share_one_deadline_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(b: Batcher, model: Model) -> None:
        timers = TimerCount(asyncio.get_running_loop(), monkeypatch)
        for _ in range(50):
            await b.submit(rows(1), deadline=soon())
        assert timers.armed <= 2, timers.armed  # was one per request

    run(test, max_delay_s=0.0)


def test_a_shorter_deadline_behind_longer_ones_still_expires_on_time() -> None:
    async def test(b: Batcher, model: Model) -> None:
        model.gate.clear()
        blocker = asyncio.create_task(b.submit(rows(8), deadline=soon(30)))
        await until(running(b))
        patient = asyncio.create_task(b.submit(rows(1, 5), deadline=soon(30)))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.submit(rows(1, 7), deadline=soon(0.05))
        assert time.monotonic() - started < 1.0
        model.gate.set()
        await blocker
        assert (await patient).batch_size == 1  # the longer deadline was not expired with it
        assert all(7 not in x for x in model.batches)

    run(test)


def test_answered_requests_leave_the_deadline_heap() -> None:
    async def test(b: Batcher, model: Model) -> None:
        for _ in range(3000):
            await b.submit(rows(1), deadline=soon(60))
        assert len(b._deadlines) <= 2 * 1024 + 1  # compacted, not one entry per answer for 60 s

    run(test, max_delay_s=0.0)


def test_an_answered_request_keeps_no_rows_alive() -> None:
    """The deadline heap holds requests weakly: a large request's rows go once it is answered."""

    async def test(b: Batcher, model: Model) -> None:
        big = rows(64)
        gone = weakref.ref(big)
        await b.submit(big, deadline=soon(60))
        model.batches.clear()  # the model's own record of what it ran
        del big
        gc.collect()
        assert gone() is None

    run(test, max_delay_s=0.0)
