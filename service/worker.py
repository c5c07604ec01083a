"""One worker process of `serve --workers N` (started by service.workers, never imported there).

A worker is the single-process server (service.app) with its own sessions and batchers, on its own
SO_REUSEPORT socket on the server's port, listening only once its levels are warm (its lifespan
start is held until then), so no connection reaches a worker that would answer 503 for loading;
plus the files it shares with its siblings in the private
directory (PROMETHEUS_MULTIPROC_DIR, set before this process started, so before prometheus_client
was first imported):
- `ready-<index>`: present while this worker takes inference; /v2/health/ready answers 200 only
  when every worker's marker is there, whichever worker the probe reaches;
- `stats-<index>.json`: its recent-traffic partial, written when /v1/stats asks (worker_stats);
- prometheus_client's `*.db` files, which /metrics sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from service import logs
from service.app import create_app, freeze_loaded_objects, uvicorn_config
from service.engine import Engine
from service.metrics import multiprocess
from service.runtime import SessionFactory
from service.settings import Settings
from service.shutdown import DrainingServer
from service.worker_stats import SharedStats

log = logging.getLogger(__name__)
READY_PATH = "/v2/health/ready"
STARTUP_FAILED = 3  # exit status of a worker whose bundles failed to load: the supervisor stops


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not listening yet."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def marker(directory: Path, index: int) -> Path:
    return directory / f"ready-{index}"


def ready_workers(directory: Path, count: int) -> int:
    return sum(marker(directory, i).exists() for i in range(count))


class AllWorkersReady:
    """ASGI wrapper: a 200 from /v2/health/ready becomes 503 while any worker is not ready (a probe
    reaches one worker; readiness is the whole server's), and the lifespan start completes only once
    this worker is warm (or failed, or told to stop), so uvicorn listens only then. Everything else
    passes through."""

    def __init__(self, app: FastAPI, engine: Engine, directory: Path, count: int) -> None:
        self.app, self.engine, self.directory, self.count = app, engine, directory, count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._when_warm(send))
            return
        if scope["type"] != "http" or scope["path"] != READY_PATH:
            await self.app(scope, receive, send)
            return
        ready = ready_workers(self.directory, self.count)
        if ready == self.count:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"ready": False, "reason": f"{ready} of {self.count} workers ready"}).encode()
        replaced = False

        async def send_unready(message: Any) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 200:
                replaced = True
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**message, "status": 503, "headers": headers})
            elif replaced and message["type"] == "http.response.body":
                if not message.get("more_body"):
                    await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        await self.app(scope, receive, send_unready)

    def _when_warm(self, send: Any) -> Any:
        async def hold(message: Any) -> None:
            engine = self.engine
            if message["type"] == "lifespan.startup.complete":
                while not (engine.ready or engine.draining or engine.failure):
                    await asyncio.sleep(0.02)
            await send(message)

        return hold


class WorkerServer(DrainingServer):
    """The draining server, plus each tick (0.1 s): this worker's ready marker, its queue gauges,
    its stats partial when one is asked for, and a drain if its supervisor is gone."""

    def __init__(self, config: uvicorn.Config, engine: Engine, directory: Path, index: int) -> None:
        super().__init__(config, engine)
        self.directory, self.index = directory, index
        self.parent = os.getppid()
        self.marked = False

    async def on_tick(self, counter: int) -> bool:
        engine = self.engine
        ready = engine.ready and not engine.draining
        if ready != self.marked:
            path = marker(self.directory, self.index)
            if ready:
                path.write_text(str(os.getpid()))
            else:
                path.unlink(missing_ok=True)
            self.marked = ready
        if counter % 5 == 0:
            engine.metrics.refresh()
        if isinstance(engine.stats, SharedStats):
            engine.stats.answer_if_asked(engine.queue_depth)
        if os.getppid() != self.parent and engine.drain_deadline is None:
            log.warning("worker %d: the supervisor is gone; draining", self.index)
            engine.request_drain()
        return await super().on_tick(counter)


def run_worker(
    settings: Settings,
    index: int,
    directory: Path,
    session_factory: SessionFactory | None = None,
) -> None:
    """The process target: serve on `sock` until SIGTERM, drain, exit 0 (STARTUP_FAILED if the
    bundles could not be loaded)."""
    logs.install()
    logging.basicConfig(level=settings.log_level.upper(), format=logs.FORMAT)
    if not multiprocess():
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is imported")
    count = settings.worker_count()
    app = create_app(settings, session_factory=session_factory)
    engine: Engine = app.state.engine
    engine.stats = SharedStats(directory, index, count)
    config = uvicorn_config(app, settings)
    config.app = AllWorkersReady(app, engine, directory, count)
    server = WorkerServer(config, engine, directory, index)

    def stop() -> None:
        server.should_exit = True

    app.state.on_fatal = stop
    app.state.on_ready = freeze_loaded_objects
    sock = reuse_port_socket(settings.host, settings.port)  # uvicorn listens once warm
    with contextlib.suppress(SystemExit):  # uvicorn exits this way when the lifespan start fails
        server.run(sockets=[sock])
    marker(directory, index).unlink(missing_ok=True)
    if engine.failure:
        log.error("worker %d: %s", index, engine.failure)
        sys.exit(STARTUP_FAILED)
