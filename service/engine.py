"""The inference path shared by both APIs: model lookup, budget -> level, batcher, metrics.

Routes call `track()` around a whole request and `infer()` inside it; `track` records the outcome
(from the exception type, see service.errors) in Prometheus and the recent-stats window.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from service import policy
from service.batcher import Batcher, BatchResult
from service.errors import BadRequest, NotFound, Unavailable, outcome_of
from service.metrics import NO_LEVEL, UNKNOWN_MODEL, Metrics
from service.models import ServedLevel, ServedModel
from service.settings import Settings
from service.stats import RecentStats

MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True)
class RequestBudget:
    """What the caller asked for, as sent (validated by `Engine.infer`)."""

    level: object = None  # name or keep fraction
    latency_ms: float | None = None
    min_accuracy: float | None = None
    priority: int = 0  # lower runs first; 0 = the configured default
    timeout_ms: float | None = None  # may only lower the server's default

    @property
    def given(self) -> bool:
        return self.latency_ms is not None or self.min_accuracy is not None


@dataclass
class Tracked:
    """Filled in while a request is handled; recorded when it ends."""

    model: str = UNKNOWN_MODEL
    level: str = NO_LEVEL
    samples: int = 0
    queue_s: float | None = None


class Tracking:
    """The context manager `Engine.track` returns (a class: cheaper than @contextmanager on the
    path of every request)."""

    __slots__ = ("engine", "rec", "start")

    def __init__(self, engine: Engine, rec: Tracked) -> None:
        self.engine, self.rec = engine, rec

    def __enter__(self) -> Tracked:
        self.start = time.monotonic()
        return self.rec

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        rec, elapsed = self.rec, time.monotonic() - self.start
        outcome = outcome_of(error)
        self.engine.metrics.observe_request(rec.model, rec.level, outcome, elapsed, rec.queue_s)
        self.engine.stats.record(rec.model, rec.level, outcome, rec.samples, elapsed)


@dataclass(frozen=True)
class Inference:
    level: ServedLevel
    decision: policy.Decision
    result: BatchResult

    @property
    def budget_met(self) -> bool | None:
        return self.decision.budget_met


@dataclass
class Engine:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    stats: RecentStats = field(default_factory=RecentStats)
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    failure: str | None = None  # why loading failed, if it did
    draining: bool = False  # shutting down: no new inference, in-flight requests finish
    drain_deadline: float | None = None  # time.monotonic() by which the drain ends
    in_flight: int = 0  # inference requests between arrival and answer (kept by service.guard)

    def model(self, name: str) -> ServedModel:
        if self.draining:
            raise Unavailable("server is shutting down (draining); retry on another replica", retry_after_s=1)
        if not self.ready:
            why = f"loading failed: {self.failure}" if self.failure else "models are loading"
            raise Unavailable(f"server not ready ({why})", retry_after_s=5)
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; served: {sorted(self.models)}")
        return self.models[name]

    def track(self, model_name: str) -> Tracking:
        """`with engine.track(name) as rec:` around a request: its outcome, level and time are
        recorded when the block ends, the outcome from the exception that ended it, if any."""
        return Tracking(self, Tracked(model=model_name if model_name in self.models else UNKNOWN_MODEL))

    def count_invalid(self, model_name: str | None, outcome: str = "bad_request") -> None:
        """Record a request refused before its handler ran (invalid body, too large, too many)."""
        model = model_name if model_name in self.models else UNKNOWN_MODEL
        self.metrics.observe_request(model, NO_LEVEL, outcome, 0.0)
        self.stats.record(model, NO_LEVEL, outcome, 0, 0.0)

    async def infer(
        self, model: ServedModel, x: np.ndarray, budget: RequestBudget, rec: Tracked
    ) -> Inference:
        rows = model.check_input(x)
        rec.samples = len(rows)
        decision = self.choose(model, budget, len(rows))
        level = model.level(decision.level)
        rec.level = level.name
        self.metrics.level_selections.labels(model.name, level.name, decision.policy).inc()
        if decision.budget_met is False:
            self.metrics.budget_misses.labels(model.name).inc()
        deadline = time.monotonic() + self._timeout_ms(budget) / 1000
        priority = budget.priority or self.settings.default_priority
        result = await level.batcher.submit(
            rows, deadline=deadline, priority=priority, max_wait_s=decision.max_wait_ms / 1000
        )
        rec.queue_s = result.queue_s
        return Inference(level, decision, result)

    def choose(self, model: ServedModel, budget: RequestBudget, rows: int) -> policy.Decision:
        _validate(budget)
        explicit = model.resolve_level(budget.level).name if budget.level is not None else None
        fixed = explicit or (None if budget.given else model.default_level)
        # a fixed level needs only its own state (for predicted_ms); only a budget compares levels
        levels = model.levels if fixed is None else [model.level(fixed)]
        return policy.choose(
            [lv.state() for lv in levels],
            policy.Budget(explicit, budget.latency_ms, budget.min_accuracy),
            model.default_level,
            rows,
            self.settings.max_batch_size,
            self.settings.max_queue_delay_ms,
        )

    def _timeout_ms(self, budget: RequestBudget) -> float:
        if budget.timeout_ms:
            return min(budget.timeout_ms, self.settings.request_timeout_ms)
        return self.settings.request_timeout_ms

    def queue_depth(self) -> dict[str, dict[str, int]]:
        return {m.name: {lv.name: lv.batcher.queued_samples for lv in m.levels} for m in self.models.values()}

    def request_drain(self) -> None:
        """Readiness off, new inference refused (503), the drain's deadline set. Plain assignments
        only: safe in a signal handler; `begin_drain` does the rest on the event loop."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout_s
        self.draining, self.ready = True, False

    def begin_drain(self) -> None:
        """`request_drain`, the ready gauge to 0, and queued batches start without waiting to fill."""
        self.request_drain()
        self.metrics.ready.set(0)
        for b in self._batchers():
            b.stop_intake()

    def drain_left_s(self) -> float:
        """Seconds left before the drain's deadline (all of `drain_timeout_s` before it began)."""
        if self.drain_deadline is None:
            return self.settings.drain_timeout_s
        return max(0.0, self.drain_deadline - time.monotonic())

    async def close(self, timeout_s: float | None = None) -> None:
        """Drain: every level's queue finishes until the deadline (or `timeout_s`), what is left
        gets 503, the batchers stop."""
        self.begin_drain()
        timeout_s = self.drain_left_s() if timeout_s is None else timeout_s
        await asyncio.gather(*(b.close(timeout_s) for b in self._batchers()))

    def _batchers(self) -> list[Batcher]:
        return [lv.batcher for m in self.models.values() for lv in m.levels]


def _validate(b: RequestBudget) -> None:
    if b.level is not None and b.given:
        raise BadRequest("give either sparsity_level or a budget (latency_budget_ms, min_accuracy), not both")
    if b.latency_ms is not None and not (math.isfinite(b.latency_ms) and 0 < b.latency_ms <= 3.6e6):
        raise BadRequest(f"latency_budget_ms must be a number in (0, 3600000], got {b.latency_ms}")
    if b.min_accuracy is not None and not (0 <= b.min_accuracy <= 1):
        raise BadRequest(f"min_accuracy must be a number in [0, 1], got {b.min_accuracy}")
    if not 0 <= b.priority <= MAX_PRIORITY:
        raise BadRequest(f"priority must be an integer in [0, {MAX_PRIORITY}], got {b.priority}")
    if b.timeout_ms is not None and not (math.isfinite(b.timeout_ms) and b.timeout_ms >= 0):
        raise BadRequest(f"timeout must be a non-negative number, got {b.timeout_ms}")
