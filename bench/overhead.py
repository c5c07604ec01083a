"""Serving overhead: the server's closed-loop throughput and latency at each concurrency against raw
onnxruntime running the same level file, with the same thread settings, on the batch sizes the
server's batcher actually formed (the physical limit on this machine).

The server runs alone while it is measured; raw onnxruntime runs right after each of its runs,
in the bench's own process, while the server idles."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import load
from bench.measure import circuitserve_api, closed, our_server, summary
from bench.plan import SERVER, Plan
from export.manifest import Manifest
from export.profile import cpu_session


def batches_formed(bodies: list[bytes]) -> list[int]:
    """One entry per batch the server ran, from the batch size each answer reports: a batch of b
    samples is reported by its b requests."""
    counts = Counter(int(json.loads(b)["batch_size"]) for b in bodies)
    return sorted(b for b, n in counts.items() for _ in range(max(1, round(n / b))))


def in_server_compute(bodies: list[bytes], window_s: float) -> dict[str, float]:
    """What the server's own answers say about its onnxruntime runs: the fraction of the window the
    level was computing, and the samples per second it computed while it was. Each batch's compute
    time is reported by each of its b requests, so each report counts 1/b."""
    answers = [json.loads(b) for b in bodies]
    compute_s = sum(a["compute_ms"] / a["batch_size"] for a in answers) / 1e3
    return {
        "compute_busy_fraction": round(compute_s / window_s, 4) if window_s > 0 else 0.0,
        "in_server_onnxruntime_rps": round(len(answers) / compute_s, 1) if compute_s > 0 else 0.0,
    }


def raw_onnxruntime(
    path: Path, example_shape: list[int], sizes: list[int], seconds: float, threads: int
) -> dict[str, float]:
    """session.run over `sizes` in turn, for `seconds`: samples per second and per-run latency."""
    session = cpu_session(path, threads)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(sizes), *example_shape)).astype(np.float32)
    for b in sorted(set(sizes)):  # every shape once, then a short warm-up over the sequence
        session.run(None, {name: x[:b]})
    warm_until, i = time.perf_counter() + min(1.0, seconds / 4), 0
    while time.perf_counter() < warm_until:
        session.run(None, {name: x[: sizes[i % len(sizes)]]})
        i += 1
    times: list[float] = []
    samples = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or not times:
        b = sizes[i % len(sizes)]
        t0 = time.perf_counter()
        session.run(None, {name: x[:b]})
        times.append(time.perf_counter() - t0)
        samples += b
        i += 1
    elapsed = time.perf_counter() - start
    return {
        "throughput_rps": round(samples / elapsed, 1),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
    }


def _compare(plan: Plan, run: load.Run, path: Path, shape: list[int], all_cores: int) -> dict[str, object]:
    """One concurrency: the server's run beside raw onnxruntime on the batches the server formed."""
    bodies = [r.body for r in run.ok if r.body is not None]
    sizes = batches_formed(bodies) or [1]
    raw = raw_onnxruntime(path, shape, sizes, plan.load_s, SERVER.intra_op_threads)
    ours = summary(run)
    return {
        "server": ours,
        **in_server_compute(bodies, run.window_s),
        "raw_onnxruntime": raw,
        # the same batches on every core, whatever the server uses: for reference
        "raw_onnxruntime_all_cores": raw_onnxruntime(path, shape, sizes, plan.load_s / 2, all_cores),
        "mean_batch_size": round(float(np.mean(sizes)), 2),
        "throughput_ratio": round(ours["throughput_rps"] / raw["throughput_rps"], 4),
    }


def run_overhead(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, log_dir: Path
) -> dict[str, object]:
    full = manifest.sorted_levels()[0]
    all_cores = manifest.profile.intra_op_threads
    out: dict[str, object] = {
        "model": manifest.name,
        "level": full.name,
        **SERVER.as_dict(),
        "all_cores_threads": all_cores,
    }
    api = circuitserve_api(manifest.name)  # no budget: the server's default level, the full one
    with our_server(bundle, log_dir) as server:
        target = api.target(server, examples)
        for c in plan.concurrencies:
            run = closed(server, target, c, plan, keep_bodies=True)
            # raw onnxruntime right after, while the server idles: both see the same machine
            out[f"c{c}"] = _compare(plan, run, bundle / full.file, manifest.input.shape[1:], all_cores)
    return out
