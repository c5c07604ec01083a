"""perf_analyzer: Triton's own load generator against circuitserve, an independent measure of the
throughput and latency that bench/load.py reports (issue 18).

circuitserve serves the small digits bundle with the bench's settings (bench.plan.SERVER), as in the
peers section; perf_analyzer asks it over KServe v2 HTTP (`-i http -b 1`, synchronous requests, one
example each) at each of the plan's concurrencies, one run of the binary per concurrency, with the
served model's own test examples in turn as a JSON --input-data file (its random data is refused by
the server as non-finite values). Its measurement window is a third of the plan's load_s, so its three
windows make about one of our measurements; the stability bound is generous (the machine is shared).

What it needs (NEEDS): the binary and two libraries, set up once under the bench cache by
bench/peer_apps/perf_analyzer.sh (downloads: only when the plan sets up peers, never in the quick
run; without them the section is skipped), and circuitserve's model-config and statistics endpoints.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import our_server
from bench.plan import Plan
from bench.servers import Server
from export.manifest import Manifest

SCRIPT = Path(__file__).resolve().parent / "peer_apps" / "perf_analyzer.sh"
STABILITY_PERCENTAGE = 300  # perf_analyzer's default is 10: p99 on this shared machine moves more
MAX_TRIALS = 10  # perf_analyzer's default
NEEDS = (
    "perf_analyzer from tritonclient 2.41.1's manylinux wheel (PyPI), set up once under the bench cache",
    "libb64.so.0d (Debian package libb64-0d, unpacked, not installed)",
    "libcudart.so.12, even on a CPU host (from PyTriton's wheel in the bench's triton-venv)",
    "circuitserve's KServe v2 HTTP routes, /v2/models/{model}/config and the statistics endpoints",
    "finite input data: the model's test examples as a JSON --input-data file (random data is refused)",
)
_LIBS = ("libb64.so.0d", "libcudart.so.12")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def tools(cache: Path) -> Path:
    return cache / "perf-analyzer"


def is_set_up(cache: Path) -> bool:
    binary = tools(cache) / "bin" / "perf_analyzer"
    return os.access(binary, os.X_OK) and all((tools(cache) / "lib" / lib).exists() for lib in _LIBS)


def ensure(cache: Path, download: bool) -> Path | str:
    """The perf_analyzer binary, set up first when missing and `download` allows; else why there is none."""
    if is_set_up(cache):
        return tools(cache) / "bin" / "perf_analyzer"
    if not download:
        return (
            "skipped: perf_analyzer not set up (the quick bench does not download; "
            "`circuitserve bench` sets it up)"
        )
    _log(f"setting up perf_analyzer under {tools(cache)} (once)")
    env = {**os.environ, "CIRCUITSERVE_BENCH_CACHE": str(cache.resolve())}
    done = subprocess.run(["bash", str(SCRIPT), "--set-up-only"], capture_output=True, text=True, env=env)
    if done.returncode != 0 or not is_set_up(cache):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"failed: setting up perf_analyzer ({SCRIPT.name} exit {done.returncode}): {' / '.join(tail)}"
    return tools(cache) / "bin" / "perf_analyzer"


def input_data(manifest: Manifest, examples: np.ndarray, path: Path) -> Path:
    """perf_analyzer's --input-data JSON: one entry per example, its values flat with its shape."""
    entries = [
        {manifest.input.name: {"content": [float(v) for v in x.ravel()], "shape": list(x.shape)}}
        for x in examples.astype(np.float32)
    ]
    path.write_text(json.dumps({"data": entries}))
    return path


_BLOCK = re.compile(r"^Request concurrency: (\d+)$", re.M)
_CLIENT = {
    "requests": re.compile(r"^\s*Request count: (\d+)$", re.M),
    "throughput_rps": re.compile(r"^\s*Throughput: ([\d.]+) infer/sec$", re.M),
    "p50_ms": re.compile(r"^\s*p50 latency: (\d+) usec$", re.M),
    "p90_ms": re.compile(r"^\s*p90 latency: (\d+) usec$", re.M),
    "p99_ms": re.compile(r"^\s*p99 latency: (\d+) usec$", re.M),
    "server_request_ms": re.compile(r"^\s*Avg request latency: (\d+) usec", re.M),
}


def parse(text: str) -> dict[str, dict[str, float]]:
    """perf_analyzer's report: "c<N>" -> throughput, p50/p90/p99 (ms) and request count per
    "Request concurrency: N" block, and the server's own mean request latency (its statistics)."""
    out: dict[str, dict[str, float]] = {}
    starts = list(_BLOCK.finditer(text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[m.end() : end]
        figures: dict[str, float] = {}
        for key, pattern in _CLIENT.items():
            found = pattern.search(block)
            if found is None:
                continue
            value = float(found.group(1))
            if key == "requests":
                figures[key] = int(value)
            else:
                figures[key] = round(value / 1e3 if key.endswith("_ms") else value, 3)
        if "throughput_rps" in figures:
            out[f"c{m.group(1)}"] = figures
    return out


def command(binary: Path, server: Server, model: str, data: Path, concurrency: int, plan: Plan) -> list[str]:
    host_port = server.base_url.removeprefix("http://")
    return [
        *(str(binary), "-m", model, "-u", host_port, "-i", "http", "-b", "1"),
        *("--input-data", str(data), "--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--measurement-interval", str(_interval_ms(plan))),
        *("--stability-percentage", str(STABILITY_PERCENTAGE), "--max-trials", str(MAX_TRIALS)),
        "--percentile=99",
    ]


def _interval_ms(plan: Plan) -> int:
    return max(200, round(plan.load_s * 1e3 / 3))


def _run_one(cmd: list[str], binary: Path, plan: Plan) -> dict[str, Any]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent.parent / "lib")}
    timeout_s = 60 + 3 * MAX_TRIALS * _interval_ms(plan) / 1e3
    before, start = _children_cpu(), time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: perf_analyzer ran past {timeout_s:.0f} s"}
    cores = (_children_cpu() - before) / (time.monotonic() - start)
    figures = parse(done.stdout)
    if done.returncode != 0 or len(figures) != 1:
        tail = (done.stderr + done.stdout).strip().splitlines()[-3:]
        return {"status": f"failed: perf_analyzer exit {done.returncode}: {' / '.join(tail)}"}
    # client_cores: perf_analyzer's CPU over its whole run, on the same cores as the server
    return {"status": "ok", **next(iter(figures.values())), "client_cores": round(cores, 2)}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_perf_analyzer(
    plan: Plan, bundle: Path, manifest: Manifest, examples: np.ndarray, cache: Path, log_dir: Path
) -> dict[str, Any]:
    found = ensure(cache, plan.set_up_peers)
    if isinstance(found, str):
        return {"status": found, "needs": list(NEEDS)}
    binary = found
    log_dir.mkdir(parents=True, exist_ok=True)
    data = input_data(manifest, examples, log_dir / "perf-analyzer-input.json")
    out: dict[str, Any] = {
        "status": "ok",
        "model": manifest.name,
        "level": manifest.sorted_levels()[0].name,  # the server's default: v2 requests name none
        "needs": list(NEEDS),
        "input_data": f"{len(examples)} test examples of {manifest.name}, in turn",
        "measurement_interval_ms": _interval_ms(plan),
        "stability_percentage": STABILITY_PERCENTAGE,
    }
    with our_server(bundle, log_dir) as server:
        for c in plan.concurrencies:
            cmd = command(binary, server, manifest.name, data, c, plan)
            out.setdefault("command", " ".join([f"LD_LIBRARY_PATH={binary.parent.parent / 'lib'}", *cmd]))
            _log(f"perf_analyzer: concurrency {c}")
            out[f"c{c}"] = _run_one(cmd, binary, plan)
    if any(out[f"c{c}"]["status"] != "ok" for c in plan.concurrencies):
        out["status"] = "partial: " + ", ".join(
            f"c{c} {out[f'c{c}']['status']}" for c in plan.concurrencies if out[f"c{c}"]["status"] != "ok"
        )
    return out
