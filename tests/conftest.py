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
def interpreter_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Neural Interpreter trained on digits for one epoch (the second family)."""
    from model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ni-ckpt")
    train(TrainConfig(dataset="digits", family="interpreter", epochs=1, preset="tiny", batch_size=128), out)
    return out


@pytest.fixture(scope="session")
def interpreter_bundle(interpreter_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.build import export_bundle

    out = tmp_path_factory.mktemp("ni-bundles") / "tiny-ni"
    export_bundle(interpreter_checkpoint, out, TINY_LEVELS, name="tiny-ni")
    return out
