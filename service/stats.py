"""Recent-traffic statistics for GET /v1/stats: throughput windows, latency percentiles, level mix,
prediction error and the fraction of budgeted answers that met their budget."""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

WINDOWS_S = (10, 60)


class _Event(NamedTuple):  # a tuple: built on the path of every request, cheaper than a dataclass
    at: float
    model: str
    level: str
    outcome: str
    samples: int
    latency_s: float
    error_ms: float | None  # measured - predicted server time
    budget_met: bool | None  # None: no budget given


class RecentStats:
    """The requests of the last `horizon_s` seconds, at most `max_events`: under heavy load the windows
    cover the most recent `max_events` requests. Kept in a ring of typed arrays allocated at start
    (about 50 bytes a slot, the names shared, not copied), so memory does not grow with traffic: as
    one tuple per request in a deque, the window took ~170 bytes a request until full (17 MB), which
    a server answering 15k requests/s filled within seconds of an overload."""

    def __init__(self, horizon_s: float = max(WINDOWS_S), max_events: int = 100_000) -> None:
        self.horizon_s = horizon_s
        self.max_events = max_events
        self._at = array("d", bytes(8 * max_events))  # time.monotonic() of each event
        self._latency_s = array("d", bytes(8 * max_events))
        self._error_ms = array("d", bytes(8 * max_events))  # NaN: none
        self._samples = array("q", bytes(8 * max_events))
        self._met = array("b", bytes(max_events))  # 1 met, 0 missed, -1 no budget
        self._model: list[str] = [""] * max_events
        self._level: list[str] = [""] * max_events
        self._outcome: list[str] = [""] * max_events
        self._next = 0  # the slot the next event takes
        self._count = 0  # slots holding an event
        self.started = time.monotonic()

    def record(
        self,
        model: str,
        level: str,
        outcome: str,
        samples: int,
        latency_s: float,
        error_ms: float | None = None,
        budget_met: bool | None = None,
    ) -> None:
        i = self._next
        self._at[i], self._latency_s[i], self._samples[i] = time.monotonic(), latency_s, samples
        self._error_ms[i] = math.nan if error_ms is None else error_ms
        self._met[i] = -1 if budget_met is None else int(budget_met)
        self._model[i], self._level[i], self._outcome[i] = model, level, outcome
        self._next = i + 1 if i + 1 < self.max_events else 0
        self._count = min(self._count + 1, self.max_events)

    def _recent(self, now: float, window_s: float) -> list[_Event]:
        """The events of the last `window_s` seconds (within the horizon), oldest first."""
        since = now - min(window_s, self.horizon_s)
        out = []
        for k in range(self._count):  # newest first, back to the first one too old
            i = (self._next - 1 - k) % self.max_events
            if self._at[i] < since:
                break
            error, met = self._error_ms[i], self._met[i]
            out.append(
                _Event(
                    self._at[i],
                    self._model[i],
                    self._level[i],
                    self._outcome[i],
                    self._samples[i],
                    self._latency_s[i],
                    None if math.isnan(error) else error,
                    None if met < 0 else bool(met),
                )
            )
        out.reverse()
        return out

    def windows(self) -> tuple[float, list[tuple[str, dict[str, Any], list[_Event]]]]:
        """(uptime, per window: its name, the counts every stats body shares, and its successful
        requests): what the single-process snapshot and a worker's mergeable partial build on."""
        now = time.monotonic()
        uptime = now - self.started
        out = []
        for w in WINDOWS_S:
            events = self._recent(now, w)
            ok = [e for e in events if e.outcome == "success"]
            span = max(min(w, uptime), 1e-9)
            counts = {
                "requests": len(events),
                "requests_per_s": len(events) / span,
                "samples_per_s": sum(e.samples for e in ok) / span,
                "outcomes": dict(Counter(e.outcome for e in events)),
            }
            out.append((f"{w}s", counts, ok))
        return uptime, out

    def snapshot(self, queue_depth: dict[str, dict[str, int]]) -> dict[str, Any]:
        uptime, per_window = self.windows()
        windows = {}
        for name, counts, ok in per_window:
            latencies = np.array([e.latency_s * 1000 for e in ok])
            errors = np.array([e.error_ms for e in ok if e.error_ms is not None])
            budgeted = [e.budget_met for e in ok if e.budget_met is not None]
            windows[name] = {
                **counts,
                "latency_ms": {
                    f"p{q}": (float(np.percentile(latencies, q)) if len(latencies) else None)
                    for q in (50, 95, 99)
                },
                "level_mix": _mix(ok),
                "prediction_error_ms": {  # measured - predicted server time
                    f"p{q}": (float(np.percentile(errors, q)) if len(errors) else None) for q in (1, 50, 99)
                },
                "budget_met_fraction": (sum(budgeted) / len(budgeted)) if budgeted else None,
            }
        return {"uptime_s": uptime, "windows": windows, "queue_depth": queue_depth}


def _mix(events: list[_Event]) -> dict[str, dict[str, float]]:
    """Per model, the fraction of successful requests each level served."""
    counts: dict[str, Counter[str]] = {}
    for e in events:
        counts.setdefault(e.model, Counter())[e.level] += 1
    return {m: {lv: n / sum(c.values()) for lv, n in sorted(c.items())} for m, c in counts.items()}
