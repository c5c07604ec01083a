"""Families: every registered model family (model.families.FAMILIES) on every dataset of the plan,
side by side. Per level: test accuracy as mean ± std over the plan's seeds (ranked and random unit
order, from the checkpoints), FLOPs relative to full, the level's knobs, onnxruntime latency at batch
1 and 128 and the speedup over full (seed 0's bundle), and training wall time per seed. A family
lands here by being registered: nothing below names one.

Cost: one training per family, dataset and seed (cached under bench/out/runs, shared with the levels
and accuracy sections for the NAC), one export per family and dataset.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.accuracy import spread
from bench.build import BundleSpec, bundle, checkpoint_meta
from bench.levels import level_latency
from bench.plan import Plan
from model import levels
from model.families import FAMILIES


def _by_level(table: dict[str, float]) -> dict[str, float]:
    return {levels.canonical(k): v for k, v in table.items()}


def run_family(plan: Plan, spec: BundleSpec, cache: Path) -> dict[str, Any]:
    """One family on one dataset: its levels table and how it was trained."""
    path, manifest = bundle(spec, cache)
    metas = [checkpoint_meta(spec.with_seed(s), cache) for s in plan.family_seeds]
    ranked = [_by_level(m["test_accuracy"]["outdegree"]) for m in metas]
    random_order = [_by_level(m["test_accuracy"]["random"]) for m in metas]
    paths = {lv.name: path / lv.file for lv in manifest.sorted_levels()}
    timings = level_latency(
        paths, manifest.input.shape[1:], manifest.profile.intra_op_threads, plan.profile_s
    )
    full = manifest.sorted_levels()[0]
    table: dict[str, Any] = {}
    for lv in manifest.sorted_levels():
        t, t_full = timings[lv.name], timings[full.name]
        table[lv.name] = {
            "keep_fraction": lv.keep_fraction,
            "units": lv.units,
            "knobs": lv.knobs,
            "accuracy": spread([r[lv.name] for r in ranked]),
            "accuracy_random_order": spread([r[lv.name] for r in random_order]),
            "flops": lv.flops,
            "flops_fraction": round(lv.flops / full.flops, 4) if lv.flops and full.flops else None,
            "latency_ms_b1": t[1],
            "latency_ms_b128": t[128],
            "speedup_b1": round(t_full[1] / t[1], 3),
            "speedup_b128": round(t_full[128] / t[128], 3),
        }
    # ranked against random where the order decides: past the units every order starts with
    lead = FAMILIES[spec.family].leading_units
    ordered = [name for name in table if table[name]["units"] > lead] or list(table)
    smallest = min(ordered, key=lambda name: (table[name]["units"], table[name]["keep_fraction"]))
    return {
        "unit": manifest.unit,
        "units": full.units,
        "knobs": full.knobs,
        "seeds": list(plan.family_seeds),
        "epochs": metas[0]["train_config"]["epochs"],
        "train_seconds": [m["train_seconds"] for m in metas],
        "train_threads": [m.get("train_threads") for m in metas],  # None: trained before it was recorded
        "onnxruntime_threads": manifest.profile.intra_op_threads,
        "levels": table,
        "smallest_units_level": smallest,
        "bundle": path.name,
    }


def run_families(plan: Plan, cache: Path) -> dict[str, Any]:
    """family -> dataset -> run_family's figures, for every registered family (or the plan's)."""
    names = plan.families if plan.families is not None else tuple(FAMILIES)
    return {
        family: {ds: run_family(plan, spec.with_family(family), cache) for ds, spec in plan.datasets.items()}
        for family in names
    }


def mean_train_seconds(entry: dict[str, Any]) -> float:
    return statistics.fmean(entry["train_seconds"])
