"""The load generator every server in the bench is driven by: HTTP/1.1 keep-alive over aiohttp.

- closed loop: `concurrency` workers, each sending its next request as soon as the last is answered
  (throughput at a given concurrency; latency from send to answer);
- open loop: requests sent on a schedule fixed in advance, whatever the answers (overload); latency
  runs from the *scheduled* send time, so a generator that falls behind cannot hide queueing
  (no coordinated omission), and how far it fell behind is reported.

Both are bounded by time (and the open loop by its schedule) and keep a per-request record.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import numpy as np

T = TypeVar("T")
JSON_HEADERS = {"content-type": "application/json"}
TRANSPORT_ERROR = 0  # status recorded when no HTTP answer came (refused, reset, client timeout)


@dataclass(frozen=True)
class Target:
    """Where to send and what: request bodies are used in turn."""

    url: str
    bodies: Sequence[bytes]


@dataclass(frozen=True)
class Record:
    sent_s: float  # offset from the start of the run: the scheduled time in an open loop
    latency_s: float  # until the whole answer was read
    status: int  # HTTP status, or TRANSPORT_ERROR
    body: bytes | None = None  # kept when asked for


@dataclass
class Run:
    records: list[Record]
    window_s: float  # the measured span: throughput = answers in it / window_s
    max_lag_s: float = 0.0  # open loop: how far behind its schedule the generator sent, at worst
    mean_lag_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> list[Record]:
        return [r for r in self.records if r.status == 200]

    def throughput(self) -> float:
        """Successful answers per second over the window."""
        return len(self.ok) / self.window_s if self.window_s > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        ok = self.ok
        return float(np.percentile([r.latency_s for r in ok], q) * 1e3) if ok else float("nan")

    def error_fraction(self) -> float:
        return 1 - len(self.ok) / len(self.records) if self.records else 0.0


def schedule(rate: float, duration_s: float, *, poisson: bool = True, seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start, ascending, all < duration_s) of an open-loop run at `rate`
    requests per second: Poisson arrivals (exponential gaps, seeded) or evenly spaced."""
    if rate <= 0 or duration_s <= 0:
        return np.zeros(0)
    n = int(rate * duration_s)
    if not poisson:
        return np.arange(n) / rate
    rng = np.random.default_rng(seed)
    # draw a little more than needed, keep those inside the window
    times = np.cumsum(rng.exponential(1 / rate, size=int(n * 1.2) + 20))
    while times[-1] < duration_s:  # (astronomically rare) not enough drawn
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / rate, size=n + 20))])
    return times[times < duration_s]


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers=JSON_HEADERS,
    )


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, keep: bool
) -> tuple[int, bytes | None]:
    try:
        async with session.post(url, data=body) as resp:
            data = await resp.read()
            return resp.status, data if keep else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return TRANSPORT_ERROR, None


async def closed_loop(
    target: Target,
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 0.5,
    timeout_s: float = 10.0,
    keep_bodies: bool = False,
) -> Run:
    """`concurrency` workers for warmup_s + duration_s; records requests answered inside the window."""
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    bodies = itertools.cycle(target.bodies)
    records: list[Record] = []
    async with _session(concurrency, timeout_s) as session:
        start = clock()
        window_start, end = start + warmup_s, start + warmup_s + duration_s

        async def worker() -> None:
            while (sent := clock()) < end:
                status, data = await _send(session, target.url, next(bodies), keep_bodies)
                done = clock()
                if window_start <= done <= end:
                    records.append(Record(sent - start, done - sent, status, data))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(records, duration_s)


async def open_loop(
    target: Target,
    send_times: Sequence[float] | np.ndarray,
    *,
    connections: int = 512,
    timeout_s: float = 10.0,
    keep_bodies: bool = False,
) -> Run:
    """Send request i at send_times[i] seconds after the start without waiting for earlier answers."""
    clock = time.perf_counter
    bodies = itertools.cycle(target.bodies)
    times = [float(t) for t in send_times]
    lags: list[float] = []
    async with _session(connections, timeout_s) as session:
        start = clock()

        async def one(offset: float, body: bytes) -> Record:
            status, data = await _send(session, target.url, body, keep_bodies)
            return Record(offset, clock() - (start + offset), status, data)

        tasks = []
        for offset in times:
            delay = start + offset - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(max(0.0, clock() - (start + offset)))
            tasks.append(asyncio.create_task(one(offset, next(bodies))))
        records = list(await asyncio.gather(*tasks))
    window = times[-1] if times else 0.0
    return Run(records, window, max(lags, default=0.0), float(np.mean(lags)) if lags else 0.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load phase on a fresh event loop (uvloop where installed: less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
