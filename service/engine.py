"""The inference path shared by both APIs: model lookup, budget -> level, batcher, metrics.

Routes call `track()` around a whole request and `infer()` inside it; `track` records the outcome
(from the exception type, see service.errors) in Prometheus and the recent-stats window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from service import policy
from service.batcher import BatchResult
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

    def model(self, name: str) -> ServedModel:
        if not self.ready:
            why = f"loading failed: {self.failure}" if self.failure else "models are loading or draining"
            raise Unavailable(f"server not ready ({why})", retry_after_s=5)
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; served: {sorted(self.models)}")
        return self.models[name]

    @contextmanager
    def track(self, model_name: str) -> Iterator[Tracked]:
        rec = Tracked(model=model_name if model_name in self.models else UNKNOWN_MODEL)
        start = time.monotonic()
        error: BaseException | None = None
        try:
            yield rec
        except BaseException as exc:
            error = exc
            raise
        finally:
            outcome, elapsed = outcome_of(error), time.monotonic() - start
            self.metrics.observe_request(rec.model, rec.level, outcome, elapsed, rec.queue_s)
            self.stats.record(rec.model, rec.level, outcome, rec.samples, elapsed)

    def count_invalid(self, model_name: str | None) -> None:
        """Record a request rejected before its handler ran (body failed schema validation)."""
        model = model_name if model_name in self.models else UNKNOWN_MODEL
        self.metrics.observe_request(model, NO_LEVEL, "bad_request", 0.0)
        self.stats.record(model, NO_LEVEL, "bad_request", 0, 0.0)

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
        return policy.choose(
            [lv.state() for lv in model.levels],
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

    async def close(self, timeout_s: float) -> None:
        """Drain: readiness off, every level's queue finishes (up to `timeout_s`), then stop."""
        self.ready = False
        self.metrics.ready.set(0)
        batchers = [lv.batcher for m in self.models.values() for lv in m.levels]
        await asyncio.gather(*(b.close(timeout_s) for b in batchers))


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
