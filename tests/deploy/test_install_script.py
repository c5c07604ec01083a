"""One install command for CI and the images (scripts/install.sh), and proof that what the runtime
image installs (the base package, no extras) serves without torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from deploy_helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

INSTALL = REPO / "scripts" / "install.sh"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CIRCUITSERVE_INSTALL_DRY_RUN": "1", "PYTHON": "python"}
    return subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=30)


@pytest.mark.parametrize(
    ("args", "command"),
    [
        ((), "python -m pip install ."),  # the runtime image
        (("train",), "python -m pip install .[train]"),  # the image's bundle-building stage
        (("gpu",), "python -m pip install .[gpu]"),  # the CUDA image: CUDA 13 and cuDNN 9 wheels
        (("-e", "all"), "python -m pip install -e .[all]"),  # CI and the test command
    ],
)
def test_install_script_commands(args: tuple[str, ...], command: str) -> None:
    result = _dry_run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == command


@pytest.mark.parametrize("args", [("nope",), ("-e", "all", "train"), ("--user",)])
def test_install_script_rejects_other_arguments(args: tuple[str, ...]) -> None:
    assert _dry_run(*args).returncode == 2


def test_ci_installs_with_the_same_script() -> None:
    """CI runs the test command, which installs with the script the Dockerfile runs, with `-e all`."""
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"scripts/test\.sh", ci), ".ci/run must run the README's test command, scripts/test.sh"
    assert re.search(r"scripts/install\.sh\s+-e\s+all\b", (REPO / "scripts" / "test.sh").read_text()), (
        "scripts/test.sh must install with `scripts/install.sh -e all`, the command the Dockerfile shares"
    )


def test_all_extra_covers_every_image_install() -> None:
    """CI's `.[all]` is a superset of the image's `.` and `.[train]`: CI resolves what the images do."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    all_extras = {m.group(1) for r in extras["all"] for m in re.finditer(r"(\w+)", r.split("[", 1)[1])}
    assert {"train", "dev"} <= all_extras


def _base_closure() -> set[str]:
    """Distributions `pip install .` brings in on this platform (installed ones, walked by metadata)."""

    def applies(req: Requirement, extra: str = "") -> bool:
        return req.marker is None or req.marker.evaluate({"extra": extra})

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if applies(r)]
    while todo:  # every requirement in todo applies: markers are checked on the way in
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            continue
        todo += [r for r in requires if applies(r)]
        todo += [r for extra in req.extras for r in requires if r.marker is not None and applies(r, extra)]
    return {name for name, _ in seen}


def test_base_install_pulls_no_training_packages() -> None:
    closure = _base_closure()
    assert "onnxruntime-gpu" in closure or "onnxruntime" in closure
    assert "fastapi" in closure and "uvicorn" in closure
    train_only = {
        canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["train"]
    }
    assert "torch" in train_only
    assert not closure & train_only, f"the runtime image would install {sorted(closure & train_only)}"


BLOCK_TORCH = """
import sys
for name in ("torch", "onnx", "onnxscript", "sklearn", "matplotlib", "bench"):
    sys.modules[name] = None  # any import of these now raises ImportError
import service.app, circuitserve
from typer.testing import CliRunner
for command in ("serve", "inspect"):
    result = CliRunner().invoke(circuitserve.app, [command, "--help"])
    assert result.exit_code == 0, result.output
print("ok")
"""


def test_server_imports_without_torch() -> None:
    """What `circuitserve serve` imports works on the base install: torch and friends are blocked."""
    if not (REPO / "service" / "app.py").exists():
        pytest.skip("service/app.py not written yet")
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
