"""`serve --workers N` on this machine (issue 19): circuitserve as 1 worker against 2 workers (and
one worker with 2 batchers per level, `level_instances`), and 2 workers against LitServe in its
multi-process layouts (num_api_servers=2 in one instance; workers_per_device=2; 2 instances, the
generator's connections split between them), all on the small digits model at the top concurrency.
Every layout runs once per round, in the same order each round, one server at a time; figures are
medians over the rounds, ratios medians of each round's ratio."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import LITSERVE, Api, circuitserve_api, our_server
from bench.peer_launch import PEERS, PEERS_DIR, Launcher, launcher, peer_env
from bench.peers import Figures, _measure, peer_python
from bench.plan import SERVER, Plan
from bench.servers import Server, ServerError, circuitserve, free_port, process
from export.manifest import Manifest

WORKERS = 2
SKIPPED = "skipped: no LitServe to compare with"


def _litserve(python: Path, onnx: Path, cache: Path, setting: str, value: int) -> Launcher:
    """LitServe with one of its layout settings (litserve_app.py's BENCH_API_SERVERS, BENCH_INSTANCES)."""

    @contextmanager
    def start(log_dir: Path) -> Iterator[Server]:
        port = free_port()
        env = {**peer_env(onnx, cache), setting: str(value)}
        cmd = [str(python), str(PEERS_DIR / "litserve_app.py"), str(port)]
        with process("litserve", cmd, port=port, health_path="/health", log_dir=log_dir, env=env,
                     cwd=PEERS_DIR) as server:  # fmt: skip
            yield server

    return start


def _median(runs: list[Figures]) -> dict[str, Any]:
    keys = ("throughput_rps", "p50_ms", "p99_ms", "server_cores", "client_cores", "error_fraction")
    out: dict[str, Any] = {
        k: round(statistics.median(r[k] for r in runs), 4) for k in keys if all(k in r for r in runs)
    }
    return {**out, "runs": runs}


def run_workers(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, cache: Path, log_dir: Path
) -> dict[str, Any]:
    top = max(plan.concurrencies)
    ours = circuitserve_api(manifest.name)
    layouts: dict[str, tuple[Launcher, Api, int]] = {
        "circuitserve_1_worker": (lambda d: our_server(bundle, d), ours, 1),
        f"circuitserve_{WORKERS}_workers": (
            lambda d: circuitserve([bundle], d, **SERVER.as_dict(), workers=WORKERS),
            ours,
            1,
        ),
        f"circuitserve_{WORKERS}_level_instances": (  # one process, two batchers per level
            lambda d: circuitserve([bundle], d, **SERVER.as_dict(), level_instances=WORKERS),
            ours,
            1,
        ),
    }
    lit = next(p for p in PEERS if p.name == "litserve")
    found = peer_python(lit, cache, download=plan.set_up_peers)  # the peers section sets it up
    python = found if isinstance(found, Path) else None
    peer_status = "ok" if python is not None else f"{SKIPPED}: {found}"
    if python is not None:
        onnx = bundle / manifest.sorted_levels()[0].file
        layouts[f"litserve_{WORKERS}_api_servers"] = (
            _litserve(python, onnx, cache, "BENCH_API_SERVERS", WORKERS),
            LITSERVE,
            1,
        )
        layouts[f"litserve_{WORKERS}_inference_workers"] = (  # workers_per_device: LitServe's instances
            _litserve(python, onnx, cache, "BENCH_INSTANCES", WORKERS),
            LITSERVE,
            1,
        )
        layouts[f"litserve_{WORKERS}_instances"] = (launcher(lit, python, onnx, cache), LITSERVE, WORKERS)
    runs: dict[str, list[Figures]] = {name: [] for name in layouts}
    failed: dict[str, str] = {}
    for _ in range(plan.peer_rounds):
        for name, (start, api, replicas) in layouts.items():
            if name in failed:
                continue
            try:
                runs[name].append(_measure(start, api, examples, plan, log_dir / name, (top,), replicas)[top])
            except ServerError as exc:
                if name.startswith("circuitserve"):
                    raise
                failed[name] = f"failed: {exc}".splitlines()[0][:300]
    out: dict[str, Any] = {
        "model": manifest.name,
        "concurrency": top,
        "rounds": plan.peer_rounds,
        "workers": WORKERS,
        "intra_op_threads": SERVER.intra_op_threads,
        "layouts": {n: (_median(r) if n not in failed else {"status": failed[n]}) for n, r in runs.items()},
    }
    one, two = runs["circuitserve_1_worker"], runs[f"circuitserve_{WORKERS}_workers"]
    out["speedup"] = _ratio(two, one)
    out["instances_speedup"] = _ratio(runs[f"circuitserve_{WORKERS}_level_instances"], one)
    peers = {n: r for n, r in runs.items() if n.startswith("litserve") and n not in failed and r}
    if not peers:
        out["versus_litserve"] = {"status": peer_status if peer_status != "ok" else "failed: " + str(failed)}
        return out
    best = max(peers, key=lambda n: statistics.median(r["throughput_rps"] for r in peers[n]))
    p99 = out["layouts"][f"circuitserve_{WORKERS}_workers"]["p99_ms"]
    out["versus_litserve"] = {
        "status": "ok",
        "best_layout": best,
        "throughput_ratio": _ratio(two, peers[best]),
        "p99_ms": p99,
        "peer_p99_ms": out["layouts"][best]["p99_ms"],
    }
    return out


def _ratio(mine: list[Figures], theirs: list[Figures]) -> float:
    """Median over the rounds of mine / theirs (throughput), each round's pair."""
    return round(statistics.median(m["throughput_rps"] / max(t["throughput_rps"], 1e-9)
                                   for m, t in zip(mine, theirs, strict=False)), 4)  # fmt: skip
