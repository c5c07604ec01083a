"""The latency floor of an HTTP server here: a bare ASGI app under uvicorn that only parses a native
JSON body, runs the level's onnxruntime session inline, and encodes the probabilities (and how long
the session.run took, `compute_ms`, as circuitserve's answers say it).

Bench only, never the product: no batching, no limits, no metrics, no errors worth the name. It uses
the same JSON library and session options as circuitserve, so the gap between the two is what
circuitserve's own machinery costs. POST /predict/{level name, "/" as "_"}; GET /health.

    BARE_BUNDLE=bundles/digits uvicorn --factory bench.bare_app:app
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_core import from_json, to_json

from export.manifest import read_manifest
from service.runtime import SessionConfig, create_session

Scope = dict[str, Any]


def app() -> Any:
    bundle = Path(os.environ["BARE_BUNDLE"])
    manifest = read_manifest(bundle)
    threads = int(os.environ.get("BARE_THREADS", "1"))
    config = SessionConfig(os.environ.get("BARE_PROVIDER", "cpu"), threads, 1)  # bench.gpu_check: cuda
    sessions = {lv.name.replace("/", "_"): create_session(bundle / lv.file, config) for lv in manifest.levels}
    input_name, shape = manifest.input.name, manifest.input.shape[1:]

    async def asgi(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, payload = 200, b'{"ok":true}'
        if scope["method"] == "POST":
            session = sessions.get(scope["path"].rsplit("/", 1)[-1])
            if session is None:
                status, payload = 404, b'{"error":"no such level"}'
            else:
                x = np.asarray(from_json(body)["inputs"], dtype=np.float32).reshape(-1, *shape)
                t0 = time.perf_counter()
                probs = session.run(["probabilities"], {input_name: x})[0]
                ms = (time.perf_counter() - t0) * 1000  # as circuitserve's answers report compute_ms
                payload = to_json({"probabilities": probs.tolist(), "compute_ms": ms})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return asgi
