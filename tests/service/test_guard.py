"""service.guard as a bare ASGI app: reading an inference body the protocol already has whole
(service.protocol BODY_COMPLETE) keeps every rule of the slow path."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

from service.engine import Engine
from service.guard import Guard
from service.protocol import BODY_COMPLETE
from service.settings import Settings

LIMIT = 1024


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
