"""Shared fixtures: one tiny model trained on digits and exported, once per test session.
The real spine (train -> export -> bundle on disk) feeds the export and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import levels

TINY_LEVELS = list(levels.DEFAULT)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ckpt")
    train(TrainConfig(dataset="digits", epochs=1, preset="tiny", batch_size=128), out)
    return out


@pytest.fixture(scope="session")
def trained_bundle(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.build import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(trained_checkpoint, out, TINY_LEVELS, name="tiny")
    return out


@pytest.fixture(scope="session")
def family_checkpoints(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny digits checkpoint per registered family (the NAC's: trained_checkpoint)."""
    from model.families import FAMILIES
    from model.train import TrainConfig, train

    checkpoints = {"nac": trained_checkpoint}
    for name in FAMILIES:
        if name not in checkpoints:
            checkpoints[name] = tmp_path_factory.mktemp(f"ckpt-{name}")
            cfg = TrainConfig(dataset="digits", family=name, epochs=1, preset="tiny", batch_size=128)
            train(cfg, checkpoints[name])
    return checkpoints


@pytest.fixture(scope="session")
def family_bundles(
    family_checkpoints: dict[str, Path], trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Their bundles, named "tiny-<family>" (the NAC's: trained_bundle, named "tiny")."""
    from export.build import export_bundle

    bundles = {"nac": trained_bundle}
    for name, ckpt in family_checkpoints.items():
        if name not in bundles:
            bundles[name] = tmp_path_factory.mktemp("bundles") / f"tiny-{name}"
            export_bundle(ckpt, bundles[name], TINY_LEVELS, name=f"tiny-{name}")
    return bundles


@pytest.fixture(scope="session")
def interpreter_checkpoint(family_checkpoints: dict[str, Path]) -> Path:
    """A tiny Neural Interpreter trained on digits for one epoch (the second family)."""
    return family_checkpoints["interpreter"]


@pytest.fixture(scope="session")
def interpreter_bundle(family_bundles: dict[str, Path]) -> Path:
    return family_bundles["interpreter"]
