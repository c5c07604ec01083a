"""Recent-traffic statistics for GET /v1/stats: throughput windows, latency percentiles, level mix,
prediction error and the fraction of budgeted answers that met their budget."""

from __future__ import annotations

import bisect
import math
import sys
import time
from array import array
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

WINDOWS_S = (10, 60)
SUCCESS = "success"  # the outcome of an answered request (service.errors.outcome_of)


class Answered(NamedTuple):
    """A window's successful requests, a column a field, oldest first."""

    model: np.ndarray  # of str
    level: np.ndarray  # of str
    samples: np.ndarray  # int64
    latency_s: np.ndarray
    error_ms: np.ndarray  # measured - predicted server time; NaN: none
    budget_met: np.ndarray  # int8: 1 met, 0 missed, -1 no budget given


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
        # interned: a model's name is cut from each request's path, a new string every time
        self._model[i], self._level[i], self._outcome[i] = sys.intern(model), level, outcome
        self._next = i + 1 if i + 1 < self.max_events else 0
        self._count = min(self._count + 1, self.max_events)

    def _window(self, now: float, window_s: float) -> tuple[list[str], Answered]:
        """The outcomes of the last `window_s` seconds' requests (within the horizon), and those
        that succeeded: times only grow, so the window's first event is found by bisection and
        the rest taken as slices, with no object made per event."""
        n, i = self._count, self._next

        def in_order(values: Any) -> Any:  # the ring's slots, oldest first
            return values[i:] + values[:i] if n == self.max_events else values[:n]

        first = bisect.bisect_left(in_order(self._at), now - min(window_s, self.horizon_s))

        def part(values: Any) -> Any:  # the window's slots, oldest first
            return in_order(values)[first:]

        outcomes: list[str] = part(self._outcome)
        ok = np.flatnonzero(np.fromiter((o == SUCCESS for o in outcomes), bool, len(outcomes)))

        def column(values: Any, dtype: Any) -> np.ndarray:
            return np.frombuffer(part(values), dtype)[ok] if len(ok) else np.empty(0, dtype)

        def names(values: list[str]) -> np.ndarray:
            return np.asarray(part(values), dtype=object)[ok]

        answered = Answered(
            names(self._model),
            names(self._level),
            column(self._samples, np.int64),
            column(self._latency_s, np.float64),
            column(self._error_ms, np.float64),
            column(self._met, np.int8),
        )
        return outcomes, answered

    def windows(self) -> tuple[float, list[tuple[str, dict[str, Any], Answered]]]:
        """(uptime, per window: its name, the counts every stats body shares, and its successful
        requests): what the single-process snapshot and a worker's mergeable partial build on."""
        now = time.monotonic()
        uptime = now - self.started
        out = []
        for w in WINDOWS_S:
            outcomes, ok = self._window(now, w)
            span = max(min(w, uptime), 1e-9)
            counts = {
                "requests": len(outcomes),
                "requests_per_s": len(outcomes) / span,
                "samples_per_s": int(ok.samples.sum()) / span,
                "outcomes": dict(Counter(outcomes)),
            }
            out.append((f"{w}s", counts, ok))
        return uptime, out

    def snapshot(self, queue_depth: dict[str, dict[str, int]]) -> dict[str, Any]:
        uptime, per_window = self.windows()
        windows = {}
        for name, counts, ok in per_window:
            latencies = ok.latency_s * 1000
            errors = predicted_errors(ok)
            budgeted = ok.budget_met[ok.budget_met >= 0]
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
                "budget_met_fraction": float(budgeted.mean()) if len(budgeted) else None,
            }
        return {"uptime_s": uptime, "windows": windows, "queue_depth": queue_depth}


def predicted_errors(ok: Answered) -> np.ndarray:
    """The prediction errors of the answers that have one."""
    errors: np.ndarray = ok.error_ms[~np.isnan(ok.error_ms)]
    return errors


def level_counts(ok: Answered) -> dict[str, Counter[str]]:
    """Per model, the successful requests each level served."""
    counts: dict[str, Counter[str]] = {}
    for model, level in zip(ok.model, ok.level, strict=True):
        counts.setdefault(model, Counter())[level] += 1
    return counts


def _mix(ok: Answered) -> dict[str, dict[str, float]]:
    """Per model, the fraction of successful requests each level served."""
    return {m: {lv: n / sum(c.values()) for lv, n in sorted(c.items())} for m, c in level_counts(ok).items()}
