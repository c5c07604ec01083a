"""Overload: open-loop load (Poisson arrivals on a fixed schedule) at 1x, 2x, 4x the full level's
measured capacity, every request carrying a latency budget. Two ways of serving the same requests,
alternated on the same server:

- adaptive: `latency_budget_ms` = budget, the server picks the level per request;
- full_only: `sparsity_level: "full"`, every request pinned to the full level.

Both also send `timeout_ms` = budget, so neither server runs work that can no longer be on time:
the pinned one is the best a fixed-level server does, dropping what it cannot serve in time. The
adaptive requests are also shed (503, "latency budget" in the error) when the server predicts it
cannot answer them within the budget, at admission or when their batch forms.
A request is within budget when it is answered (200) no later than the budget after its *scheduled*
send time. Expected accuracy: the mean of the test accuracy of the level that answered each request.
From the answers themselves: the fraction whose measured server time (`server_ms`) met the budget,
whether `budget_met` agreed with it, and the policy's prediction error (server_ms - predicted_ms).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import load
from bench.measure import circuitserve_api, closed, our_server, summary, with_cores
from bench.plan import Plan
from export.manifest import Manifest

CAPACITY_CONCURRENCY = 64
MODES = ("adaptive", "full_only")
CLIENT_TIMEOUT_S = 1.0  # an answer later than this (20x the budget) counts as none: phases stay bounded


def outcome(
    run: load.Run, accuracy: dict[str, float], budget_ms: float, offered_rps: float
) -> dict[str, Any]:
    """What one open-loop phase comes to."""
    sent = len(run.records)
    bodies = [(r, json.loads(r.body)) for r in run.records if r.status == 200 and r.body]
    answered = [(r, str(b["sparsity_level"])) for r, b in bodies]
    server_ms = np.array([b["server_ms"] for _, b in bodies if "server_ms" in b])
    errors = np.array([b["server_ms"] - b["predicted_ms"] for _, b in bodies if "server_ms" in b])
    agree = [b.get("budget_met") == (b["server_ms"] <= budget_ms) for _, b in bodies if "server_ms" in b]
    in_time = [(r, lv) for r, lv in answered if r.latency_s * 1e3 <= budget_ms]
    levels = Counter(lv for _, lv in answered)
    shed = sum(r.status == 503 and b"latency budget" in (r.body or b"") for r in run.records)
    failed = [r.status for r in run.records if r.status != 200]
    statuses = Counter("no_answer" if s == load.TRANSPORT_ERROR else str(s) for s in failed)
    return {
        "offered_rps": round(offered_rps, 1),
        "sent": sent,
        "within_budget": round(len(in_time) / sent, 6) if sent else 0.0,
        "answered": round(len(answered) / sent, 4) if sent else 0.0,
        # refused fast (503 + Retry-After) as unable to meet the budget: part of failures["503"]
        "shed": round(shed / sent, 4) if sent else 0.0,
        "expected_accuracy": round(float(np.mean([accuracy[lv] for _, lv in answered])), 4)
        if answered
        else None,
        # expected correct answers delivered in time, per request sent
        "effective_accuracy": round(sum(accuracy[lv] for _, lv in in_time) / sent, 4) if sent else 0.0,
        "level_mix": {lv: round(n / len(answered), 4) for lv, n in sorted(levels.items())},
        # HTTP status (503 shed, 504 deadline passed in the queue) or no_answer within CLIENT_TIMEOUT_S
        "failures": {s: round(n / sent, 4) for s, n in sorted(statuses.items())},
        "p50_ms": round(run.latency_ms(50), 3),
        "p99_ms": round(run.latency_ms(99), 3),
        # the server's own view of its answers (fields of the answers)
        "server_met_budget": round(float(np.mean(server_ms <= budget_ms)), 6) if len(server_ms) else None,
        "budget_met_agrees": round(float(np.mean(agree)), 6) if agree else None,
        "prediction_error_ms": {
            f"p{q}": round(float(np.percentile(errors, q)), 3) if len(errors) else None for q in (1, 50, 99)
        },
        "generator_max_lag_ms": round(run.max_lag_s * 1e3, 3),
        "generator_mean_lag_ms": round(run.mean_lag_s * 1e3, 3),
        "server_cores": round(run.extra.get("server_cores", math.nan), 2),
        "client_cores": round(run.extra.get("client_cores", math.nan), 2),
    }


def run_overload(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, log_dir: Path
) -> dict[str, Any]:
    accuracy = {lv.name: lv.accuracy for lv in manifest.levels}
    full = manifest.sorted_levels()[0]
    budget = plan.budget_ms
    apis = {
        "adaptive": circuitserve_api(manifest.name, latency_budget_ms=budget, timeout_ms=budget),
        "full_only": circuitserve_api(manifest.name, sparsity_level=full.name, timeout_ms=budget),
    }
    out: dict[str, Any] = {
        "model": manifest.name,
        "preset": manifest.provenance.train_config.get("preset"),
        "epochs": manifest.provenance.train_config.get("epochs"),
        "modules": full.units,
        "budget_ms": budget,
        "level_accuracy": accuracy,
    }
    with our_server(bundle, log_dir) as server:
        # capacity: closed-loop saturation of the full level, no deadline
        pinned = circuitserve_api(manifest.name, sparsity_level=full.name)
        cap = closed(server, pinned.target(server, examples), CAPACITY_CONCURRENCY, plan)
        capacity = cap.throughput()
        out["capacity"] = {"concurrency": CAPACITY_CONCURRENCY, **summary(cap)}
        for factor in plan.overload_factors:
            rate = factor * capacity
            phase: dict[str, Any] = {}
            for mode in MODES:
                send_times = load.schedule(rate, plan.overload_s, seed=factor)
                target = apis[mode].target(server, examples)
                phase_fn = partial(
                    load.open_loop, target, send_times, timeout_s=CLIENT_TIMEOUT_S, keep_bodies=True
                )
                run = with_cores(server, phase_fn)
                phase[mode] = outcome(run, accuracy, budget, rate)
                time.sleep(0.5)  # let what is left in the queues time out before the next phase
            phase["accuracy_gap"] = (
                round(full.accuracy - phase["adaptive"]["expected_accuracy"], 4)
                if phase["adaptive"]["expected_accuracy"] is not None
                else None
            )
            out[f"x{factor}"] = phase
    return out
