"""Serving overhead: the server's closed-loop throughput and latency at each concurrency against raw
onnxruntime running the same level file, with the same thread settings, on the batch sizes the
server's batcher actually formed (the physical limit on this machine).

The server runs alone while it is measured; raw onnxruntime runs right after each of its runs,
in the bench's own process, while the server idles. Each concurrency is measured in ROUNDS
alternations (server, raw, server, raw) and the rounds pooled: this machine's speed drifts by tens
of percent over minutes, and alternating keeps the drift from landing on one side only."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import load
from bench.measure import circuitserve_api, closed, our_server, summary
from bench.plan import SERVER, Plan
from bench.servers import Server
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


ROUNDS = 2


@dataclasses.dataclass
class RawRun:
    samples: int
    elapsed_s: float
    times_s: list[float]  # per session.run

    @classmethod
    def pooled(cls, runs: list[RawRun]) -> RawRun:
        return cls(
            sum(r.samples for r in runs), sum(r.elapsed_s for r in runs), [t for r in runs for t in r.times_s]
        )

    def summary(self) -> dict[str, float]:
        return {
            "throughput_rps": round(self.samples / self.elapsed_s, 1),
            "p50_ms": round(float(np.percentile(self.times_s, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(self.times_s, 99)) * 1e3, 3),
        }


def raw_onnxruntime(
    path: Path, example_shape: list[int], sizes: list[int], seconds: float, threads: int
) -> RawRun:
    """session.run over `sizes` in turn, for `seconds`."""
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
    return RawRun(samples, time.perf_counter() - start, times)


def _compare(
    plan: Plan, server: Server, target: load.Target, c: int, path: Path, shape: list[int], all_cores: int
) -> dict[str, object]:
    """One concurrency: the server's runs alternated with raw onnxruntime on the batches it formed."""
    seconds = plan.load_s / ROUNDS
    half = dataclasses.replace(plan, load_s=seconds)
    runs: list[load.Run] = []
    raws: list[RawRun] = []
    all_cores_raws: list[RawRun] = []  # the same batches on every core, whatever the server uses
    for _ in range(ROUNDS):
        run = closed(server, target, c, half, keep_bodies=True)
        sizes = batches_formed([r.body for r in run.ok if r.body is not None]) or [1]
        runs.append(run)
        raws.append(raw_onnxruntime(path, shape, sizes, seconds, SERVER.intra_op_threads))
        all_cores_raws.append(raw_onnxruntime(path, shape, sizes, seconds / 2, all_cores))
    pooled = load.Run(
        [r for run in runs for r in run.records],
        sum(run.window_s for run in runs),
        extra={k: float(np.mean([run.extra[k] for run in runs])) for k in runs[0].extra},
    )
    bodies = [r.body for r in pooled.ok if r.body is not None]
    ours, theirs = summary(pooled), RawRun.pooled(raws).summary()
    return {
        "server": ours,
        **in_server_compute(bodies, pooled.window_s),
        "raw_onnxruntime": theirs,
        "raw_onnxruntime_all_cores": RawRun.pooled(all_cores_raws).summary(),
        "mean_batch_size": round(float(np.mean(batches_formed(bodies) or [1])), 2),
        "rounds": ROUNDS,
        "throughput_ratio": round(ours["throughput_rps"] / theirs["throughput_rps"], 4),
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
            out[f"c{c}"] = _compare(
                plan, server, target, c, bundle / full.file, manifest.input.shape[1:], all_cores
            )
    return out
