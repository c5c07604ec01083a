"""Prometheus metrics, one private registry per app. Names are a contract with deploy/ dashboards.

With `workers` > 1 (service.workers) every worker process starts with PROMETHEUS_MULTIPROC_DIR set,
so prometheus_client keeps each value in a per-process file there, and /metrics, from any worker,
sums every worker's files: counters and histograms add up, `circuitserve_queue_depth` is the sum
over live workers and `circuitserve_ready` their minimum (a dead worker's gauge files are removed).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
OUTCOMES = ("success", "bad_request", "rejected", "shed", "timeout", "error")
POLICIES = ("explicit", "latency_budget", "min_accuracy", "default")
NO_LEVEL = "none"  # level label of a request that failed before a level was chosen
UNKNOWN_MODEL = "_unknown"  # model label of a request for a model that is not served

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
_COMPUTE_BUCKETS = (0.0001, 0.00025, *_LATENCY_BUCKETS)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_ERROR_BUCKETS = tuple(
    ms / 1000
    for ms in (-100, -50, -20, -10, -5, -2, -1, -0.5, -0.2, 0, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 500)
)  # seconds


class Children:
    """A metric's labelled children, looked up once per label set: prometheus_client's `labels()`
    costs several µs a call (a lock, a tuple, validation), and a request makes about eight. Each
    child is kept as its one update function (`_updater`): `inc(amount)` of a counter, `observe(x)`
    of a histogram."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Callable[[float], None]] = {}

    def __call__(self, *labels: str) -> Callable[[float], None]:
        update = self._cache.get(labels)
        if update is None:
            update = self._cache[labels] = _updater(self._metric.labels(*labels))
        return update


def _updater(child: Any) -> Callable[[float], None]:
    """The child's update, straight to its values: a counter's `inc` and a histogram's `observe`
    check on every call that the metric is a child, not a parent, and `observe` scans the buckets in
    Python (measured here: 5 µs an observation, against about 1 with bisect). The same values are
    updated (in multiprocess mode too: they are its files' values); prometheus_client's own methods
    where its internals are not the ones known here."""
    bounds, buckets, total = (getattr(child, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if isinstance(bounds, list) and isinstance(buckets, list) and len(bounds) == len(buckets) and total:
        incs, add, last = [b.inc for b in buckets], total.inc, len(buckets) - 1

        def observe(amount: float) -> None:  # the first bucket whose bound >= amount, as prometheus_client
            add(amount)
            incs[min(bisect_left(bounds, amount), last)](1)

        return observe
    value = getattr(child, "_value", None)
    if isinstance(child, Counter) and value is not None and hasattr(value, "inc"):
        inc: Callable[[float], None] = value.inc
        return inc
    return child.observe if hasattr(child, "observe") else child.inc  # type: ignore[no-any-return]


def multiprocess() -> bool:
    """Whether prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR's files: decided when
    prometheus_client is first imported, so the variable must be set before any import of it."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition for no use here
        self._gauge_functions: list[tuple[Gauge, Callable[[], float]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ml = ("model", "level")
        self.requests = Counter(
            "circuitserve_requests", "Inference requests by outcome.", (*ml, "outcome"), registry=r
        )
        self.request_duration = Histogram(
            "circuitserve_request_duration_seconds",
            "Time from receiving an inference request to its answer.",
            ml,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "circuitserve_queue_wait_seconds",
            "Time a request waited in its level's queue before its batch ran.",
            ml,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "circuitserve_compute_seconds",
            "Inference time of one batch.",
            ml,
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "circuitserve_batch_size", "Samples per executed batch.", ml, buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "circuitserve_queue_depth",
            "Samples waiting in a level's queue.",
            ml,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inferred_samples = Counter(
            "circuitserve_inferred_samples", "Samples run through a level's graph.", ml, registry=r
        )
        self.level_selections = Counter(
            "circuitserve_level_selections",
            "Levels chosen, by the policy that chose them.",
            (*ml, "policy"),
            registry=r,
        )
        self.budget_misses = Counter(
            "circuitserve_budget_misses",
            "Answers with a budget that missed it: measured server time over the latency budget, "
            "or no level as accurate as the floor.",
            ("model",),
            registry=r,
        )
        self.prediction_error = Histogram(
            "circuitserve_prediction_error_seconds",
            "Measured minus predicted server time of an answer (positive: slower than predicted).",
            ("model",),
            buckets=_ERROR_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "circuitserve_ready",
            "1 when the server accepts inference requests.",
            registry=r,
            multiprocess_mode="livemin",
        )
        # the request path's children, memoized (see Children)
        self._requests, self._duration = Children(self.requests), Children(self.request_duration)
        self._queue_wait, self._compute = Children(self.queue_wait), Children(self.compute)
        self._batch_size, self._samples = Children(self.batch_size), Children(self.inferred_samples)
        self._selections, self._misses = Children(self.level_selections), Children(self.budget_misses)
        self._error = Children(self.prediction_error)

    def add_level(self, model: str, level: str, queue_depth: Callable[[], float]) -> None:
        """Create a level's series up front (so they read 0, not absent) and wire its queue gauge."""
        gauge = self.queue_depth.labels(model, level)
        if multiprocess():  # a function's value stays in this process: refresh() writes it out
            self._gauge_functions.append((gauge, queue_depth))
        else:
            gauge.set_function(queue_depth)
        for name in (self.request_duration, self.queue_wait, self.compute, self.batch_size):
            name.labels(model, level)
        self.inferred_samples.labels(model, level)
        for outcome in OUTCOMES:
            self.requests.labels(model, level, outcome)
        for policy in POLICIES:
            self.level_selections.labels(model, level, policy)
        self.budget_misses.labels(model)
        self.prediction_error.labels(model)

    def observe_batch(self, model: str, level: str, samples: int, compute_s: float) -> None:
        self._batch_size(model, level)(samples)
        self._compute(model, level)(compute_s)
        self._samples(model, level)(samples)

    def observe_request(
        self, model: str, level: str, outcome: str, duration_s: float, queue_s: float | None = None
    ) -> None:
        self._requests(model, level, outcome)(1)
        self._duration(model, level)(duration_s)
        if queue_s is not None:
            self._queue_wait(model, level)(queue_s)

    def selected(self, model: str, level: str, policy: str) -> None:
        self._selections(model, level, policy)(1)

    def observe_answer(self, model: str, error_s: float, missed: bool) -> None:
        """One answer's prediction error (measured - predicted server time) and budget miss."""
        self._error(model)(error_s)
        if missed:
            self._misses(model)(1)

    def refresh(self) -> None:
        """Write the function gauges' current values to this process's files (multiprocess mode;
        each worker calls it periodically, and before answering /metrics)."""
        for gauge, value in self._gauge_functions:
            gauge.set(value())

    def exposition(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        self.refresh()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return generate_latest(registry)
