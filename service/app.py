"""The app factory, its lifespan (load -> warm up -> ready; drain on shutdown) and `serve`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from export.manifest import Manifest
from service import __version__, logs
from service.docs import install_docs
from service.engine import Engine
from service.errors import install_handlers
from service.guard import Guard
from service.loader import StartupError, verify_bundles
from service.models import ServedModel
from service.openapi import install_openapi
from service.protocol import guarded_protocol
from service.repository import Repository, discover, open_served
from service.routes import native, ops, repository, triton, v2
from service.runtime import SessionFactory
from service.settings import Settings
from service.shutdown import DrainingServer

log = logging.getLogger(__name__)
GC_YOUNG = 5000  # allocations between collections of the youngest generation (see freeze_loaded_objects)
GIL_SWITCH_S = 0.0005  # a thread waits this long for the GIL before its holder must drop it (Python: 5 ms)

DESCRIPTION = """
Serves modular networks whose compute is dialled per request: every model has sparsity levels
("full", "1/2", "1/4", "1/8"), and each request picks one explicitly, by latency budget, or by
accuracy floor. Native JSON API under `/v1`, Open Inference Protocol v2 under `/v2`.
"""


class App(FastAPI):
    """FastAPI with service.guard as its outermost layer: every HTTP request meets the guard first,
    and admitted inference requests never enter FastAPI's own middlewares (0.165 adds telemetry and
    body-limit layers on every request) or its routing. Lifespan events go to FastAPI as usual."""

    guard: Guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.guard(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, session_factory: SessionFactory | None = None) -> FastAPI:
    """An app that loads `settings.bundles` in the background once started; ready after warm-up."""
    logs.install()
    engine = Engine(settings)
    factory = session_factory or ort.InferenceSession

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if not settings.bundles and settings.repository is None:
                raise StartupError("no bundles to serve: pass BUNDLE paths or set CIRCUITSERVE_BUNDLES")
            # fast, and fails the start outright
            bundles = verify_bundles([*settings.bundles, *discover(settings.repository)])
        except Exception as exc:
            engine.failure = str(exc)
            raise
        engine.lag.start()
        engine.spin.start()
        loading = asyncio.create_task(_load(engine, bundles, factory, app.state.on_fatal, app.state.on_ready))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            engine.spin.stop()
            await engine.close()  # whatever is left of drain_timeout_s
            engine.lag.stop()

    app = App(
        title="circuitserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.docs serves them, without a CDN
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.repository = Repository(engine, settings.repository, factory)
    app.state.on_fatal = lambda: None  # serve() replaces it with "stop the server"
    app.state.on_ready = lambda: None  # serve() replaces it with freeze_loaded_objects
    install_handlers(app)
    install_openapi(app, engine)
    install_docs(app)
    direct = {"native": native.answer, "v2": v2.answer}
    app.guard = Guard(partial(FastAPI.__call__, app), engine=engine, settings=settings, direct=direct)
    for module in (native, triton, repository, v2, ops):  # triton's /v2/models/stats before {name}
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.app:app_from_env`: settings from CIRCUITSERVE_* only."""
    return create_app(Settings())


async def _load(
    engine: Engine,
    bundles: list[tuple[Path, Manifest]],
    factory: SessionFactory,
    on_fatal: Callable[[], None],
    on_ready: Callable[[], None],
) -> None:
    try:
        models: dict[str, dict[str, ServedModel]] = {}
        for path, manifest in bundles:
            model = await open_served(engine, path, manifest, factory)
            models.setdefault(model.name, {})[manifest.version] = model
        for name, versions in models.items():
            engine.set_versions(name, versions)
        if engine.draining:  # told to stop while loading
            return
        on_ready()
        engine.ready = True
        engine.metrics.ready.set(1)
        log.info(
            "ready: serving %s",
            ", ".join(
                f"{m.name} v{m.manifest.version} ({len(m.levels)} levels)" for m in engine.models.values()
            ),
        )
    except Exception as exc:
        engine.failure = f"{type(exc).__name__}: {exc}"
        log.error("loading bundles failed: %s", engine.failure)
        on_fatal()


def freeze_loaded_objects() -> None:
    """What is loaded at start lives as long as the server process: moved out of the cyclic
    collector's sight, full collections stop rescanning it on the request path (the collector
    showed at ~10% of the event loop's CPU under load). And the youngest generation is collected
    every GC_YOUNG allocations, not 700: at load the objects of the requests in flight (64 of them
    at concurrency 64) are alive at every young collection, scanned again each time and promoted
    into the older generations, whose collections then rescan them (at concurrency 64: 33 us of
    collection per request with 700).

    And a level's inference thread gets the GIL within GIL_SWITCH_S, not Python's default 5 ms: it
    needs it twice per batch, briefly (to hand the batch to onnxruntime, which then runs without it,
    and to take the outputs back), and under load the event loop holds it all the time (its sockets'
    reads and writes never release it), so each batch waited up to 5 ms to start and 5 ms more to
    come back, the level idle meanwhile: at concurrency 64 that is most of a batch's own compute."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)
    sys.setswitchinterval(GIL_SWITCH_S)


def uvicorn_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How this service runs under uvicorn: its protocol with the head limits (service.protocol),
    no uvicorn access log (service.guard writes one, with the request id)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "http": guarded_protocol(settings),
        "timeout_graceful_shutdown": max(1, int(settings.drain_timeout_s)),
        **overrides,
    }
    return uvicorn.Config(app, **options)


def serve(settings: Settings, *, session_factory: SessionFactory | None = None) -> None:
    """Run the server until SIGTERM/SIGINT, then drain (service.shutdown) and return (blocking).
    Raises StartupError if the bundles cannot be served."""
    logging.basicConfig(level=settings.log_level.upper(), format=logs.FORMAT)
    app = create_app(settings, session_factory=session_factory)
    engine: Engine = app.state.engine
    config = uvicorn_config(app, settings)
    server = DrainingServer(config, engine)

    def stop() -> None:
        server.should_exit = True

    app.state.on_fatal = stop
    app.state.on_ready = freeze_loaded_objects
    try:
        server.run()
    except SystemExit:  # uvicorn exits this way when the lifespan start fails
        if not engine.failure:
            raise
    if engine.failure:
        raise StartupError(engine.failure)
