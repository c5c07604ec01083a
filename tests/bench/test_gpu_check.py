"""The device check (scripts/gpu_check.sh, bench.gpu_check): its CPU fallback runs here, end to end
on the session's trained bundle with this venv reused; the GPU run itself needs a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_check import BATCHES, report

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(bundle: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GPU_CHECK_PROVIDER": "cpu",
        "GPU_CHECK_VENV": sys.prefix,  # this venv, as it is: no install
        "GPU_CHECK_REUSE_VENV": "1",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_ARGS": " ".join(args),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(bundle)], capture_output=True, text=True, env=env, timeout=240
    )


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    assert SCRIPT.stat().st_mode & 0o111


def test_without_a_bundle_it_says_what_to_do(tmp_path: Path) -> None:
    done = _run(tmp_path / "none", tmp_path / "out")
    assert done.returncode == 2 and "export one first" in done.stderr


@pytest.mark.slow
def test_cpu_fallback_prints_the_table_and_writes_json(trained_bundle: Path, tmp_path: Path) -> None:
    done = _run(trained_bundle, tmp_path / "out", "--seconds", "0.01", "--no-floor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provider cpu" in done.stdout and "1/8 over full: b1 " in done.stdout
    result = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert set(result["levels_ms"]) == {"full", "1/2", "1/4", "1/8"}
    assert all(set(ms) == {str(b) for b in BATCHES} for ms in result["levels_ms"].values())
    assert all(v > 0 for ms in result["levels_ms"].values() for v in ms.values())


def test_report_speedups_and_floor() -> None:
    levels = {"full": {1: 1.0, 32: 2.0, 128: 4.0, 1024: 16.0}, "1/8": {1: 0.5, 32: 1.0, 128: 1.0, 1024: 2.0}}
    levels |= {"full@fp16": {b: 1.0 for b in BATCHES}, "1/8@fp16": {b: 0.5 for b in BATCHES}}
    floors = {"full": {"circuitserve": {"p50_ms": 1.3}, "bare_asgi": {"p50_ms": 1.0}, "p50_ratio": 1.3}}
    text = report(levels, floors)
    assert "1/8 over full: b1 2.00x, b32 2.00x, b128 4.00x, b1024 8.00x" in text
    assert "1/8@fp16 over full@fp16: b1 2.00x" in text
    assert "floor full: circuitserve p50 1.300 ms, bare app 1.000 ms: 1.30x" in text
