"""Overload on loopback, bounded in time: a real server process whose model takes 20 ms a batch
(about 200 samples/s) under closed-loop load from CLIENTS connections for LOAD_S seconds.
Every request gets 200, 429, 503 or 504; none is lost or hangs; the health endpoints answer 200
throughout; resident memory stays flat. The figures are printed (pytest -s) for the record."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from service_helpers import SLOW, child_server

from export.manifest import Manifest

CLIENTS = 96
LOAD_S = 8.0
WARM_S = 2.0  # memory is measured from the end of this first part of the load
BATCH_MS = 20
MAX_RSS_GROWTH = 24 << 20  # bytes; a leak of ~5 KB per request over the run would pass it
SETTINGS = {
    "max_batch_size": 4,
    "max_queue_size": 32,
    "max_inflight_requests": 48,
    "request_timeout_ms": 300,
    "drain_timeout_s": 5,
}


async def client(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], until: float, seen: Counter[Any]
) -> None:
    while time.monotonic() < until:
        try:
            r = await http.post(url, json=body)
            seen[r.status_code] += 1
            if r.status_code != 200:
                assert set(r.json()) == {"error", "request_id"}, r.text
        except httpx.HTTPError as exc:  # lost (connection dropped) or hanging (client timeout)
            seen[type(exc).__name__] += 1


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
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http,
        httpx.AsyncClient(base_url=url, timeout=2) as probes,
    ):
        start = time.monotonic()
        until = start + LOAD_S
        tasks = [asyncio.create_task(client(http, path, body, until, seen)) for _ in range(CLIENTS)]
        tasks.append(asyncio.create_task(probe(probes, until, health, worst)))
        await asyncio.sleep(WARM_S)
        rss_warm, done_warm = process.memory_info().rss, sum(seen.values())
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        rss_end = process.memory_info().rss
        after = await http.post(path, json={**body, "inputs": np.zeros((1, 8, 8)).tolist()})
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
    assert statuses[429] + statuses[503] + statuses[504] > total / 2
    assert set(out["health"]) <= {("/v2/health/live", 200), ("/v2/health/ready", 200)}, out["health"]
    assert sum(out["health"].values()) >= 2 * LOAD_S * 3  # answered throughout, not once at the end
    assert out["rss_growth"] < MAX_RSS_GROWTH, out
    assert out["after"] == 200
