"""Latency floor: what one request costs at low load, per level, against what it could cost.

At concurrency 1 and 8, for each level: circuitserve (the level named in the request), a bare ASGI
app under the same uvicorn (bench.bare_app: parse, run the same session inline, encode) and raw
onnxruntime in the bench's process (one session.run of the request's rows; at concurrency 8, of a
batch of 8, the least a server could do for 8 waiting requests). Rounds interleave the three, many
short ones (ROUNDS of ~1 s a cell), the two servers' order swapped every round: this machine's speed
drifts by a quarter from one second to the next (the same bare app's p50 read 1.1-1.9 ms in eight
0.8 s windows), so a few long rounds leave the ratio to chance. The rounds are pooled. The dial:
p50(full) / p50(smallest level) at concurrency 1, circuitserve's against raw onnxruntime's (and
the bare app's, the most any HTTP server here shows of it).

Beside them, the HTTP floor: the bare app's GET /health at concurrency 1 (no body, no parse, no
compute), the round trip of the client, the kernel and uvicorn alone. A server that added only that
to raw onnxruntime's times would show a dial of (raw full + floor) / (raw smallest + floor): the
ceiling of the dial here. What the bare app loses below that ceiling comes from computing in a server
process, which sleeps between requests (session.run, and the work around it, run slower after a
sleep); raw onnxruntime's hot loop never sleeps. That loss is measured too: circuitserve's answers
at c=1 say how long their session.run took (compute_ms), and the dial of a server costing the HTTP
floor with compute as it runs there, (served full + floor) / (served smallest + floor), is the
ceiling of a server whose compute waits on the network between a lone client's requests. The bare
app reports its session.run time the same way, so the two servers' compute can be compared.

The section also records circuitserve's resident memory after the largest legal request
(max_queue_size rows) ran several times: the figure deploy/k8s's memory request and limit come from.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import load
from bench.measure import circuitserve_api, closed, our_server, summary
from bench.plan import SERVER, Plan
from bench.servers import Server, free_port, process
from export.manifest import Manifest
from service.runtime import SessionConfig, create_session
from service.settings import Settings

CONCURRENCIES = (1, 8)
SERVERS = ("circuitserve", "bare_asgi")
ROUNDS = 9
CELL_S = 1.0  # one measurement of one server (or of raw onnxruntime) at one level and concurrency
LARGEST_REPEATS = 5


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _raw(bundle: Path, manifest: Manifest, level: str, rows: np.ndarray, seconds: float) -> dict[str, float]:
    file = next(lv.file for lv in manifest.levels if lv.name == level)
    session = create_session(bundle / file, SessionConfig("cpu", SERVER.intra_op_threads, 1))
    feed = {manifest.input.name: rows}
    session.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
    }


def _bare(bundle: Path, log_dir: Path) -> Any:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench.bare_app:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {"BARE_BUNDLE": str(bundle), "BARE_THREADS": str(SERVER.intra_op_threads)}
    return process("bare-asgi", cmd, port=port, health_path="/health", log_dir=log_dir, env=env)


def _pooled(runs: list[load.Run]) -> dict[str, float]:
    records = [r for run in runs for r in run.records]
    return summary(load.Run(records, sum(run.window_s for run in runs)))


def _rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss / 2**20)
    except Exception:
        return None


def _largest_request_memory(server: Server, manifest: Manifest, example: np.ndarray) -> dict[str, Any]:
    """RSS before and after the largest legal native request (max_queue_size rows) ran a few times."""
    rows = Settings.model_fields["max_queue_size"].default
    body = json.dumps({"inputs": [example.tolist()] * rows}).encode()
    url = server.base_url + f"/v1/models/{manifest.name}/predict"
    before, statuses, seconds = _rss_mb(server.pid), set(), []
    for _ in range(LARGEST_REPEATS):
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                answer.read()
                statuses.add(answer.status)
        except urllib.error.HTTPError as exc:
            statuses.add(exc.code)
        seconds.append(time.perf_counter() - t0)
    after = _rss_mb(server.pid)
    return {
        "rows": rows,
        "body_mb": round(len(body) / 2**20, 2),
        "repeats": LARGEST_REPEATS,
        "statuses": sorted(statuses),
        "seconds_each": round(float(np.median(seconds)), 3),
        "rss_before_mb": None if before is None else round(before, 1),
        "rss_after_mb": None if after is None else round(after, 1),
    }


def run_latency_floor(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, log_dir: Path
) -> dict[str, Any]:
    levels = [lv.name for lv in manifest.sorted_levels()]
    rounds = 1 if plan.quick else ROUNDS
    seconds = min(CELL_S, plan.load_s)
    cells: dict[str, dict[str, dict[str, list[Any]]]] = {
        lv: {str(c): {"circuitserve": [], "bare_asgi": [], "raw": []} for c in CONCURRENCIES} for lv in levels
    }
    one = examples[:1]
    floor: list[load.Run] = []
    # the compute_ms of each server's answers at c=1, per level: session.run as it ran in that server
    served: dict[str, dict[str, list[float]]] = {who: {lv: [] for lv in levels} for who in SERVERS}
    with our_server(bundle, log_dir) as ours, _bare(bundle, log_dir) as bare:
        for r in range(rounds):
            _log(f"latency floor: round {r + 1}/{rounds}")
            health = load.Target(f"{bare.base_url}/health", [], method="GET")
            floor.append(closed(bare, health, 1, _short(plan, seconds)))
            for c in CONCURRENCIES:
                for lv in levels:
                    api = circuitserve_api(manifest.name, sparsity_level=lv)
                    cell = cells[lv][str(c)]
                    bodies = [json.dumps({"inputs": [x.tolist()]}).encode() for x in examples]
                    path = f"{bare.base_url}/predict/{lv.replace('/', '_')}"
                    servers = [
                        ("circuitserve", ours, api.target(ours, examples)),
                        ("bare_asgi", bare, load.Target(path, bodies)),
                    ]
                    for name, server, target in servers[:: 1 if r % 2 == 0 else -1]:
                        run = closed(server, target, c, _short(plan, seconds), keep_bodies=c == 1)
                        cell[name].append(run)
                        if c == 1:
                            served[name][lv] += _compute_ms(run)
                    rows = np.repeat(one, c, axis=0).astype(np.float32)
                    cell["raw"].append(_raw(bundle, manifest, lv, rows, seconds))
        memory = _largest_request_memory(ours, manifest, examples[0])
    out: dict[str, Any] = {"levels": levels, "rounds": rounds, "cells": {}, "largest_request": memory}
    out["inline_stalls"] = _inline_stalls(ours.log, manifest.name, levels)
    out["http_floor"] = _pooled(floor)
    out["served_compute_ms"] = {
        who: {lv: round(float(np.median(v)), 4) if v else None for lv, v in times.items()}
        for who, times in served.items()
    }
    for lv in levels:
        out["cells"][lv] = {}
        for c in CONCURRENCIES:
            cell = cells[lv][str(c)]
            raw = cell["raw"]
            out["cells"][lv][str(c)] = {
                "circuitserve": _pooled(cell["circuitserve"]),
                "bare_asgi": _pooled(cell["bare_asgi"]),
                "raw_onnxruntime": {k: round(float(np.median([x[k] for x in raw])), 4) for k in raw[0]},
            }
    out["goals"] = _goals(out, levels)
    return out


def _compute_ms(run: load.Run) -> list[float]:
    """The compute time each answer of `run` reports (its session.run, in ms)."""
    return [float(json.loads(r.body)["compute_ms"]) for r in run.ok if r.body]


def _inline_stalls(log: Path, model: str, levels: list[str]) -> dict[str, int]:
    """Per level, the inline runs circuitserve's watchdog ended during the section (its log's
    warnings, service.batcher): each sent that level to its thread for a while, where a lone request
    costs a thread hop more, so a level's c=1 figures read with them."""
    text = log.read_text(errors="replace")
    return {lv: text.count(f"{model}/{lv}: inline run ended") for lv in levels}


def _short(plan: Plan, seconds: float) -> Plan:
    return replace(plan, load_s=seconds, warmup_s=min(plan.warmup_s, 0.2))


def _goals(out: dict[str, Any], levels: list[str]) -> dict[str, Any]:
    """Issue 12's numbers: p50 at c=1 within 1.3x the bare app's (full and the smallest level),
    and the dial at c=1 at least 70% of raw onnxruntime's; beside them, the dial's ceiling at the
    HTTP floor."""
    full, small = levels[0], levels[-1]
    c1 = {lv: out["cells"][lv]["1"] for lv in (full, small)}
    vs_bare = {lv: c1[lv]["circuitserve"]["p50_ms"] / c1[lv]["bare_asgi"]["p50_ms"] for lv in c1}
    dial_ours = c1[full]["circuitserve"]["p50_ms"] / c1[small]["circuitserve"]["p50_ms"]
    dial_raw = c1[full]["raw_onnxruntime"]["p50_ms"] / c1[small]["raw_onnxruntime"]["p50_ms"]
    dial_bare = c1[full]["bare_asgi"]["p50_ms"] / c1[small]["bare_asgi"]["p50_ms"]
    floor = out["http_floor"]["p50_ms"]
    raw_full, raw_small = (c1[lv]["raw_onnxruntime"]["p50_ms"] for lv in (full, small))
    dial_ceiling = (raw_full + floor) / (raw_small + floor)
    served = (out.get("served_compute_ms") or {}).get("circuitserve", {})
    served_full, served_small = served.get(full), served.get(small)
    served_ceiling = (served_full + floor) / (served_small + floor) if served_full and served_small else None
    return {
        "p50_vs_bare_at_c1": {lv: round(v, 3) for lv, v in vs_bare.items()},
        "within_1_3x_of_bare": all(v <= 1.3 for v in vs_bare.values()),
        "dial_circuitserve": round(dial_ours, 3),
        "dial_raw_onnxruntime": round(dial_raw, 3),
        "dial_fraction_of_raw": round(dial_ours / dial_raw, 3) if dial_raw > 0 else None,
        "dial_bare_asgi": round(dial_bare, 3),
        "dial_bare_fraction_of_raw": round(dial_bare / dial_raw, 3) if dial_raw > 0 else None,
        "dial_ceiling_at_http_floor": round(dial_ceiling, 3),
        "dial_ceiling_fraction_of_raw": round(dial_ceiling / dial_raw, 3) if dial_raw > 0 else None,
        # the same with the compute as it ran inside circuitserve at c=1 (its answers' compute_ms)
        "dial_served_compute": round(served_full / served_small, 3) if served_full and served_small else None,
        "dial_ceiling_with_served_compute": round(served_ceiling, 3) if served_ceiling else None,
        "dial_ceiling_served_fraction_of_raw": round(served_ceiling / dial_raw, 3)
        if served_ceiling and dial_raw > 0
        else None,
        "dial_at_least_70_percent": dial_raw > 0 and dial_ours / dial_raw >= 0.7,
    }
