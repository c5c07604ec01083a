"""Accuracy over seeds: each level's test accuracy as mean ± std over seeds (each seed its own split
and initialisation), beside scikit-learn baselines fitted on train+val and scored on test of the very
same splits. One test split is a few hundred images (digits: 359, one image = 0.28 points), so one
seed's level-to-level differences are mostly noise; the spread over seeds says how much.

Cost: one sparsity-aware training per dataset and seed (seed 0 is the levels section's, cached), a few
seconds of scikit-learn per split; checkpoints are cached under bench/out/runs, so a rerun only reads.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.build import BundleSpec, checkpoint_meta
from bench.plan import Plan
from model import levels
from model.data import load_dataset

BASELINES = ("svc", "mlp", "logistic")


def baseline_models(seed: int) -> dict[str, Any]:
    """scikit-learn's classic digits models, on raw inputs: SVC(gamma=0.001), MLPClassifier((256,)),
    LogisticRegression (max_iter raised until it converges on digits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    return {
        "svc": SVC(gamma=0.001),
        "mlp": MLPClassifier((256,), random_state=seed),
        "logistic": LogisticRegression(max_iter=2000),
    }


def baseline_accuracy(dataset: str, seed: int) -> dict[str, float]:
    """Each baseline's test accuracy on `load_dataset(dataset, seed)`, fitted on train+val."""
    data = load_dataset(dataset, seed)

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    x = np.concatenate([flat(data.train.x), flat(data.val.x)])
    y = np.concatenate([data.train.y, data.val.y])
    scores = {}
    for name, model in baseline_models(seed).items():
        with warnings.catch_warnings():  # the MLP's "max_iter reached": the baseline as it is
            warnings.simplefilter("ignore")
            model.fit(x, y)
        scores[name] = float(model.score(flat(data.test.x), data.test.y))
    return scores


def spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) over seeds, with the values themselves."""
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "per_seed": [round(v, 4) for v in values],
    }


def _by_level(table: dict[str, float]) -> dict[str, float]:
    return {levels.canonical(k): v for k, v in table.items()}


def run_dataset(spec: BundleSpec, seeds: tuple[int, ...], cache: Path) -> dict[str, Any]:
    metas = [checkpoint_meta(spec.with_seed(s), cache) for s in seeds]
    start = time.monotonic()
    baselines = [baseline_accuracy(spec.dataset, s) for s in seeds]
    baseline_s = time.monotonic() - start

    def over_seeds(order: str) -> dict[str, Any]:
        tables = [_by_level(m["test_accuracy"][order]) for m in metas]
        return {lv: spread([t[lv] for t in tables]) for lv in tables[0]}

    return {
        "seeds": list(seeds),
        "test_examples": len(load_dataset(spec.dataset, seeds[0]).test.y),
        "levels": over_seeds("outdegree"),
        "random_order": over_seeds("random"),
        "baselines": {name: spread([b[name] for b in baselines]) for name in BASELINES},
        "train_seconds": [m["train_seconds"] for m in metas],
        "baseline_seconds": round(baseline_s, 1),
    }


def run_accuracy(plan: Plan, cache: Path) -> dict[str, Any]:
    return {name: run_dataset(spec, plan.seeds, cache) for name, spec in plan.datasets.items()}
