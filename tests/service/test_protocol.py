"""service.protocol driven directly: bytes in through data_received, the app run, writes recorded by a
fake transport. What the connection sees, write by write."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from service.protocol import BODY_COMPLETE, guarded_protocol
from service.settings import Settings

REQUEST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def serve_one(
    app: Any, request: bytes = REQUEST, transport: Transport | None = None
) -> tuple[Transport, list[dict[str, Any]]]:
    """Feed `request` to a fresh connection of the guarded protocol; run the app to its end."""
    scopes: list[dict[str, Any]] = []
    connection = transport or Transport()

    async def main() -> Transport:
        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scopes.append(scope)
            await app(scope, receive, send)

        config = uvicorn.Config(recording, lifespan="off", log_level="warning")
        protocol = guarded_protocol(Settings())(config, ServerState(), {}, asyncio.get_running_loop())
        protocol.connection_made(connection)
        protocol.data_received(request)
        for _ in range(20):  # the app's task, and the turn after it
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return connection

    return asyncio.run(main()), scopes


async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    transport, _ = serve_one(plain)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"ok"


def test_a_head_whose_body_comes_later_goes_out_at_the_next_turn_of_the_loop() -> None:
    connection = Transport()
    seen: list[list[bytes]] = []

    async def slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(list(connection.writes))  # the head went out meanwhile, alone
        await send({"type": "http.response.body", "body": b"ok"})

    serve_one(slow_body, transport=connection)
    assert len(seen[0]) == 1 and seen[0][0].startswith(b"HTTP/1.1 200 OK")
    assert connection.writes[1:] == [b"ok"]


def test_a_closed_connection_gets_what_was_held_first() -> None:
    async def closing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-length", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    transport, _ = serve_one(closing)
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\nok")
    assert transport.closed


def test_a_body_in_with_the_head_is_marked_complete_for_the_guard() -> None:
    _, scopes = serve_one(plain)
    assert scopes[0]["extensions"][BODY_COMPLETE] is True
    _, partial = serve_one(plain, REQUEST[:-1])  # one byte of the body still to come
    assert BODY_COMPLETE not in partial[0].get("extensions", {})
