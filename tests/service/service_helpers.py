"""Helpers for the service tests: settings, inputs, an in-process app, a real uvicorn server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from export.manifest import Manifest
from service.app import create_app
from service.settings import Settings


def make_settings(bundle: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "bundles": [bundle],
        "provider": "cpu",
        "max_queue_delay_ms": 1.0,
        "warmup_runs": 1,
        "log_level": "warning",
    }
    return Settings(**{**base, **overrides})


def sample_inputs(manifest: Manifest, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *manifest.input.shape[1:])).astype(np.float32)


def wait_ready(get: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("server did not become ready")


@contextmanager
def asgi_client(app: FastAPI, ready: bool = True) -> Iterator[TestClient]:
    """The app in-process (lifespan run), optionally waiting until it is ready."""
    with TestClient(app, raise_server_exceptions=False) as client:
        if ready:
            wait_ready(client.get)
        yield client


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 (free port) in a thread; yields "127.0.0.1:PORT"."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        address = f"127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://{address}") as http:
            wait_ready(http.get)
        yield address
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample on /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")
