"""service.metrics keeps the request path's series as plain numbers: what it exposes must be what
prometheus_client's own `inc` and `observe` would have made of the same updates."""

from __future__ import annotations

from service.metrics import NO_LEVEL, UNKNOWN_MODEL, Metrics

# on bucket bounds (0.0005, 1.0), between them, past the last, negative: every branch of the search
VALUES = (0.0, 0.0004, 0.0005, 0.003, 1.0, 7.5, 31.0, -0.2, 1e-9)


def _pair() -> tuple[Metrics, Metrics]:
    ours, theirs = Metrics(), Metrics()
    for m in (ours, theirs):
        m.add_level("digits", "full", lambda: 2.0)
    return ours, theirs


def _update(ours: Metrics, theirs: Metrics, value: float) -> None:
    ours.observe_request("digits", "full", "success", value, value)
    theirs.requests.labels("digits", "full", "success").inc()
    theirs.request_duration.labels("digits", "full").observe(value)
    theirs.queue_wait.labels("digits", "full").observe(value)
    ours.observe_batch("digits", "full", 3, value)
    theirs.batch_size.labels("digits", "full").observe(3)
    theirs.compute.labels("digits", "full").observe(value)
    theirs.inferred_samples.labels("digits", "full").inc(3)
    ours.selected("digits", "full", "explicit")
    theirs.level_selections.labels("digits", "full", "explicit").inc()
    ours.observe_answer("digits", value, value > 1)
    theirs.prediction_error.labels("digits").observe(value)
    if value > 1:
        theirs.budget_misses.labels("digits").inc()


def test_the_exposition_is_what_prometheus_client_makes_of_the_same_updates() -> None:
    ours, theirs = _pair()
    assert ours.exposition() == theirs.exposition()
    for value in VALUES:
        _update(ours, theirs, value)
    ours.observe_request(UNKNOWN_MODEL, NO_LEVEL, "cancelled", 0.0)  # a label set first seen now
    theirs.requests.labels(UNKNOWN_MODEL, NO_LEVEL, "cancelled").inc()
    theirs.request_duration.labels(UNKNOWN_MODEL, NO_LEVEL).observe(0.0)
    first = ours.exposition()
    assert first == theirs.exposition() and b'outcome="cancelled"} 1.0' in first
    for value in VALUES[:3]:  # read again after more updates: synced totals, nothing counted twice
        _update(ours, theirs, value)
    assert ours.exposition() == theirs.exposition() != first
