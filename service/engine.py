"""The inference path shared by both APIs: model lookup, budget -> level, batcher, metrics.

A route handles one request in one pass: decode (its protocol) -> budget (service.budget) ->
`infer` (level choice, then the batcher) -> `answered` (what it cost, was the budget met) -> encode.
`track()` around the whole of it records the outcome (from the exception type, see service.errors)
in Prometheus and the recent-stats window, once the answer is written (`Tracking`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from service import policy
from service.batcher import BatchResult
from service.budget import Budget
from service.errors import NotFound, Shed, Unavailable, outcome_of
from service.idle_spin import IdleSpin
from service.instances import Instances
from service.loop_lag import LoopLag
from service.metrics import NO_LEVEL, UNKNOWN_MODEL, Metrics
from service.models import ServedLevel, ServedModel
from service.policy import Estimate
from service.settings import Settings
from service.stats import RecentStats


@dataclass(slots=True)
class Tracked:
    """Filled in while a request is handled; recorded when it ends."""

    model: str = UNKNOWN_MODEL
    level: str = NO_LEVEL
    samples: int = 0
    queue_s: float | None = None
    compute_s: float = 0.0
    start: float = 0.0  # time.monotonic() at arrival
    error_ms: float | None = None  # measured - predicted server time
    budget_met: bool | None = None
    served: ServedLevel | None = None  # the level (of one model version) that took the request
    policy: str | None = None  # how that level was chosen (service.policy.PolicyName)
    # what the answer teaches, learnt in `record` (after the write): the model's overhead estimate
    # and this request's own time on the loop; and, admitted on a latency budget, whether it was met
    overhead: Estimate | None = None
    own_ms: float = 0.0
    margin_budget_ms: float | None = None
    in_time: bool = False


def _queued(batchers: list[Instances]) -> int:
    return sum(b.queued_samples for b in batchers)


class Tracking:
    """The context manager `Engine.track` returns (a class: cheaper than @contextmanager on the
    path of every request). Leaving it takes the request's time and outcome, and leaves recording
    them (`Engine.record`) to the event loop's next turn: by then the answer (or the error) is
    written, so the client does not wait for the bookkeeping; whatever the loop runs next, a later
    request or a read of /metrics and the stats, runs after it. With workers (multiprocess metrics)
    the recording comes first: another worker's /metrics may read this one's values at any time."""

    __slots__ = ("engine", "rec")

    def __init__(self, engine: Engine, rec: Tracked) -> None:
        self.engine, self.rec = engine, rec

    def __enter__(self) -> Tracked:
        self.rec.start = time.monotonic()
        return self.rec

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        elapsed, engine = time.monotonic() - self.rec.start, self.engine
        if engine.metrics.shared:
            engine.record(self.rec, outcome_of(error), elapsed)
        else:
            asyncio.get_running_loop().call_soon(engine.record, self.rec, outcome_of(error), elapsed)


def _shed(budget_ms: float, predicted: str, lag_ms: float, margin_ms: float) -> Shed:
    return Shed(
        f"cannot answer within the latency budget of {budget_ms:g} ms: predicted {predicted} (event "
        f"loop {lag_ms:.1f} ms late, margin {margin_ms:.1f} ms); retry later"
    )


@dataclass(slots=True)
class Inference:
    level: ServedLevel
    budget: Budget
    decision: policy.Decision
    result: BatchResult
    lag_ms: float = 0.0  # the event loop's lag at admission (in the prediction, not the overhead)
    own_ms: float = 0.0  # arrival to admission (decode, level choice): the request's own cost
    resumed: float = 0.0  # time.monotonic() when its batches' result reached it again
    server_ms: float = 0.0  # arrival to the answer being encoded, measured
    budget_met: bool | None = None  # from server_ms (and the level's accuracy), not the prediction


@dataclass
class Engine:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    stats: RecentStats = field(default_factory=RecentStats)
    models: dict[str, ServedModel] = field(default_factory=dict)  # name -> its latest version
    versions: dict[str, dict[str, ServedModel]] = field(default_factory=dict)  # name -> version -> model
    ready: bool = False
    failure: str | None = None  # why loading failed, if it did
    draining: bool = False  # shutting down: no new inference, in-flight requests finish
    drain_deadline: float | None = None  # time.monotonic() by which the drain ends
    in_flight: int = 0  # inference requests between arrival and answer (kept by service.guard)
    # the server's open HTTP connections (uvicorn's set, handed over by service.protocol and guard);
    # None where the app runs under another server: then no request counts as the only one
    connections: AbstractSet[object] | None = None
    lag: LoopLag = field(init=False)  # the event loop's lateness (started by service.app)
    margin: policy.Margin = field(init=False)  # kept back from latency budgets at admission (shedding)
    spin: IdleSpin = field(init=False)  # the loop's poll after answers that leave it idle (service.app)

    def __post_init__(self) -> None:
        self.lag = LoopLag(self.settings.loop_lag_interval_ms / 1000)
        self.margin = policy.Margin(self.settings.shed_miss_target, self.settings.shed_margin_step_ms)
        self.spin = IdleSpin(self.settings.idle_spin_us / 1e6, lambda: self.in_flight > 0)

    def model(self, name: str) -> ServedModel:
        if self.draining:
            raise Unavailable("server is shutting down (draining); retry on another replica", retry_after_s=1)
        if not self.ready:
            why = f"loading failed: {self.failure}" if self.failure else "models are loading"
            raise Unavailable(f"server not ready ({why})", retry_after_s=5)
        if name not in self.models:
            raise NotFound(f"unknown model {name!r}; served: {sorted(self.models)}")
        return self.models[name]

    def model_version(self, name: str, version: str | None) -> ServedModel:
        """`model(name)`, or that version of it (404 if it is not served)."""
        model = self.model(name)
        if version is None or version == model.manifest.version:
            return model
        served = self.versions.get(name, {})
        if version not in served:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {sorted(served, key=int)}")
        return served[version]

    def set_versions(self, name: str, served: dict[str, ServedModel]) -> None:
        """Serve exactly `served` (version -> model) under `name`, in one step: the highest version
        becomes the default; none = the name is no longer served. Batchers are the caller's."""
        if served:
            self.versions[name] = dict(served)
            self.models[name] = served[max(served, key=int)]
            queued = [lv for m in served.values() for lv in m.levels]
            for level in {lv.name for lv in queued}:  # one gauge per (model, level), over versions
                same = [lv.batcher for lv in queued if lv.name == level]
                self.metrics.queue_depth.labels(name, level).set_function(partial(_queued, same))
        else:
            self.versions.pop(name, None)
            self.models.pop(name, None)

    def track(self, model_name: str) -> Tracking:
        """`with engine.track(name) as rec:` around a request: its outcome, level and time are
        recorded when the block ends, the outcome from the exception that ended it, if any."""
        return Tracking(self, Tracked(model=model_name if model_name in self.models else UNKNOWN_MODEL))

    def record(self, rec: Tracked, outcome: str, elapsed_s: float) -> None:
        """A tracked request's outcome and time, in Prometheus, its level's and the recent stats;
        and what its answer teaches the overhead estimate and the shedding margin."""
        if rec.overhead is not None:
            rec.overhead.observe(rec.own_ms)
        if rec.margin_budget_ms is not None:
            self.margin.observe(rec.in_time, rec.margin_budget_ms)
        self.metrics.observe_request(rec.model, rec.level, outcome, elapsed_s, rec.queue_s)
        if rec.policy is not None:
            self.metrics.selected(rec.model, rec.level, rec.policy)
        if rec.error_ms is not None:  # answered (Engine.answered)
            self.metrics.observe_answer(rec.model, rec.error_ms / 1000, rec.budget_met is False)
        if rec.served is not None:
            rec.served.stats.request(outcome == "success", rec.samples, elapsed_s, rec.queue_s, rec.compute_s)
        self.stats.record(rec.model, rec.level, outcome, rec.samples, elapsed_s, rec.error_ms, rec.budget_met)

    def count_invalid(self, model_name: str | None, outcome: str = "bad_request") -> None:
        """Record a request refused before its handler ran (invalid body, too large, too many)."""
        model = model_name if model_name in self.models else UNKNOWN_MODEL
        self.metrics.observe_request(model, NO_LEVEL, outcome, 0.0)
        self.stats.record(model, NO_LEVEL, outcome, 0, 0.0)

    async def infer(self, model: ServedModel, rows: np.ndarray, budget: Budget, rec: Tracked) -> Inference:
        """Choose the level for `rows` (checked by the caller's decode) and run them there."""
        rec.samples = len(rows)
        if budget.level is not None:
            budget = budget.with_level(model.resolve_level(budget.level).name)
        lag_ms = self.lag.lag_ms
        latency = budget.latency_ms if self.settings.shed_late else None  # shedding: on that budget
        margin_ms = self.margin.for_budget(latency) if latency is not None else 0.0
        if latency is not None and policy.hopeless(latency, model.overhead.value, lag_ms, margin_ms):
            fixed = model.overhead.value + policy.LAG_HOPS * lag_ms
            raise _shed(latency, f"at least {fixed:.1f} ms at any level", lag_ms, margin_ms)
        decision = self.choose(model, budget, len(rows), lag_ms, margin_ms)
        finish_by = float("inf")
        if latency is not None:
            if not policy.admit(decision, latency, margin_ms):
                where = f"{decision.predicted_ms:.1f} ms at level {decision.level}"
                raise _shed(latency, where, lag_ms, margin_ms)
            finish_by = policy.finish_by(rec.start, latency, model.overhead.value, lag_ms, margin_ms)
        admitted = time.monotonic()
        level = model.level(decision.level)
        rec.level, rec.served, rec.policy = level.name, level, decision.policy
        timeout_ms = self.settings.request_timeout_ms
        if budget.timeout_ms:
            timeout_ms = min(budget.timeout_ms, timeout_ms)
        result = await level.batcher.next().submit(  # the instance it starts soonest on, picked now
            rows,
            deadline=rec.start + timeout_ms / 1000,
            priority=budget.priority or self.settings.default_priority,
            max_wait_s=decision.max_wait_ms / 1000,
            finish_by=finish_by,
            only_request=self.only_request(),
        )
        rec.queue_s, rec.compute_s = result.queue_s, result.compute_s
        own_ms = (admitted - rec.start) * 1000
        return Inference(level, budget, decision, result, lag_ms, own_ms, resumed=time.monotonic())

    def only_request(self) -> bool:
        """Whether the request in hand is the only one in flight and none can be on its way: one
        open connection. A count of requests in flight alone does not say it: at concurrency 8 the
        others' bytes often sit unread in their sockets while one request runs, and each then ran
        inline, alone, after the last (c=8 answered 658 requests/s against 1592 with batches)."""
        return self.in_flight <= 1 and self.connections is not None and len(self.connections) <= 1

    def answered(self, model: ServedModel, inference: Inference, rec: Tracked) -> Inference:
        """Just before encoding: the measured server time, whether it met the budget, and what the
        prediction missed by (for `record`, which also teaches the overhead estimate and margin)."""
        now = time.monotonic()
        server_ms = inference.server_ms = (now - rec.start) * 1000
        budget = inference.budget
        # the request's own time on the loop; its waits for the loop are the lag's and the margin's
        rec.overhead, rec.own_ms = model.overhead, inference.own_ms + (now - inference.resumed) * 1000
        error_ms = server_ms - inference.decision.predicted_ms
        rec.error_ms = error_ms
        met: bool | None = None
        if budget.given:
            floor, latency = budget.min_accuracy, budget.latency_ms
            met = (floor is None or inference.level.profile.meets(floor)) and (
                latency is None or server_ms <= latency
            )
            inference.budget_met = rec.budget_met = met
            if latency is not None and self.settings.shed_late:  # admitted on its latency budget
                rec.margin_budget_ms, rec.in_time = latency, server_ms <= latency
        return inference  # its metrics: Engine.record

    def choose(
        self, model: ServedModel, budget: Budget, rows: int, lag_ms: float = 0.0, margin_ms: float = 0.0
    ) -> policy.Decision:
        """`budget.level`, if any, already resolved to a level name."""
        settings = self.settings
        if budget.level is not None or not budget.given:  # a fixed level: only its own state, no comparison
            explicit = budget.level is not None
            level = model.level(str(budget.level) if explicit else model.default_level)
            fixed_ms = model.overhead.value + policy.LAG_HOPS * lag_ms
            return policy.one(
                level.state(),
                "explicit" if explicit else "default",
                rows,
                settings.max_batch_size,
                settings.max_queue_delay_ms,
                fixed_ms,
            )
        return policy.choose(
            [lv.state() for lv in model.levels],
            budget,
            model.default_level,
            rows,
            settings.max_batch_size,
            settings.max_queue_delay_ms,
            model.overhead.value,
            lag_ms,
            margin_ms,
        )

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

    def _batchers(self) -> list[Instances]:
        served = {id(m): m for m in self.models.values()}
        served.update((id(m), m) for vs in self.versions.values() for m in vs.values())
        return [lv.batcher for m in served.values() for lv in m.levels]
