"""Prometheus metrics, one private registry per app. Names are a contract with deploy/ dashboards.

With `workers` > 1 (service.workers) every worker process starts with PROMETHEUS_MULTIPROC_DIR set,
so prometheus_client keeps each value in a per-process file there, and /metrics, from any worker,
sums every worker's files: counters and histograms add up, `circuitserve_queue_depth` is the sum
over live workers and `circuitserve_ready` their minimum (a dead worker's gauge files are removed).

The request path updates plain numbers (`Children`, `_Series`), written into prometheus_client's
children whenever the registry is read; in multiprocess mode each update reaches the files at once.
"""

from __future__ import annotations

import math
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
    """A metric's labelled children, looked up once per label set (prometheus_client's `labels()`
    costs several µs a call: a lock, a tuple, validation), each kept as a `_Series`: the request
    path's updates are plain arithmetic, no lock, no call into prometheus_client."""

    __slots__ = ("_cache", "_metric", "_shared")

    def __init__(self, metric: Any, shared: bool) -> None:
        self._metric, self._shared = metric, shared
        self._cache: dict[tuple[str, ...], _Series] = {}

    def __call__(self, *labels: str) -> _Series:
        series = self._cache.get(labels)
        if series is None:
            series = self._cache[labels] = _Series(self._metric.labels(*labels), self._shared)
        return series

    def sync(self) -> None:
        for series in list(self._cache.values()):  # a copy: a batch thread may add a label set
            series.sync()


class _Series:
    """One child's count (a counter's total, or a histogram's observations per bucket and their sum)
    as plain numbers, written into the child's values by `sync`, before every exposition. A request
    makes about 13 updates; prometheus_client's take a lock each and a histogram's `observe` scans
    its buckets in Python. Each series has one writer at a time (the event loop, or the level's
    batch as it ends); `sync` only reads. `shared` (multiprocess mode: another worker's /metrics
    reads this process's files at any time) writes every update through to the child as well."""

    __slots__ = ("_buckets", "_shared", "_sum", "bounds", "counts", "total")

    def __init__(self, child: Any, shared: bool) -> None:
        bounds = getattr(child, "_upper_bounds", None)
        self.bounds: list[float] = list(bounds) if bounds is not None else [math.inf]  # the last is +Inf
        self.counts: list[float] = [0] * len(self.bounds)  # a counter: its total in counts[0]
        self.total = 0.0  # a histogram's sum
        self._buckets = child._buckets if bounds is not None else [child._value]
        self._sum = child._sum if bounds is not None else None
        self._shared = shared

    def add(self, amount: float = 1) -> None:
        """A counter's `inc`."""
        self.counts[0] += amount
        if self._shared:
            self._buckets[0].inc(amount)

    def observe(self, amount: float) -> None:
        """A histogram's `observe`: the first bucket whose bound is >= amount, as prometheus_client."""
        i = bisect_left(self.bounds, amount)
        self.counts[i] += 1
        self.total += amount
        if self._shared:
            self._buckets[i].inc(1)
            assert self._sum is not None
            self._sum.inc(amount)

    def sync(self) -> None:
        if self._shared:
            return  # written through already
        for value, count in zip(self._buckets, self.counts, strict=True):
            value.set(count)
        if self._sum is not None:
            self._sum.set(self.total)


class _Syncing:
    """A collector of no metrics of its own, registered first: collecting the registry syncs the
    request path's series into their children before they are read."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # no names: registering it does not collect

    def collect(self) -> list[Any]:
        self._metrics.sync()
        return []


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
        r.register(_Syncing(self))  # first: every read of the registry sees the series synced
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
        # the request path's series (see Children), synced into the registry when it is read
        self.shared = multiprocess()  # another worker's /metrics reads this process's values any time
        self._children = tuple(
            Children(m, self.shared)
            for m in (
                self.requests, self.request_duration, self.queue_wait, self.compute, self.batch_size,
                self.inferred_samples, self.level_selections, self.budget_misses, self.prediction_error,
            )
        )  # fmt: skip
        (
            self._requests, self._duration, self._queue_wait, self._compute, self._batch_size,
            self._samples, self._selections, self._misses, self._error,
        ) = self._children  # fmt: skip

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
        self._batch_size(model, level).observe(samples)
        self._compute(model, level).observe(compute_s)
        self._samples(model, level).add(samples)

    def observe_request(
        self, model: str, level: str, outcome: str, duration_s: float, queue_s: float | None = None
    ) -> None:
        self._requests(model, level, outcome).add()
        self._duration(model, level).observe(duration_s)
        if queue_s is not None:
            self._queue_wait(model, level).observe(queue_s)

    def selected(self, model: str, level: str, policy: str) -> None:
        self._selections(model, level, policy).add()

    def observe_answer(self, model: str, error_s: float, missed: bool) -> None:
        """One answer's prediction error (measured - predicted server time) and budget miss."""
        self._error(model).observe(error_s)
        if missed:
            self._misses(model).add()

    def refresh(self) -> None:
        """Write the function gauges' current values to this process's files (multiprocess mode;
        each worker calls it periodically, and before answering /metrics)."""
        for gauge, value in self._gauge_functions:
            gauge.set(value())

    def sync(self) -> None:
        """Write the request path's series into the registry's children (see _Series)."""
        for children in self._children:
            children.sync()

    def exposition(self) -> bytes:
        if not multiprocess():
            return generate_latest(self.registry)
        self.refresh()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return generate_latest(registry)
