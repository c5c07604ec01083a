"""Helpers for the deploy checks: the repository layout, the metrics contract, the tools."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The metrics the server exports: name -> (type, labels). This is the contract that deploy/
# (dashboard, rules, autoscaling) is written against; test_metrics_contract_matches_the_server checks
# it against service/metrics.py, so renaming a metric there fails here until deploy/ follows.
EXPORTED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "circuitserve_requests_total": ("counter", ("model", "level", "outcome")),
    "circuitserve_request_duration_seconds": ("histogram", ("model", "level")),
    "circuitserve_queue_wait_seconds": ("histogram", ("model", "level")),
    "circuitserve_compute_seconds": ("histogram", ("model", "level")),
    "circuitserve_batch_size": ("histogram", ("model", "level")),
    "circuitserve_queue_depth": ("gauge", ("model", "level")),
    "circuitserve_inferred_samples_total": ("counter", ("model", "level")),
    "circuitserve_level_selections_total": ("counter", ("model", "level", "policy")),
    "circuitserve_budget_misses_total": ("counter", ("model",)),
    "circuitserve_prediction_error_seconds": ("histogram", ("model",)),
    "circuitserve_ready": ("gauge", ()),
}

# Labels Prometheus adds at scrape time (deploy/prometheus/*.yml) or histograms carry.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "pool", "le"})


def series_names(metrics: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """Names a query can use -> their labels: a histogram is three series (_bucket has `le`)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, (kind, labels) in metrics.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = (*labels, "le")
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


EXPORTED_SERIES = series_names(EXPORTED_METRICS)


def tool(name: str) -> str:
    """Path of a command-line tool: on PATH or beside this interpreter (the venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    pytest.fail(f"{name} not found on PATH nor in {Path(sys.executable).parent}")


def optional_tool(name: str, how_to_get: str) -> str:
    """A tool CI must have (fail when CI is set) but a developer may lack (skip)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} not found: {how_to_get}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def k8s_manifests() -> list[Path]:
    return sorted((DEPLOY / "k8s").rglob("*.yaml"))


def kserve_manifests() -> list[Path]:
    return sorted((DEPLOY / "kserve").rglob("*.yaml"))


def settings_fields() -> set[str]:
    """CIRCUITSERVE_* variable names the server reads (service/settings.py)."""
    from service.settings import Settings

    return {f"CIRCUITSERVE_{name.upper()}" for name in Settings.model_fields}


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # continuation lines joined, comments inside removed
    line: int


@dataclass
class Stage:
    name: str  # the AS name, or its index
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        keyword, _, arguments = text.partition(" ")
        out.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, f"{path}: unterminated continuation at line {start}"
    return out


def dockerfile_stages(path: Path) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, the build stages in order)."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for ins in dockerfile_instructions(path):
        if ins.keyword == "FROM":
            words = [w for w in ins.arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            preamble.append(ins)
    return preamble, stages
