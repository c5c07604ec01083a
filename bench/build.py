"""The checkpoints and bundles the bench measures, built on first use and cached under bench/out/.

A cache entry's key hashes its training config (and CACHE_VERSION), not the model code: after a
change to model/ or export/ that should show in the report, `rm -r bench/out/runs bench/out/bundles`
(or bump CACHE_VERSION) and rerun."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from export.build import export_bundle
from export.manifest import MANIFEST_FILE, Manifest, read_manifest
from model import levels
from model.train import META, TrainConfig, train

LEVELS = list(levels.DEFAULT)
# 3: manifest schema 2 (intervals, calibration); overlapping patches and warps in the recipes
CACHE_VERSION = 3


@dataclass(frozen=True)
class BundleSpec:
    """One trained model, exported in one module order."""

    dataset: str
    family: str = "nac"  # model.families; the default leaves the NAC's cache keys as they were
    preset: str | None = None  # None: the dataset's own
    seed: int = 0  # the split and the initialisation
    epochs: int | None = None  # None: the preset's
    sparsity_aware: bool = True
    ranking: str = "outdegree"
    name: str | None = None  # model name in the manifest
    ema: float | None = None  # None: TrainConfig's (a short training ends nearer its init with one)

    def train_config(self) -> TrainConfig:
        cfg = TrainConfig(
            dataset=self.dataset,
            family=self.family,
            seed=self.seed,
            preset=self.preset,
            epochs=self.epochs,
            sparsity_aware=self.sparsity_aware,
        )
        return cfg if self.ema is None else replace(cfg, ema=self.ema)

    def with_ranking(self, ranking: str) -> BundleSpec:
        return replace(self, ranking=ranking)

    def with_plain_training(self) -> BundleSpec:
        return replace(self, sparsity_aware=False)

    def with_seed(self, seed: int) -> BundleSpec:
        return replace(self, seed=seed)

    def with_family(self, family: str) -> BundleSpec:
        return replace(self, family=family)

    @property
    def label(self) -> str:
        family = "" if self.family == "nac" else self.family
        base = self.name or "-".join(p for p in (self.dataset, family, self.preset) if p)
        base += f"-seed{self.seed}" if self.seed else ""
        return base if self.sparsity_aware else f"{base}-plain"


def _key(payload: dict[str, Any]) -> str:
    text = json.dumps({"cache_version": CACHE_VERSION, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def checkpoint(spec: BundleSpec, cache: Path) -> Path:
    """The trained checkpoint for `spec` (trained now unless cached)."""
    cfg = spec.train_config()
    path = cache / "runs" / f"{spec.label}-{_key(asdict(cfg))}"
    if not (path / META).is_file():
        _log(f"training {spec.label} ({cfg.epochs or 'preset'} epochs) -> {path}")
        train(cfg, path)
    return path


def checkpoint_meta(spec: BundleSpec, cache: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((checkpoint(spec, cache) / META).read_text())
    return meta


def bundle(spec: BundleSpec, cache: Path) -> tuple[Path, Manifest]:
    """The exported bundle for `spec` (trained and exported now unless cached)."""
    ckpt = checkpoint(spec, cache)
    key = _key({"train": asdict(spec.train_config()), "ranking": spec.ranking, "name": spec.name})
    path = cache / "bundles" / f"{spec.label}-{spec.ranking}-{key}"
    if not (path / MANIFEST_FILE).is_file():
        _log(f"exporting {spec.label} ({spec.ranking} order) -> {path}")
        export_bundle(ckpt, path, LEVELS, name=spec.name, ranking=spec.ranking)
    return path, read_manifest(path)
