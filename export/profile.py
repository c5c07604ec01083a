"""onnxruntime latency measurement, shared by export (the manifest's profile) and bench."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import LatencyStat

PROFILE_BATCHES = (1, 8, 32, 128)


def profile_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def cpu_session(path: Path | str, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or profile_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_batches(
    session: ort.InferenceSession,
    example_shape: Sequence[int],
    batches: Sequence[int] = PROFILE_BATCHES,
    budget_s: float = 2.0,
    min_repeats: int = 10,
    seed: int = 0,
) -> list[LatencyStat]:
    """Median and p95 wall time of session.run per batch size: warm up, then repeat until
    `budget_s` is spent (at least `min_repeats` times)."""
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    stats = []
    for b in batches:
        x = rng.standard_normal((b, *example_shape)).astype(np.float32)
        for _ in range(3):
            session.run(None, {name: x})
        times: list[float] = []
        deadline = time.perf_counter() + budget_s / len(batches)
        while len(times) < min_repeats or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1e3)
        stats.append(
            LatencyStat(
                batch_size=b,
                median_ms=round(float(np.median(times)), 4),
                p95_ms=round(float(np.percentile(times, 95)), 4),
            )
        )
    return stats


def machine_description() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpus, {platform.system()}, onnxruntime {ort.__version__}"


def code_version() -> str:
    """`git describe` of the code that measured or built something, or "unknown" outside a checkout."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"
