"""Which level runs a request: pure functions of profiles, online corrections and queue state.

Predicted time of a request on a level = the running batch's remaining time + the work queued ahead
of it and its own rows, cut into max-size batches, each timed by the manifest's latency profile
(interpolated over batch size) times the level's correction (EWMA of observed / predicted compute),
+ on an idle level, the wait for the batch to fill.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

PolicyName = Literal["explicit", "latency_budget", "min_accuracy", "default"]


@dataclass(frozen=True)
class LevelProfile:
    name: str
    keep_fraction: float
    accuracy: float
    latency_ms: tuple[tuple[int, float], ...]  # (batch size, median ms), sorted by batch size

    def predict_ms(self, batch_size: int) -> float:
        """Median compute of one batch: piecewise linear in batch size, extrapolated past the ends."""
        points = self.latency_ms
        if len(points) == 1:
            b0, t0 = points[0]
            return t0 * max(batch_size, 1) / b0 if batch_size > b0 else t0
        if batch_size <= points[0][0]:
            return points[0][1]
        for (b0, t0), (b1, t1) in itertools.pairwise(points):
            if batch_size <= b1:
                return t0 + (t1 - t0) * (batch_size - b0) / (b1 - b0)
        (b0, t0), (b1, t1) = points[-2], points[-1]
        return t1 + max(0.0, (t1 - t0) / (b1 - b0)) * (batch_size - b1)


class Correction:
    """EWMA of observed / predicted compute time for one level (1.0 = the profile is right)."""

    def __init__(self, alpha: float = 0.2, bounds: tuple[float, float] = (0.02, 50.0)) -> None:
        self.alpha = alpha
        self.bounds = bounds
        self.ratio = 1.0
        self.observations = 0

    def observe(self, predicted_ms: float, observed_ms: float) -> None:
        if predicted_ms <= 0:
            return
        ratio = min(max(observed_ms / predicted_ms, self.bounds[0]), self.bounds[1])
        # the first observation replaces the prior outright; later ones are smoothed
        self.ratio = ratio if self.observations == 0 else (1 - self.alpha) * self.ratio + self.alpha * ratio
        self.observations += 1


@dataclass(frozen=True)
class LevelState:
    """A level as the policy sees it at the moment of the decision."""

    profile: LevelProfile
    correction: float = 1.0
    queued_samples: int = 0
    running_remaining_ms: float = 0.0  # predicted time left on the batch running now
    idle: bool = True  # nothing queued or running: a lone request waits for its batch to fill


@dataclass(frozen=True)
class Budget:
    level: str | None = None  # a level name, already resolved by the caller
    latency_ms: float | None = None
    min_accuracy: float | None = None

    @property
    def given(self) -> bool:
        return self.latency_ms is not None or self.min_accuracy is not None


@dataclass(frozen=True)
class Decision:
    level: str
    policy: PolicyName
    predicted_ms: float  # queue ahead + fill wait + compute
    budget_met: bool | None  # None when no latency budget or accuracy floor was given
    max_wait_ms: float  # the longest this request may wait for its batch to fill


def work_ms(state: LevelState, rows: int, max_batch_size: int) -> float:
    """Predicted time until a request of `rows` rows has its answer, if batches start without waiting:
    the running batch's remainder, then the queue ahead and the request cut into max-size batches."""
    full, rest = divmod(state.queued_samples + rows, max_batch_size)
    compute = full * state.profile.predict_ms(max_batch_size)
    if rest:
        compute += state.profile.predict_ms(rest)
    return state.running_remaining_ms + state.correction * compute


def fill_wait_ms(state: LevelState, rows: int, max_batch_size: int, max_delay_ms: float) -> float:
    """On an idle level a lone request waits up to the batching delay for company."""
    return max_delay_ms if state.idle and rows < max_batch_size else 0.0


def choose(
    levels: list[LevelState],
    budget: Budget,
    default: str,
    rows: int,
    max_batch_size: int,
    max_delay_ms: float,
) -> Decision:
    """The level to run. `levels` must be non-empty; names in budget/default must be among them.

    A latency budget also caps how long the request may wait for its batch to fill (its slack)."""
    states = {s.profile.name: s for s in levels}
    work = {n: work_ms(s, rows, max_batch_size) for n, s in states.items()}

    def decide(
        name: str, policy: PolicyName, met: bool | None, max_wait_ms: float = max_delay_ms
    ) -> Decision:
        wait = min(fill_wait_ms(states[name], rows, max_batch_size, max_delay_ms), max_wait_ms)
        return Decision(name, policy, work[name] + wait, met, max_wait_ms)

    if budget.level is not None:
        return decide(budget.level, "explicit", None)
    if not budget.given:
        return decide(default, "default", None)

    candidates = sorted(levels, key=lambda s: -s.profile.accuracy)  # most accurate first
    accuracy_met = True
    if budget.min_accuracy is not None:
        floor = budget.min_accuracy
        accurate = [s for s in candidates if s.profile.accuracy >= floor]
        accuracy_met = bool(accurate)  # if none is, the most accurate level runs and the budget is missed
        candidates = accurate or candidates[:1]
    names = [s.profile.name for s in candidates]

    if budget.latency_ms is not None:
        for n in names:
            if work[n] <= budget.latency_ms:
                return decide(
                    n, "latency_budget", accuracy_met, min(max_delay_ms, budget.latency_ms - work[n])
                )
        return decide(min(names, key=work.__getitem__), "latency_budget", False, 0.0)

    def total(n: str) -> float:
        return work[n] + fill_wait_ms(states[n], rows, max_batch_size, max_delay_ms)

    return decide(min(names, key=total), "min_accuracy", accuracy_met)


def retry_after_s(state: LevelState, max_batch_size: int) -> int:
    """Seconds until a full queue has likely drained (for Retry-After)."""
    return max(1, math.ceil(work_ms(state, 0, max_batch_size) / 1000))
