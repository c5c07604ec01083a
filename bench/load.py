"""The load generator every server in the bench is driven by: HTTP/1.1 keep-alive connections on
asyncio (uvloop where installed), responses parsed by httptools (uvicorn's parser: Content-Length
and chunked bodies alike). A request costs the generator a few tens of microseconds of CPU, a fifth
of what aiohttp's client took: on 2 cores, the generator's CPU is taken from the server under test.

- closed loop: `concurrency` workers, each sending its next request as soon as the last is answered
  (throughput at a given concurrency; latency from send to answer);
- open loop: requests sent on a schedule fixed in advance, whatever the answers (overload); latency
  runs from the *scheduled* send time, so a generator that falls behind cannot hide queueing
  (no coordinated omission), and how far it fell behind is reported.

Both are bounded by time (and the open loop by its schedule) and keep a per-request record.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import httptools
import numpy as np

T = TypeVar("T")
TRANSPORT_ERROR = 0  # status recorded when no HTTP answer came (refused, reset, client timeout)


@dataclass(frozen=True)
class Target:
    """Where to send and what: request bodies are used in turn."""

    url: str
    bodies: Sequence[bytes]
    method: str = "POST"  # "GET": bodies are ignored, no body is sent

    def requests(self) -> list[bytes]:
        """Each body as a whole HTTP/1.1 request, built once."""
        parts = urlsplit(self.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        head = f"{self.method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        if self.method == "GET":
            return [f"{head}\r\n".encode()]
        head += "Content-Type: application/json\r\n"
        return [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in self.bodies]


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


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(exc)

    def on_body(self, body: bytes) -> None:  # httptools callbacks
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionResetError("connection closed by the server"))

    def fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    @property
    def open(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection already closed")
        self.body = []
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer


class _Pool:
    """At most `limit` connections to one server, reused last-in first-out; one that failed, timed
    out or was told to close is dropped."""

    def __init__(self, url: str, limit: int, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.slots = asyncio.Semaphore(limit)
        self.timeout_s = timeout_s
        self.idle: list[_Connection] = []

    async def send(self, request: bytes, keep: bool) -> tuple[int, bytes | None]:
        """One request on a pooled connection; its timeout covers waiting for a free one too."""
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout_s), self.slots:
                while self.idle and conn is None:  # the server may have closed idle ones (keep-alive)
                    conn = self.idle.pop()
                    conn = conn if conn.open else None
                if conn is None:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        _Connection, self.host, self.port
                    )
                status, body = await conn.send(request)
                if conn.open:
                    self.idle.append(conn)
                    conn = None  # handed back
                return status, body if keep else None
        except (OSError, TimeoutError, RuntimeError, httptools.HttpParserError):  # RuntimeError: uvloop's
            return TRANSPORT_ERROR, None  # closed handle
        finally:
            if conn is not None:  # failed, timed out, cancelled or not reusable: never reused
                conn.fail(ConnectionAbortedError("request abandoned"))

    def close(self) -> None:
        for conn in self.idle:
            conn.fail(ConnectionResetError("pool closed"))
        self.idle.clear()


async def closed_loop(
    target: Target | Sequence[Target],
    concurrency: int,
    duration_s: float,
    *,
    warmup_s: float = 0.5,
    timeout_s: float = 10.0,
    keep_bodies: bool = False,
) -> Run:
    """`concurrency` workers for warmup_s + duration_s; records requests answered inside the window.
    Several targets (replicas of one server) split the workers evenly, each worker keeping to one, as a
    Kubernetes Service spreads connections over pods."""
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    targets = [target] if isinstance(target, Target) else list(target)
    assigned = [targets[i % len(targets)] for i in range(concurrency)]
    requests = {id(t): itertools.cycle(t.requests()) for t in targets}
    pools = {id(t): _Pool(t.url, assigned.count(t), timeout_s) for t in targets}
    records: list[Record] = []
    start = clock()
    window_start, end = start + warmup_s, start + warmup_s + duration_s

    async def worker(to: Target) -> None:
        pool, mine = pools[id(to)], requests[id(to)]
        while (sent := clock()) < end:
            status, data = await pool.send(next(mine), keep_bodies)
            done = clock()
            if window_start <= done <= end:
                records.append(Record(sent - start, done - sent, status, data))

    try:
        await asyncio.gather(*(worker(t) for t in assigned))
    finally:
        for pool in pools.values():
            pool.close()
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
    requests = itertools.cycle(target.requests())
    times = [float(t) for t in send_times]
    lags: list[float] = []
    pool = _Pool(target.url, connections, timeout_s)
    start = clock()

    async def one(offset: float, request: bytes) -> Record:
        status, data = await pool.send(request, keep_bodies)
        return Record(offset, clock() - (start + offset), status, data)

    tasks = []
    try:
        for offset in times:
            delay = start + offset - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(max(0.0, clock() - (start + offset)))
            tasks.append(asyncio.create_task(one(offset, next(requests))))
        records = list(await asyncio.gather(*tasks))
    finally:
        pool.close()
    window = times[-1] if times else 0.0
    return Run(records, window, max(lags, default=0.0), float(np.mean(lags)) if lags else 0.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load phase on a fresh event loop (uvloop where installed: less client CPU per request),
    with the cyclic garbage collector paused: a full collection over thousands of pending requests
    stalls the generator for tens of milliseconds, which would count against the server."""
    runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return runner(coro)
    finally:
        if enabled:
            gc.enable()
