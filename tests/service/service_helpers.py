"""Helpers for the service tests: settings, inputs, an in-process app, a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from export.manifest import Manifest
from service.app import create_app, uvicorn_config
from service.runtime import SessionFactory
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


def v2_tensor(manifest: Manifest, x: np.ndarray) -> dict[str, Any]:
    """One v2 JSON input tensor holding `x`."""
    return {
        "name": manifest.input.name,
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }


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
def live_server(settings: Settings, session_factory: SessionFactory | None = None) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 (free port) in a thread, configured as `serve` does; yields
    "127.0.0.1:PORT"."""
    app = create_app(settings, session_factory=session_factory)
    config = uvicorn_config(
        app, settings, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=None
    )
    server = uvicorn.Server(config)
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


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample on /metrics."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


# serve() in a child process; a batch whose first value is SLOW + ms sleeps that many milliseconds.
SLOW = 1e4
SLOW_SERVER = f"""
import time, onnxruntime as ort
from service.app import serve
from service.settings import Settings

class Slow(ort.InferenceSession):
    def run(self, names, feed, *args, **kwargs):
        first = float(next(iter(feed.values())).flat[0])
        if first >= {SLOW}:
            time.sleep((first - {SLOW}) / 1000)
        return super().run(names, feed, *args, **kwargs)

serve(Settings(), session_factory=Slow)
"""


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def child_server(bundle: Path, log: Path, script: str = SLOW_SERVER, **env: Any) -> Iterator[Child]:
    """serve() in a subprocess on 127.0.0.1 (settings from CIRCUITSERVE_* env), ready; killed at exit."""
    port = free_port()
    settings = {"bundles": f'["{bundle}"]', "port": port, "provider": "cpu", "log_level": "warning", **env}
    environ = {**os.environ, **{f"CIRCUITSERVE_{k.upper()}": str(v) for k, v in settings.items()}}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], env=environ, stdout=sink, stderr=subprocess.STDOUT
        )
    child = Child(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=child.url, timeout=5) as http:
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, child.output()
                try:
                    if http.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        yield child
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on one connection: far cheaper than httpx per request, so
    one test process can offer a server more load than it can take. Responses need Content-Length."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    @staticmethod
    def post(path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
        data = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body); raises OSError / asyncio.IncompleteReadError if the connection drops."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            close |= name.lower() == "connection" and value.strip().lower() == "close"
        body = await reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None
