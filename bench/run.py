"""`circuitserve bench`: every section in turn, then report.json, REPORT.md and the plots.

Sections: levels (accuracy/latency trade-off), accuracy (mean ± std over seeds, beside scikit-learn
baselines on the same splits), overhead (server vs raw onnxruntime), peers (LitServe, BentoML),
overload (open loop at 1x/2x/4x capacity with a latency budget), latency floor (one request at low
load per level, against a bare ASGI app and raw onnxruntime; largest-request memory), families (every
registered model family per level, over seeds, ranked against random unit order), workers
(`serve --workers 2` against 1 worker and against LitServe's multi-process layouts), perf_analyzer
(Triton's load generator against circuitserve: an independent measure beside our own generator's).
Trained models and bundles are cached under bench/out/ (see bench/build.py); server logs go to
bench/out/logs/SECTION/.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench import report
from bench.accuracy import run_accuracy
from bench.build import BundleSpec, bundle
from bench.families import run_families
from bench.latency_floor import run_latency_floor
from bench.levels import run_levels
from bench.overhead import run_overhead
from bench.overload import run_overload
from bench.peers import run_peers
from bench.perf_analyzer import run_perf_analyzer
from bench.plan import FULL, QUICK, Plan
from bench.workers import run_workers
from export.manifest import Manifest
from model.data import load_dataset
from model.families import FAMILIES

BENCH_DIR = Path(__file__).resolve().parent
CACHE_ENV = "CIRCUITSERVE_BENCH_CACHE"
EXAMPLES = 64  # distinct test examples the load generator sends in turn

T = TypeVar("T")


class UsageError(ValueError):
    """A bench command that cannot run as asked (an unknown section; --only with nothing to merge into)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or BENCH_DIR / "out")


def output_dir(out: Path, quick: bool) -> Path:
    """Where the report goes. A quick run never writes over the committed report in bench/."""
    if quick and Path(out).resolve() == BENCH_DIR:
        tmp = Path(tempfile.mkdtemp(prefix="circuitserve-bench-quick-"))
        _log(f"quick run: writing to {tmp}, not over the committed report in {BENCH_DIR}")
        return tmp
    return Path(out)


def examples(spec: BundleSpec, n: int = EXAMPLES) -> np.ndarray:
    x: np.ndarray = load_dataset(spec.dataset, 0).test.x[:n]
    return x


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _timed(name: str, seconds: dict[str, float], steal: dict[str, float | None], fn: Callable[[], T]) -> T:
    """Run a section; its wall time into `seconds`, the share of CPU time the hypervisor took
    meanwhile (report.steal_share) into `steal`."""
    _log(f"{name}...")
    start, cpu = time.monotonic(), report.cpu_times()
    try:
        return fn()
    finally:
        seconds[name] = round(time.monotonic() - start, 1)
        steal[name] = report.steal_share(cpu, report.cpu_times())
        _log(f"{name} done in {seconds[name]:.0f} s (steal {steal[name]})")


@dataclass
class _Context:
    """What the sections share: the plan, the cache, and the two served bundles, built on first use."""

    plan: Plan
    cache: Path
    section: str = ""  # the one running: each keeps its servers' logs apart (a later one reuses names)
    _bundles: dict[str, tuple[Path, Manifest]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.cache / "logs" / self.section

    def bundle(self, which: str) -> tuple[Path, Manifest, np.ndarray]:
        """`which` is "small" (the served digits default) or "large" (the overload model)."""
        spec = self.plan.serving if which == "small" else self.plan.overload
        if which not in self._bundles:
            self._bundles[which] = bundle(spec, self.cache)
        path, manifest = self._bundles[which]
        return path, manifest, examples(spec)


def _overhead(c: _Context) -> dict[str, Any]:
    return {which: run_overhead(c.plan, *c.bundle(which), c.logs) for which in ("small", "large")}


def _peers(c: _Context) -> dict[str, Any]:
    peers, scale_out = run_peers(c.plan, *c.bundle("small"), c.cache, c.logs)
    return {"peers": peers, "scale_out": scale_out}


def _levels(c: _Context) -> dict[str, Any]:
    levels, models = run_levels(c.plan, c.cache)
    return {"levels": levels, "models": models}


# Each section: its name (for --only) -> what it measures, as report.json keys. In run order.
SECTIONS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "levels": _levels,
    "accuracy": lambda c: {"accuracy": run_accuracy(c.plan, c.cache)},
    "overhead": lambda c: {"overhead": _overhead(c)},
    "peers": _peers,
    "overload": lambda c: {"overload": run_overload(c.plan, *c.bundle("large"), c.logs)},
    "latency_floor": lambda c: {"latency_floor": run_latency_floor(c.plan, *c.bundle("small"), c.logs)},
    "families": lambda c: {"families": run_families(c.plan, c.cache)},
    "workers": lambda c: {"workers": run_workers(c.plan, *c.bundle("small"), c.cache, c.logs)},
    "perf_analyzer": lambda c: {
        "perf_analyzer": run_perf_analyzer(c.plan, *c.bundle("small"), c.cache, c.logs)
    },
}


def measure(plan: Plan, cache: Path, only: Iterable[str] | None = None) -> dict[str, Any]:
    """Run the sections (all, or those in `only`); the raw figures, keyed as in report.json."""
    names = list(SECTIONS) if only is None else list(only)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise UsageError(f"unknown bench section(s) {unknown}; the sections are {list(SECTIONS)}")
    context = _Context(plan, cache)
    seconds: dict[str, float] = {}
    steal: dict[str, float | None] = {}
    started = time.time()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for name in names:
        section = SECTIONS[name]
        context.section = name
        results.update(_timed(name, seconds, steal, partial(section, context)))
    return {"meta": report.meta(plan, started, load_before, seconds, steal), **results}


def merge(
    previous: dict[str, Any], fresh: dict[str, Any], families: Iterable[str] | None = None
) -> dict[str, Any]:
    """A partial run (--only) replaces its sections' keys in the previous report and keeps the rest.
    A run of some families only (`families`) replaces those families' entries in the families
    section and keeps the others'. meta records which sections (and families) each run measured, so
    the report says which figures are newer."""
    meta = {**previous.get("meta", {}), **fresh["meta"]}
    before = previous.get("meta", {})
    meta["section_seconds"] = {**before.get("section_seconds", {}), **fresh["meta"]["section_seconds"]}
    meta["section_steal"] = {**before.get("section_steal", {}), **fresh["meta"].get("section_steal", {})}
    runs = list(before.get("runs", []))
    fresh_meta = fresh["meta"]
    sections = list(fresh_meta["section_seconds"])
    run = {"date": fresh_meta["date"], "code_version": fresh_meta["code_version"], "sections": sections}
    if families is not None:
        run["families"] = list(families)
        fresh = {**fresh, "families": {**previous.get("families", {}), **fresh["families"]}}
    runs.append(run)
    meta["runs"] = runs
    derived = {"noise", "targets"}  # recomputed by report.write from the merged figures
    kept = {k: v for k, v in previous.items() if k not in derived and k != "meta"}
    return {**kept, **{k: v for k, v in fresh.items() if k != "meta"}, "meta": meta}


def run_all(
    out: Path = BENCH_DIR,
    quick: bool = False,
    only: Iterable[str] | None = None,
    families: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Measure every section (or those in `only`, merged into the report already in `out`) and write
    report.json, REPORT.md and the plots into `out`. `families`: the families section measures only
    these (model.families names) and keeps the report's figures of the others."""
    plan = QUICK if quick else FULL
    if families is not None:
        families = tuple(families)
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise UsageError(f"unknown model famil(ies) {unknown}; the families are {list(FAMILIES)}")
        if only is None or "families" not in only:
            raise UsageError("--families reruns part of the families section: use it with --only families")
        plan = replace(plan, families=families)
    out = output_dir(out, quick)
    previous = out / report.JSON_FILE
    if only is not None and not previous.exists():
        raise UsageError(f"--only merges into an existing {previous}; run the whole bench there once first")
    results = measure(plan, cache_dir(), only)
    if only is not None:
        results = merge(json.loads(previous.read_text()), results, families)
    final = report.write(results, out)
    _log(f"report written to {out / report.JSON_FILE} and {out / report.MARKDOWN_FILE}")
    return final
