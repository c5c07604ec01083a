"""service.stats: the recent-traffic window keeps the newest events within its horizon, at most
`max_events` of them, in storage allocated once, and reads a window's answers as columns."""

from __future__ import annotations

import tracemalloc

import pytest

from service import stats
from service.stats import RecentStats


def test_the_windows_hold_the_newest_events_when_more_came_than_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: clock[0])
    recent = RecentStats(max_events=4)
    for i in range(7):  # three more than fit: the ring wraps
        clock[0] = 100.0 + i
        outcome = "success" if i % 2 == 0 else "shed"
        recent.record(
            "m", f"l{i}", outcome, i + 1, i / 1000, error_ms=float(i) if i else None, budget_met=i > 4
        )
    _, per_window = recent.windows()
    (ten, counts, ok), (sixty, _, ok_60) = per_window
    assert (ten, sixty) == ("10s", "60s")
    assert counts["requests"] == 4 and counts["outcomes"] == {"shed": 2, "success": 2}
    assert counts["samples_per_s"] == pytest.approx((5 + 7) / 6)  # over the 6 s since the start
    assert list(ok.level) == ["l4", "l6"] == list(ok_60.level)  # oldest first
    assert list(ok.samples) == [5, 7] and list(ok.latency_s) == [0.004, 0.006]
    assert list(ok.error_ms) == [4.0, 6.0] and list(ok.budget_met) == [0, 1]


def test_events_older_than_the_window_are_left_out_and_missing_values_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(stats.time, "monotonic", lambda: clock[0])
    recent = RecentStats(max_events=100)
    recent.record("m", "full", "success", 1, 0.001)  # at 0: only in the 60 s window by 30
    clock[0] = 25.0
    recent.record("m", "1/8", "success", 2, 0.002, error_ms=-1.5, budget_met=True)
    clock[0] = 30.0
    _, ((_, c10, ok10), (_, c60, ok60)) = recent.windows()
    assert c10["requests"] == 1 and list(ok10.level) == ["1/8"]
    assert c60["requests"] == 2 and list(ok60.level) == ["full", "1/8"]
    assert list(stats.predicted_errors(ok60)) == [-1.5] and list(ok60.budget_met) == [-1, 1]
    body = recent.snapshot({})["windows"]["60s"]
    assert body["level_mix"] == {"m": {"1/8": 0.5, "full": 0.5}} and body["budget_met_fraction"] == 1.0
    assert body["prediction_error_ms"]["p50"] == -1.5 and body["latency_ms"]["p50"] == pytest.approx(1.5)
    clock[0] = 200.0  # past the horizon: nothing
    _, ((_, c10, ok10), (_, c60, _)) = recent.windows()
    assert c10["requests"] == c60["requests"] == 0 and len(ok10.latency_s) == 0
    assert recent.snapshot({})["windows"]["10s"]["latency_ms"]["p50"] is None


def test_recording_keeps_nothing_per_event_beyond_the_ring() -> None:
    """A request's model name is cut from its path, a new string each time: the ring keeps one."""
    recent = RecentStats(max_events=20_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            name = "".join(("dig", "its"))  # equal, not the same object
            recent.record(name, "full", "success", 1, i / 1e6, i / 1e3, True)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64_000, grown  # one string a slot would be ~1.1 MB
