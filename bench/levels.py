"""Levels: per dataset and level, test accuracy, onnxruntime latency at batch 1 and 128 and the
speedup over the full level; the same levels in random module order (the control for the
out-degree ranking), and a model trained without sparsity-aware training (full model only)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.build import BundleSpec, bundle, checkpoint_meta
from bench.plan import Plan
from export.profile import cpu_session, time_batches
from model import levels

BATCHES = (1, 128)
ROUNDS = 3  # levels are timed in turn, ROUNDS times over: a passing disturbance hits one round only


def level_latency(
    paths: dict[str, Path], shape: list[int], threads: int, budget_s: float
) -> dict[str, dict[int, float]]:
    """Median onnxruntime latency (ms) per level and batch size: the median over interleaved rounds
    of each round's median."""
    sessions = {name: cpu_session(p, threads) for name, p in paths.items()}
    rounds: dict[str, list[dict[int, float]]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, session in sessions.items():
            stats = time_batches(session, shape, BATCHES, budget_s / ROUNDS)
            rounds[name].append({s.batch_size: s.median_ms for s in stats})
    medians = {}
    for name, per_round in rounds.items():
        medians[name] = {b: round(statistics.median(r[b] for r in per_round), 4) for b in BATCHES}
    return medians


def _by_level_name(accuracies: dict[str, float]) -> dict[str, float]:
    """The checkpoint's accuracy table keyed by level name ("full", "1/2"); checkpoints written before
    model.levels named the full level "1"."""
    return {levels.canonical(k): round(v, 4) for k, v in accuracies.items()}


def random_order_accuracy(spec: BundleSpec, cache: Path, export: bool) -> tuple[dict[str, float], str]:
    """Accuracy per level with the modules kept in random order, and where the figures come from."""
    if export:
        _, manifest = bundle(spec.with_ranking("random"), cache)
        return {lv.name: lv.accuracy for lv in manifest.levels}, "onnx bundle exported in random order"
    meta = checkpoint_meta(spec, cache)
    return _by_level_name(meta["test_accuracy"]["random"]), "checkpoint (torch), same random order"


def run_dataset(plan: Plan, spec: BundleSpec, cache: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(levels table, model description) for one dataset."""
    path, manifest = bundle(spec, cache)
    meta = checkpoint_meta(spec, cache)
    plain = _by_level_name(checkpoint_meta(spec.with_plain_training(), cache)["test_accuracy"]["outdegree"])
    random_acc, random_source = random_order_accuracy(spec, cache, plan.export_random)
    shape = manifest.input.shape[1:]
    paths = {lv.name: path / lv.file for lv in manifest.sorted_levels()}
    timings = level_latency(paths, shape, manifest.profile.intra_op_threads, plan.profile_s)
    full = manifest.sorted_levels()[0]
    table: dict[str, Any] = {}
    for lv in manifest.sorted_levels():
        t, t_full = timings[lv.name], timings[full.name]
        table[lv.name] = {
            "keep_fraction": lv.keep_fraction,
            "modules": lv.units,
            "accuracy": lv.accuracy,
            "accuracy_drop": round(full.accuracy - lv.accuracy, 4),
            "accuracy_random_order": random_acc.get(lv.name),
            "accuracy_plain_training": plain.get(lv.name),
            "latency_ms_b1": t[1],
            "latency_ms_b128": t[128],
            "speedup_b1": round(t_full[1] / t[1], 3),
            "speedup_b128": round(t_full[128] / t[128], 3),
            "flops": lv.flops,
        }
    model = {
        "dataset": spec.dataset,
        "preset": meta["train_config"].get("preset") or "(dataset default)",
        "modules": full.units,
        "epochs": meta["train_config"]["epochs"],
        "onnxruntime_threads": manifest.profile.intra_op_threads,
        "train_seconds": meta["train_seconds"],
        "random_order_source": random_source,
        "plain_training_source": "checkpoint (torch), trained on the full model only, same epochs",
        "bundle": path.name,
    }
    return table, model


def run_levels(plan: Plan, cache: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    tables, models = {}, {}
    for name, spec in plan.datasets.items():
        tables[name], models[name] = run_dataset(plan, spec, cache)
    return tables, models
