"""`circuitserve bench`: every section in turn, then report.json, REPORT.md and the plots.

Sections: levels (accuracy/latency trade-off), accuracy (mean ± std over seeds, beside scikit-learn
baselines on the same splits), overhead (server vs raw onnxruntime), peers (LitServe, BentoML),
overload (open loop at 1x/2x/4x capacity with a latency budget), latency floor (one request at low
load per level, against a bare ASGI app and raw onnxruntime; largest-request memory). Trained models
and bundles are cached under bench/out/ (see bench/build.py); server logs go to bench/out/logs/.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench import report
from bench.accuracy import run_accuracy
from bench.build import BundleSpec, bundle
from bench.latency_floor import run_latency_floor
from bench.levels import run_levels
from bench.overhead import run_overhead
from bench.overload import run_overload
from bench.peers import run_peers
from bench.plan import FULL, QUICK, Plan
from model.data import load_dataset

BENCH_DIR = Path(__file__).resolve().parent
CACHE_ENV = "CIRCUITSERVE_BENCH_CACHE"
EXAMPLES = 64  # distinct test examples the load generator sends in turn

T = TypeVar("T")


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


def _timed(name: str, seconds: dict[str, float], fn: Callable[[], T]) -> T:
    _log(f"{name}...")
    start = time.monotonic()
    try:
        return fn()
    finally:
        seconds[name] = round(time.monotonic() - start, 1)
        _log(f"{name} done in {seconds[name]:.0f} s")


def measure(plan: Plan, cache: Path) -> dict[str, Any]:
    """Run every section; the raw figures, keyed as in report.json."""
    logs = cache / "logs"
    seconds: dict[str, float] = {}
    started = time.time()
    load_before = os.getloadavg()
    levels, models = _timed("levels", seconds, lambda: run_levels(plan, cache))
    accuracy = _timed("accuracy over seeds", seconds, lambda: run_accuracy(plan, cache))
    small, small_manifest = bundle(plan.serving, cache)
    large, large_manifest = _timed(
        "building the overload model", seconds, lambda: bundle(plan.overload, cache)
    )
    small_x, large_x = examples(plan.serving), examples(plan.overload)
    overhead = {
        "small": _timed(
            "overhead (small model)",
            seconds,
            lambda: run_overhead(plan, small, small_manifest, small_x, logs),
        ),
        "large": _timed(
            "overhead (large model)",
            seconds,
            lambda: run_overhead(plan, large, large_manifest, large_x, logs),
        ),
    }
    peers, scale_out = _timed(
        "peers", seconds, lambda: run_peers(plan, small, small_manifest, small_x, cache, logs)
    )
    overload = _timed("overload", seconds, lambda: run_overload(plan, large, large_manifest, large_x, logs))
    floor = _timed(
        "latency floor", seconds, lambda: run_latency_floor(plan, small, small_manifest, small_x, logs)
    )
    return {
        "meta": report.meta(plan, started, load_before, seconds),
        "models": models,
        "levels": levels,
        "accuracy": accuracy,
        "overhead": overhead,
        "peers": peers,
        "scale_out": scale_out,
        "overload": overload,
        "latency_floor": floor,
    }


def run_all(out: Path = BENCH_DIR, quick: bool = False) -> dict[str, Any]:
    """Measure everything and write report.json, REPORT.md and the plots into `out`."""
    plan = QUICK if quick else FULL
    out = output_dir(out, quick)
    results = measure(plan, cache_dir())
    final = report.write(results, out)
    _log(f"report written to {out / report.JSON_FILE} and {out / report.MARKDOWN_FILE}")
    return final
