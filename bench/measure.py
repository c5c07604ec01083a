"""How each server under test is asked for one example, and what a closed-loop run comes to.

Every server gets the same examples as JSON, one example per request, in its own request format,
and answers the most likely class with every class probability."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import load
from bench.plan import SERVER, Plan
from bench.servers import Server, circuitserve

Body = dict[str, Any]


@dataclass(frozen=True)
class Api:
    name: str
    path: str
    wrap: Callable[[Any], Body]  # one example (nested lists) -> request body

    def target(self, server: Server, examples: np.ndarray) -> load.Target:
        bodies = [json.dumps(self.wrap(x.tolist())).encode() for x in examples]
        return load.Target(server.base_url + self.path, bodies)


def circuitserve_api(model: str, **params: Any) -> Api:
    """The native predict route; `params` go into every request (a budget, a level, a timeout)."""
    return Api("circuitserve", f"/v1/models/{model}/predict", lambda ex: {"inputs": [ex], **params})


LITSERVE = Api("litserve", "/predict", lambda ex: {"input": ex})
BENTOML = Api("bentoml", "/predict", lambda ex: {"input": [ex]})  # a batch of one, split on axis 0


def our_server(bundle: Path, log_dir: Path) -> AbstractContextManager[Server]:
    """circuitserve serving `bundle` with the bench's settings (bench.plan.SERVER)."""
    return circuitserve([bundle], log_dir, **SERVER.as_dict())


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by a server process and all its children (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _servers_cpu(servers: Sequence[Server]) -> float | None:
    seconds = [cpu_seconds(s.pid) for s in servers]
    return None if None in seconds else sum(t for t in seconds if t is not None)


def with_cores(
    servers: Server | Sequence[Server], phase: Callable[[], Coroutine[Any, Any, load.Run]]
) -> load.Run:
    """Run one load phase; record the cores the server(s) and the load generator used meanwhile."""
    servers = [servers] if isinstance(servers, Server) else servers
    server_cpu, client_cpu, start = _servers_cpu(servers), _self_cpu(), time.perf_counter()
    run = load.run(phase())
    elapsed = time.perf_counter() - start
    after = _servers_cpu(servers)
    if server_cpu is not None and after is not None:
        run.extra["server_cores"] = (after - server_cpu) / elapsed
    run.extra["client_cores"] = (_self_cpu() - client_cpu) / elapsed
    return run


def closed(
    server: Server | Sequence[Server],
    target: load.Target | Sequence[load.Target],
    concurrency: int,
    plan: Plan,
    keep_bodies: bool = False,
) -> load.Run:
    """A closed-loop run against `server` (or replicas, a target each), with the CPU the server(s) and
    the load generator used."""
    return with_cores(
        server,
        lambda: load.closed_loop(
            target, concurrency, plan.load_s, warmup_s=plan.warmup_s, keep_bodies=keep_bodies
        ),
    )


def summary(run: load.Run) -> dict[str, float]:
    """The figures of one closed-loop run."""
    out = {
        "throughput_rps": round(run.throughput(), 1),
        "p50_ms": round(run.latency_ms(50), 3),
        "p99_ms": round(run.latency_ms(99), 3),
        "error_fraction": round(run.error_fraction(), 4),
        "requests": len(run.records),
    }
    out.update({k: round(v, 2) for k, v in run.extra.items()})
    return out
