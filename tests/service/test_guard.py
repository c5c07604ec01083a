"""service.guard as a bare ASGI app: reading an inference body the protocol already has whole
(service.protocol BODY_COMPLETE) keeps every rule of the slow path."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import live_server, make_settings, sample_inputs
from slow_session import SLOW, Slow

from export.manifest import Manifest
from service import guard, protocol
from service.engine import Engine
from service.guard import Guard
from service.protocol import BODY_COMPLETE
from service.settings import Settings

LIMIT = 1024
OURS = ("service.", "uvicorn.protocols.", "starlette.", "fastapi.")  # whose objects a request makes


def call(
    body: bytes, headers: list[tuple[bytes, bytes]], complete: bool = True
) -> tuple[int, dict[str, Any]]:
    """POST `body` to the native predict route through the guard; (status, JSON answer)."""
    settings = Settings(max_body_bytes=LIMIT)
    reached: list[bytes] = []

    async def route(eng: Any, name: str, version: Any, h: Any, raw: bytes) -> tuple[bytes, dict[str, str]]:
        reached.append(raw)
        return b'{"ok":true}', {"Content-Type": "application/json"}

    async def main() -> tuple[int, dict[str, Any]]:
        guard = Guard(lambda s, r, se: None, Engine(settings), settings, {"native": route})  # type: ignore[arg-type, return-value]
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/models/m/predict",
            "headers": headers,
            "extensions": {BODY_COMPLETE: True} if complete else {},
        }
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        await guard(scope, receive, send)
        status = sent[0]["status"]
        answer = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
        if status == 200:
            assert reached == [gzip.decompress(body) if (b"content-encoding", b"gzip") in headers else body]
        return status, answer

    return asyncio.run(main())


def test_a_complete_body_reaches_its_route() -> None:
    assert call(b'{"inputs": [1]}', []) == (200, {"ok": True})


def test_a_complete_body_over_the_limit_without_content_length_gets_413() -> None:
    status, answer = call(b"x" * (LIMIT + 1), [])
    assert status == 413 and str(LIMIT) in answer["error"]
    assert call(b"x" * (LIMIT + 1), [], complete=False)[0] == 413  # as on the slow path


def test_a_complete_encoded_body_is_still_decoded_and_held_to_the_decoded_limit() -> None:
    assert call(gzip.compress(b'{"inputs": [1]}'), [(b"content-encoding", b"gzip")]) == (200, {"ok": True})
    bomb = gzip.compress(b"0" * (LIMIT * 4))
    assert len(bomb) < LIMIT and call(bomb, [(b"content-encoding", b"gzip")])[0] == 413
    assert call(b"{}", [(b"content-encoding", b"br")])[0] == 415


def test_a_served_inference_answer_is_written_whole_with_its_headers(
    bundle_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the real server the direct route's 200 goes out through protocol.write_response, with
    the same headers as by uvicorn's send, and the kept-alive connection serves the next request."""
    took: list[bool] = []

    def counting(*args: Any) -> bool:
        took.append(protocol.write_response(*args))
        return took[-1]

    monkeypatch.setattr(guard, "write_response", counting)
    body = {"inputs": sample_inputs(manifest, 1).tolist()}
    with live_server(make_settings(bundle_path)) as where, httpx.Client(base_url=f"http://{where}") as client:
        path = f"/v1/models/{manifest.name}/predict"
        answers = [client.post(path, json=body, headers={"X-Request-ID": f"id-{i}"}) for i in range(2)]
    assert took == [True, True]
    for i, r in enumerate(answers):
        assert r.status_code == 200 and r.headers["x-request-id"] == f"id-{i}"
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(r.content) and r.json()["request_id"] == f"id-{i}"
        assert "connection" not in r.headers


def test_answered_and_refused_requests_leave_no_reference_cycles(
    bundle_path: Path, manifest: Manifest
) -> None:
    """What a request made goes by reference counting once it is answered or refused, on a real
    uvicorn: none of it is left for the cyclic collector. A refusal delivered through its batch's
    future (here: queued behind a 1 s batch, past a deadline or a latency budget) and the cycle's one-write
    transport view each made a cycle per request, and at 4x overload their collections stopped the
    event loop for 50-70 ms at a time, past the latency budgets of everything in flight."""
    x = sample_inputs(manifest, 1)
    hold = x.copy()
    hold.flat[0] = SLOW + 1000  # the session sleeps 1 s on this batch
    path = f"/v1/models/{manifest.name}/predict"

    def body(rows: Any, **params: Any) -> dict[str, Any]:
        return {"inputs": rows.tolist(), "sparsity_level": "full", **params}

    async def traffic(base: str) -> tuple[list[int], list[str]]:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            statuses = [(await http.post(path, json=body(x))).status_code for _ in range(5)]
            held = asyncio.ensure_future(http.post(path, json=body(hold)))
            await asyncio.sleep(0.1)  # the held batch runs; these queue behind it past their deadline
            late = [http.post(path, json=body(x, timeout_ms=50)) for _ in range(4)]
            # admitted on a prediction that knows nothing of the sleep, shed when their batch forms
            budget = {"inputs": x.tolist(), "latency_budget_ms": 300, "min_accuracy": 0.9}
            late += [http.post(path, json=budget) for _ in range(4)]
            statuses += [r.status_code for r in await asyncio.gather(*late)] + [(await held).status_code]
            gc.collect()  # connections still open: only what the requests left behind is unreachable
            left = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith(OURS)})
            return statuses, left

    settings = make_settings(bundle_path, max_queue_delay_ms=0.0)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable stays in gc.garbage
    try:
        with live_server(settings, session_factory=Slow) as address:
            gc.collect()  # what starting the server left (uvicorn's logging set-up)
            gc.garbage.clear()
            statuses, left = asyncio.run(traffic(f"http://{address}"))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert statuses == [200] * 5 + [504] * 4 + [503] * 4 + [200], statuses
    assert left == [], left
