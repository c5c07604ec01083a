"""Forming batches (service.batch_queue): with a cost per batch size, a batch holds only the requests
it can finish by their finish_by; rows queued behind a request cannot make it late."""

from __future__ import annotations

import numpy as np

from service.batch_queue import BatchQueue, Request

INF = float("inf")


class Pending:
    """A future that is never done (the queue only asks)."""

    def done(self) -> bool:
        return False


def cost(rows: int) -> float:
    return 0.010 * rows  # 10 ms a row


def queue(*finish_by: float) -> tuple[BatchQueue, list[Request]]:
    q = BatchQueue(max_samples=100)
    requests = [Request(np.zeros((1, 2), np.float32), 0, INF, 0.0, 0.0, Pending(), f) for f in finish_by]
    for r in requests:
        q.put(r)
    return q, requests


def test_rows_behind_a_request_wait_for_the_next_batch_rather_than_make_it_late() -> None:
    # the three together would end at 30 ms, after the first one's 25 ms: the batch stops at two
    q, (a, b, c) = queue(0.025, 0.5, 0.5)
    parts, expired, late = q.take(64, 0.0, cost)
    assert [p.request for p in parts] == [a, b] and expired == [] and late == []
    assert q.samples == 1  # c heads the next batch, which ends in time for it
    parts, _, late = q.take(64, 0.02, cost)
    assert [p.request for p in parts] == [c] and late == []


def test_a_request_not_even_the_next_batch_can_finish_in_time_is_late() -> None:
    # behind a (10 ms, by 15): in a's batch it ends at 20 ms, in the next one at 20 ms too: past 19
    q, (a, d, e) = queue(0.015, 0.019, INF)
    parts, _, late = q.take(64, 0.0, cost)
    assert [p.request for p in parts] == [a] and late == [d] and d.removed
    assert q.samples == 1 and not e.removed  # no budget: it waits, never late


def test_without_a_cost_nothing_is_late() -> None:
    q, requests = queue(0.001, 0.002)
    parts, _, late = q.take(64, 0.0)
    assert [p.request for p in parts] == requests and late == []
