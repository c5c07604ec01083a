"""service.stats: the recent-traffic window keeps the newest events within its horizon, at most
`max_events` of them, in storage allocated once."""

from __future__ import annotations

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
    assert [e.level for e in ok] == ["l4", "l6"] == [e.level for e in ok_60]  # oldest first
    assert [(e.samples, e.latency_s, e.error_ms, e.budget_met) for e in ok] == [
        (5, 0.004, 4.0, False),
        (7, 0.006, 6.0, True),
    ]


def test_events_older_than_the_window_are_left_out_and_none_values_kept(
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
    assert c10["requests"] == 1 and [e.level for e in ok10] == ["1/8"]
    assert c60["requests"] == 2 and [(e.level, e.error_ms, e.budget_met) for e in ok60] == [
        ("full", None, None),
        ("1/8", -1.5, True),
    ]
    clock[0] = 200.0  # past the horizon: nothing
    _, ((_, c10, _), (_, c60, _)) = recent.windows()
    assert c10["requests"] == c60["requests"] == 0
