"""Overload on loopback, bounded in time: a real server process whose model takes 20 ms a batch of
at most 4 (200 samples/s at best) under closed-loop load from CLIENTS connections for LOAD_S seconds
(thousands of requests a second: RawClient, not httpx, so the load generator is not the bottleneck).
Every request gets 200, 429, 503 or 504; none is lost or hangs; the health endpoints answer
throughout (liveness 200; readiness 200, or 503 at moments every in-flight slot is taken); resident
memory stays flat. The figures are printed (pytest -s) for the record."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from service_helpers import SLOW, RawClient, child_server

from export.manifest import Manifest

CLIENTS = 96
LOAD_S = 8.0
WARM_S = 2.0  # memory is measured from the end of this first part of the load
BATCH_MS = 20
# bytes, from the end of the warm-up to the end (20k-90k requests, by machine): nothing a request
# leaves may grow with the traffic (the recent-stats window is allocated at start: service.stats;
# measured +0.04 MiB over 94k requests); a leak of ~50 bytes a request fails this on a fast
# machine, of ~200 on a slow one
MAX_RSS_GROWTH = 4 << 20
SETTINGS: dict[str, Any] = {
    "max_batch_size": 4,
    "max_queue_size": 32,
    "max_inflight_requests": 48,
    "request_timeout_ms": 300,
    "drain_timeout_s": 5,
}


async def client(raw: RawClient, request: bytes, until: float, seen: Counter[Any]) -> None:
    while time.monotonic() < until:
        try:
            status, body = await asyncio.wait_for(raw.send(request), 10)
            seen[status] += 1
            if status != 200:
                assert set(json.loads(body)) == {"error", "request_id"}, body
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:  # lost, or hanging
            seen[type(exc).__name__] += 1
            await raw.close()
    await raw.close()


async def probe(http: httpx.AsyncClient, until: float, seen: Counter[Any], worst: list[float]) -> None:
    while time.monotonic() < until:
        for path in ("/v2/health/live", "/v2/health/ready"):
            start = time.monotonic()
            try:
                seen[(path, (await http.get(path)).status_code)] += 1
            except httpx.HTTPError as exc:
                seen[(path, type(exc).__name__)] += 1
            worst[0] = max(worst[0], time.monotonic() - start)
        await asyncio.sleep(0.1)


async def overload(url: str, pid: int, manifest: Manifest) -> dict[str, Any]:
    x = np.zeros((1, 8, 8), np.float32)
    x.flat[0] = SLOW + BATCH_MS
    body = {"inputs": x.tolist(), "sparsity_level": "full"}
    path = f"/v1/models/{manifest.name}/predict"
    seen: Counter[Any] = Counter()
    health: Counter[Any] = Counter()
    worst = [0.0]
    process = psutil.Process(pid)
    host, port = url.removeprefix("http://").split(":")
    request = RawClient.post(path, body)
    async with httpx.AsyncClient(base_url=url, timeout=2) as probes:
        start = time.monotonic()
        until = start + LOAD_S
        tasks = [client(RawClient(host, int(port)), request, until, seen) for _ in range(CLIENTS)]
        tasks.append(probe(probes, until, health, worst))
        running = asyncio.gather(*tasks)
        await asyncio.sleep(WARM_S)
        rss_warm, done_warm = process.memory_info().rss, sum(seen.values())
        await running
        elapsed = time.monotonic() - start
        rss_end = process.memory_info().rss
        after = await probes.post(path, json={**body, "inputs": np.zeros((1, 8, 8)).tolist()})
    return {
        "statuses": seen,
        "health": health,
        "worst_health_s": worst[0],
        "elapsed_s": elapsed,
        "rss_warm": rss_warm,
        "rss_growth": rss_end - rss_warm,
        "requests_after_warm": sum(seen.values()) - done_warm,
        "after": after.status_code,
    }


def test_overload_sheds_answers_everyone_and_stays_flat(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    with child_server(bundle_path, tmp_path / "log", **SETTINGS) as child:
        out = asyncio.run(overload(child.url, child.proc.pid, manifest))
        assert child.proc.poll() is None, child.output()
    statuses, total = out["statuses"], sum(out["statuses"].values())
    print(
        f"\noverload: {total} requests in {out['elapsed_s']:.1f} s ({total / out['elapsed_s']:.0f}/s, "
        f"{CLIENTS} connections), statuses {dict(sorted(statuses.items()))}; "
        f"health {dict(out['health'])}, slowest probe {out['worst_health_s'] * 1000:.0f} ms; "
        f"RSS {out['rss_warm'] / 2**20:.1f} MiB after warm-up, {out['rss_growth'] / 2**20:+.2f} MiB over "
        f"{out['requests_after_warm']} more requests"
    )
    assert set(statuses) <= {200, 429, 503, 504}, statuses  # nothing lost, nothing hanging, no 500
    assert statuses[200] > 0 and statuses[200] < total / 2, statuses  # served at capacity, shed the rest
    # shed by the full queue (503) and/or the in-flight limit (429): which one binds first depends on
    # how fast the loop turns 503s around on this machine; each has its own deterministic test
    assert statuses[429] + statuses[503] > total / 2, statuses
    answers = {("/v2/health/live", 200), ("/v2/health/ready", 200), ("/v2/health/ready", 503)}
    assert set(out["health"]) <= answers, out["health"]
    assert sum(out["health"].values()) >= 2 * LOAD_S * 3  # answered throughout, not once at the end
    assert out["rss_growth"] < MAX_RSS_GROWTH, out
    assert out["after"] == 200
