"""Which level runs a request: pure functions of profiles, online corrections and queue state.

Predicted server time of a request on a level, what the client sees less the network:

    predicted = overhead + LAG_HOPS * lag + remaining + correction * sum(profile(b) for b in batches)
                + fill wait

- overhead: the server's own per-request cost on the event loop (decode, level choice, handling
  the result), measured at warm-up and corrected online (an `Estimate`) from each answer's own
  time (arrival to admission, result back to answer): not from what the prediction missed, or a
  burst of late answers would make it a margin that nothing admitted can correct again;
- lag: how late the event loop runs what is due now (service.loop_lag), paid at each of the
  LAG_HOPS waits for the loop a request makes once admitted (its batch handed back, its answer
  written): when the loop is the bottleneck, this is where the time goes;
- remaining: the predicted time left on the batch running now;
- batches: the rows queued ahead and the request's own, cut into max-size batches, each timed by
  the level's latency profile (measured at warm-up, interpolated over batch size);
- correction: an `Estimate` of observed / profiled compute (1.0 = the profile is right);
- fill wait: only with a batching delay (opt-in), on an idle level, for a partial batch.

Accuracy is a measurement on a finite test set, so the policy reads it with its 95% interval
[low, high] (from the manifest; a level without one has low = high = accuracy):

- a level meets an accuracy floor f when low >= f: it is at least f with 95% confidence;
- levels whose accuracy lies within the most accurate level's interval (accuracy >= its low) are
  equally accurate: under a latency budget the cheapest of them that fits runs, before any less
  accurate level is tried.

Shedding (`admit`, `finish_by`): a request with a latency budget B that cannot be answered in time
gets a fast 503 instead of a late answer:

    admitted   when  predicted + m <= B    (predicted: the chosen level's, the fastest if none fits;
                                            a level fits when predicted + m <= B too)
    finish_by  =     arrival + B - (overhead + LAG_HOPS * lag + m)
    m          =     min(margin, MARGIN_SHARE * B)

A request for which overhead + LAG_HOPS * lag + m > B (`hopeless`: no level fits, whatever its
queue) is shed before any level is compared. A batch holds only requests it is predicted to finish
by their finish_by (now + its predicted compute <= each one's; service.batch_queue cuts it short
rather than let later rows make an earlier request late), and a queued request that not even the
next batch could finish in time is shed when it reaches the head of its queue, not run.

The margin (`Margin`) is learnt from outcomes, not predicted: each answer of an admitted request is a
hit (server_ms <= B) or a miss, and

    miss:  margin += step
    hit:   margin -= step * target / (1 - target)      (never below 0)

a stochastic-approximation (Robbins-Monro) tracker whose fixed point is the margin at which a share
`target` of admitted requests miss: above it misses are rarer and the margin shrinks, below it they
are commoner and it grows. Under overload the event loop, not compute, is the bottleneck, and a
request admitted on the loop's lag of the moment waits one or two loop turns longer than that lag
once the turns lengthen (hundreds of arrivals parsed and shed in each); the margin buys that slack
back from the budget, and stays 0 while misses are rarer than `target`. Capped at MARGIN_SHARE of
the budget, a request predicted to take under the rest of it is still admitted: answers keep coming,
and the margin can shrink again once the overload ends (it moves only on answers).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from service.budget import Budget

PolicyName = Literal["explicit", "latency_budget", "min_accuracy", "default"]
LAG_HOPS = 2  # waits for the event loop between admission and the answer: batch handed back, answer written
MARGIN_SHARE = 0.8  # the most of a latency budget the margin keeps back at admission
_PREDICTED_MAX = 4096  # batch sizes whose predicted_ms a profile keeps


@dataclass(frozen=True)
class LevelProfile:
    name: str
    keep_fraction: float
    accuracy: float
    latency_ms: tuple[tuple[int, float], ...]  # (batch size, median ms), sorted by batch size
    accuracy_low: float | None = None  # the 95% interval's lower end; None: the accuracy itself
    # predict_ms by batch size, as computed: a request asks for two or three (its level's state, its
    # work, its batch's compute), of at most max_batch_size distinct sizes in all
    _predicted: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def low(self) -> float:
        return self.accuracy if self.accuracy_low is None else self.accuracy_low

    def meets(self, floor: float) -> bool:
        """Whether this level is at least `floor` accurate with 95% confidence."""
        return self.low >= floor

    def predict_ms(self, batch_size: int) -> float:
        """Median compute of one batch: piecewise linear in batch size, extrapolated past the ends."""
        known = self._predicted.get(batch_size)
        if known is None:
            known = self._interpolate(batch_size)
            if len(self._predicted) < _PREDICTED_MAX:
                self._predicted[batch_size] = known
        return known

    def _interpolate(self, batch_size: int) -> float:
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


class Estimate:
    """A positive quantity learnt online: a prior, then an EWMA in log space of the observations,
    each clipped to within `clip`x of the current value. No single observation replaces it: one
    outlier moves it by at most clip**alpha (about x1.15 with the defaults)."""

    def __init__(
        self, prior: float = 1.0, *, alpha: float = 0.1, clip: float = 4.0, floor: float = 1e-6
    ) -> None:
        self.value = prior
        self.alpha = alpha
        self.clip = clip
        self.floor = floor
        self.observations = 0

    def observe(self, value: float) -> None:
        value = min(max(value, self.value / self.clip, self.floor), self.value * self.clip)
        self.value = math.exp((1 - self.alpha) * math.log(self.value) + self.alpha * math.log(value))
        self.observations += 1


class Correction(Estimate):
    """Observed / profiled compute time of one level (1.0 = the profile is right)."""

    @property
    def ratio(self) -> float:
        return self.value

    def observe_compute(self, predicted_ms: float, observed_ms: float) -> None:
        if predicted_ms > 0:
            self.observe(observed_ms / predicted_ms)


class LevelState(NamedTuple):
    """A level as the policy sees it at the moment of the decision. (LevelState, Decision: tuples,
    immutable as frozen dataclasses and several times cheaper to make, once per request each.)"""

    profile: LevelProfile
    correction: float = 1.0
    queued_samples: int = 0
    running_remaining_ms: float = 0.0  # predicted time left on the batch running now
    idle: bool = True  # nothing queued or running: with a batching delay, a partial batch waits


class Decision(NamedTuple):
    level: str
    policy: PolicyName
    predicted_ms: float  # overhead + queue ahead + fill wait + compute
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
    """With a batching delay, a partial batch on an idle level waits up to it for company."""
    return max_delay_ms if state.idle and rows < max_batch_size else 0.0


def one(
    state: LevelState,
    policy: PolicyName,
    rows: int,
    max_batch_size: int,
    max_delay_ms: float,
    fixed_ms: float,
) -> Decision:
    """The decision for a request whose level is fixed (named, or the default): no comparison, its
    prediction only. `fixed_ms`: overhead + LAG_HOPS * lag."""
    wait = fill_wait_ms(state, rows, max_batch_size, max_delay_ms)
    predicted = fixed_ms + work_ms(state, rows, max_batch_size) + wait
    return Decision(state.profile.name, policy, predicted, None, max_delay_ms)


def choose(
    levels: list[LevelState],
    budget: Budget,
    default: str,
    rows: int,
    max_batch_size: int,
    max_delay_ms: float,
    overhead_ms: float = 0.0,
    lag_ms: float = 0.0,
    margin_ms: float = 0.0,
) -> Decision:
    """The level to run. `levels` must be non-empty; `budget.level` (a resolved name) and `default`
    must be among them. A latency budget also caps the wait for a batch to fill (its slack); a level
    fits it with `margin_ms` to spare (the margin shedding keeps back, so `admit` agrees)."""
    fixed_ms = overhead_ms + LAG_HOPS * lag_ms
    if budget.level is not None or not budget.given:  # one level, named or the default: no comparison
        name = str(budget.level) if budget.level is not None else default
        state = next(s for s in levels if s.profile.name == name)
        return one(
            state,
            "explicit" if budget.level is not None else "default",
            rows,
            max_batch_size,
            max_delay_ms,
            fixed_ms,
        )
    states = {s.profile.name: s for s in levels}
    work = {n: fixed_ms + work_ms(s, rows, max_batch_size) for n, s in states.items()}

    def decide(
        name: str, policy: PolicyName, met: bool | None, max_wait_ms: float = max_delay_ms
    ) -> Decision:
        wait = min(fill_wait_ms(states[name], rows, max_batch_size, max_delay_ms), max_wait_ms)
        return Decision(name, policy, work[name] + wait, met, max_wait_ms)

    candidates = sorted(levels, key=lambda s: -s.profile.accuracy)  # most accurate first
    accuracy_met = True
    if budget.min_accuracy is not None:
        floor = budget.min_accuracy
        accurate = [s for s in candidates if s.profile.meets(floor)]
        accuracy_met = bool(accurate)  # if none is, the most accurate level runs and the budget is missed
        candidates = accurate or candidates[:1]
    # the levels as accurate as the best within its interval, cheapest first; then the rest
    tie = candidates[0].profile.low
    tied = sorted((s.profile.name for s in candidates if s.profile.accuracy >= tie), key=work.__getitem__)
    names = tied + [s.profile.name for s in candidates if s.profile.accuracy < tie]

    if budget.latency_ms is not None:
        room = budget.latency_ms - margin_ms
        for n in names:
            if work[n] <= room:
                return decide(n, "latency_budget", accuracy_met, min(max_delay_ms, room - work[n]))
        return decide(min(names, key=work.__getitem__), "latency_budget", False, 0.0)

    def total(n: str) -> float:
        return work[n] + fill_wait_ms(states[n], rows, max_batch_size, max_delay_ms)

    return decide(min(names, key=total), "min_accuracy", accuracy_met)


def retry_after_s(state: LevelState, max_batch_size: int) -> int:
    """Seconds until a full queue has likely drained (for Retry-After)."""
    return max(1, math.ceil(work_ms(state, 0, max_batch_size) / 1000))


class Margin:
    """The slack (ms) kept back from every latency budget at admission, learnt from hits and misses
    of the admitted requests' budgets (see the module docstring): its share of misses settles at
    `target`."""

    def __init__(self, target: float = 0.005, step_ms: float = 2.0) -> None:
        if not 0 < target < 1:
            raise ValueError(f"target miss rate {target} outside (0, 1)")
        self.target = target
        self.step_ms = step_ms
        self.down_ms = step_ms * target / (1 - target)  # a hit's step: target misses in balance
        self.value_ms = 0.0
        self.hits = 0
        self.misses = 0

    def observe(self, met: bool, budget_ms: float) -> None:
        """One admitted request's answer: whether its server time met its latency budget (of
        `budget_ms`, which also caps the margin: more would not change what is admitted)."""
        if met:
            self.hits += 1
            self.value_ms = max(0.0, self.value_ms - self.down_ms)
        else:
            self.misses += 1
            self.value_ms = max(self.value_ms, min(self.value_ms + self.step_ms, MARGIN_SHARE * budget_ms))

    def for_budget(self, budget_ms: float) -> float:
        """The margin a request with this budget is held to: at most MARGIN_SHARE of the budget."""
        return min(self.value_ms, MARGIN_SHARE * budget_ms)


def hopeless(budget_ms: float, overhead_ms: float, lag_ms: float, margin_ms: float = 0.0) -> bool:
    """Whether no level can meet a latency budget, whatever its queue: the part of every level's
    prediction that is not compute (overhead + LAG_HOPS * lag) leaves no room with the margin kept
    back. Then `admit` refuses every level's decision, so the request is shed without comparing
    levels: what an event loop that is itself the bottleneck sheds most, at the least cost."""
    return overhead_ms + LAG_HOPS * lag_ms + margin_ms > budget_ms


def admit(decision: Decision, budget_ms: float, margin_ms: float = 0.0) -> bool:
    """Whether a request can meet its latency budget: its level's predicted server time fits, with
    `margin_ms` (`Margin.for_budget`) to spare."""
    return decision.predicted_ms + margin_ms <= budget_ms


def finish_by(
    arrival_s: float, budget_ms: float, overhead_ms: float, lag_ms: float, margin_ms: float = 0.0
) -> float:
    """The latest time (seconds, the clock of `arrival_s`) a budgeted request's last batch may end
    for its answer to leave within the budget (see the module docstring)."""
    return arrival_s + (budget_ms - overhead_ms - LAG_HOPS * lag_ms - margin_ms) / 1000
