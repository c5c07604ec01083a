"""Recent-traffic statistics for GET /v1/stats: throughput windows, latency percentiles, level mix,
prediction error and the fraction of budgeted answers that met their budget."""

from __future__ import annotations

import time
from collections import Counter, deque
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
    """Keeps the requests of the last `horizon_s` seconds, at most `max_events` (about 130 bytes
    each), in memory: under heavy load the windows cover the most recent `max_events` requests."""

    def __init__(self, horizon_s: float = max(WINDOWS_S), max_events: int = 100_000) -> None:
        self.horizon_s = horizon_s
        self._events: deque[_Event] = deque(maxlen=max_events)
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
        now = time.monotonic()
        self._events.append(_Event(now, model, level, outcome, samples, latency_s, error_ms, budget_met))
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._events and self._events[0].at < now - self.horizon_s:
            self._events.popleft()

    def _recent(self, now: float, window_s: float) -> list[_Event]:
        self._prune(now)
        return [e for e in self._events if e.at >= now - window_s]

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
