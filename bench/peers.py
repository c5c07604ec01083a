"""Peers: the same full-level ONNX file served by LitServe, by BentoML and by NVIDIA Triton (through
PyTriton), each with its batching on and the same batch limit and thread settings as circuitserve,
driven by the same load generator at the same concurrencies. Runs are interleaved (peer A, us, peer
B, us, ... for every round) and only one server runs at a time; each peer run is paired with the
circuitserve run right after it.

Then scale-out on this machine: the better peer and circuitserve each as REPLICAS separate instances
(one port each, the generator's connections split evenly between them, as a Kubernetes Service
spreads connections over pods), paired the same way at the highest concurrency.

The peers live in their own virtual environments (never needed by the server), which the full bench
sets up itself when missing (bench/peer_setup.py); the quick one never downloads. A peer that is
not installed or does not start is reported, not fatal."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import Api, circuitserve_api, closed, summary
from bench.peer_launch import PEERS, Launcher, Peer, launcher
from bench.peer_setup import PEERS_VENV, ensure, is_set_up
from bench.plan import SERVER, Plan
from bench.servers import ServerError, circuitserve
from export.manifest import Manifest

PYTHON_ENV = "CIRCUITSERVE_BENCH_PEERS_PYTHON"  # LitServe's and BentoML's Python; "none" skips the peers
REPLICAS = 2  # instances per server in the scale-out pairs: one per core here


class PeerDown(Exception):
    """A peer did not start or died: reported, not fatal (circuitserve's own failures propagate)."""


Figures = dict[str, float]  # one closed-loop run (bench.measure.summary)
Pair = tuple[dict[int, Figures], dict[int, Figures]]  # (peer, circuitserve) figures by concurrency

# circuitserve's batchers per level here (service.instances): with one onnxruntime thread a session,
# one level's thread is busy at concurrency 64 while a core waits. LitServe's own instances
# (workers_per_device=2) answer fewer requests than one (the workers section), so it keeps one.
LEVEL_INSTANCES = 2


def installed(python: Path | None, module: str) -> bool:
    if python is None:
        return False
    try:
        done = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def peer_python(peer: Peer, cache: Path, download: bool) -> Path | str:
    """The peer's interpreter, its venv set up first when missing and `download` allows (the full
    bench); else why it is skipped. $CIRCUITSERVE_BENCH_PEERS_PYTHON overrides LitServe's and
    BentoML's ("none": skip every peer); without their venv, this interpreter serves if they import."""
    value = os.environ.get(PYTHON_ENV, "")
    if value.lower() == "none":
        return f"skipped: {PYTHON_ENV}=none"
    if value and peer.venv is PEERS_VENV:
        return Path(value) if installed(Path(value), peer.name) else f"skipped: {peer.name} not in {value}"
    if not is_set_up(cache, peer.venv) and installed(Path(sys.executable), peer.venv.imports):
        return Path(sys.executable)
    return ensure(cache, peer.venv, download)


def _measure(
    start: Launcher,
    api: Api,
    examples: np.ndarray,
    plan: Plan,
    log_dir: Path,
    concurrencies: tuple[int, ...],
    replicas: int = 1,
) -> dict[int, Figures]:
    """Start `replicas` instances of a server, run each concurrency against them, stop them."""
    with ExitStack() as stack:
        folders = [log_dir] if replicas == 1 else [log_dir / f"replica-{i}" for i in range(replicas)]
        servers = [stack.enter_context(start(folder)) for folder in folders]
        targets = [api.target(server, examples) for server in servers]
        return {c: summary(closed(servers, targets, c, plan)) for c in concurrencies}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _pairs_summary(pairs: list[tuple[Figures, Figures]]) -> dict[str, Any]:
    """(peer, circuitserve) figures of each pair at one concurrency: medians, and every pair."""
    theirs, mine = [t for t, _ in pairs], [m for _, m in pairs]
    ratios = [m["throughput_rps"] / max(t["throughput_rps"], 1e-9) for t, m in pairs]
    return {
        "throughput_rps": _median([t["throughput_rps"] for t in theirs]),
        "p50_ms": _median([t["p50_ms"] for t in theirs]),
        "p99_ms": _median([t["p99_ms"] for t in theirs]),
        "circuitserve_throughput_rps": _median([m["throughput_rps"] for m in mine]),
        "circuitserve_p50_ms": _median([m["p50_ms"] for m in mine]),
        "circuitserve_p99_ms": _median([m["p99_ms"] for m in mine]),
        "throughput_ratio": _median(ratios),
        "pairs": [
            {"peer": t, "circuitserve": m, "throughput_ratio": round(r, 4)}
            for (t, m), r in zip(pairs, ratios, strict=True)
        ],
    }


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_peers(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, cache: Path, log_dir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the single-instance pairs by peer, the scale-out pairs)"""
    full = manifest.sorted_levels()[0]
    out: dict[str, Any] = {
        "model": manifest.name,
        "level": full.name,
        "rounds": plan.peer_rounds,
        "max_batch_size": SERVER.max_batch_size,
        "batch_delay_ms": SERVER.max_queue_delay_ms,
        "intra_op_threads": SERVER.intra_op_threads,
        "level_instances": LEVEL_INSTANCES,
    }
    active: list[Peer] = []
    pythons: dict[str, Path] = {}
    for peer in PEERS:
        python = peer_python(peer, cache, plan.set_up_peers)
        if isinstance(python, Path):
            active.append(peer)
            pythons[peer.name] = python
        else:
            out[peer.name] = {"status": python}
    if not active:
        return out, _scale_out(plan, [], out, None)

    def pair(peer: Peer, concurrencies: tuple[int, ...], replicas: int) -> Pair:
        """The peer's runs, then circuitserve's, as `replicas` instances each."""
        try:
            theirs = _measure(
                launcher(peer, pythons[peer.name], bundle / full.file, cache),
                peer.api,
                examples,
                plan,
                log_dir,
                concurrencies,
                replicas,
            )
        except ServerError as exc:
            raise PeerDown(str(exc)) from exc
        settings = {**SERVER.as_dict(), "level_instances": LEVEL_INSTANCES}
        ours = lambda folder: circuitserve([bundle], folder, **settings)  # noqa: E731
        our_api = circuitserve_api(manifest.name)
        return theirs, _measure(ours, our_api, examples, plan, log_dir, concurrencies, replicas)

    pairs: dict[str, list[Pair]] = {}
    failed: dict[str, str] = {}
    for r in range(plan.peer_rounds):
        for peer in active:
            if peer.name in failed:
                continue
            _log(f"peers round {r + 1}/{plan.peer_rounds}: {peer.name}, then circuitserve")
            try:
                pairs.setdefault(peer.name, []).append(pair(peer, plan.concurrencies, 1))
            except PeerDown as exc:
                failed[peer.name] = f"failed: {exc}"

    for peer in active:
        if peer.name in failed:
            out[peer.name] = {"status": failed[peer.name].splitlines()[0][:300]}
            continue
        entry: dict[str, Any] = {"status": "ok"}
        for c in plan.concurrencies:
            entry[f"c{c}"] = _pairs_summary([(theirs[c], mine[c]) for theirs, mine in pairs[peer.name]])
        out[peer.name] = entry
    return out, _scale_out(plan, [p for p in active if p.name not in failed], out, pair)


def _scale_out(
    plan: Plan,
    measured: list[Peer],
    out: dict[str, Any],
    pair: Callable[[Peer, tuple[int, ...], int], Pair] | None,
) -> dict[str, Any]:
    """The better peer (by single-instance throughput at the top concurrency) and circuitserve,
    REPLICAS instances each, paired at that concurrency."""
    top = max(plan.concurrencies)
    entry: dict[str, Any] = {"replicas": REPLICAS, "concurrency": top}
    if not measured or pair is None:
        return {**entry, "status": "skipped: no peer measured"}
    best = max(measured, key=lambda p: float(out[p.name][f"c{top}"]["throughput_rps"]))
    runs = []
    try:
        for r in range(plan.peer_rounds):
            _log(
                f"scale-out round {r + 1}/{plan.peer_rounds}: {REPLICAS} x {best.name}, then {REPLICAS} x us"
            )
            theirs, mine = pair(best, (top,), REPLICAS)
            runs.append((theirs[top], mine[top]))
    except PeerDown as exc:
        return {**entry, "peer": best.name, "status": f"failed: {exc}".splitlines()[0][:300]}
    return {**entry, "peer": best.name, "status": "ok", **_pairs_summary(runs)}
