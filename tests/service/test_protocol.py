"""service.protocol driven directly: bytes in through data_received, the app run, writes recorded by a
fake transport. What the connection sees, write by write."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from service.protocol import BODY_COMPLETE, CONNECTIONS, guarded_protocol, write_response
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

        config = uvicorn.Config(recording, lifespan="off", log_level="warning", access_log=False)  # as served
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


def test_a_request_carries_the_servers_open_connections_for_the_engine() -> None:
    """The set of the server's open connections (uvicorn's), live: the engine reads how many are
    open when it decides whether a request can be the only one in flight."""
    seen: list[int] = []

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(len(scope["extensions"][CONNECTIONS]))
        await plain(scope, receive, send)

    _, scopes = serve_one(counting)
    assert seen == [1]  # this connection, open while its request ran
    assert len(scopes[0]["extensions"][CONNECTIONS]) == 0  # closed since: the same set, live


HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2"), (b"x-request-id", b"r1")]


def by_messages(headers: list[tuple[bytes, bytes]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def written(headers: list[tuple[bytes, bytes]], took: list[bool]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        took.append(write_response(send, 200, headers, b"ok"))
        if not took[-1]:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_response_written_whole_is_the_bytes_uvicorns_send_writes_and_keeps_the_connection() -> None:
    two = REQUEST + REQUEST  # the second request on the kept-alive connection is served as well
    took: list[bool] = []
    direct, _ = serve_one(written(HEADERS, took), two)
    sent, _ = serve_one(by_messages(HEADERS), two)
    assert took == [True, True]
    assert direct.writes == sent.writes and len(direct.writes) == 2  # kept alive: both answered
    assert direct.writes[0].endswith(b"x-request-id: r1\r\n\r\nok")


def test_a_response_written_whole_closes_as_uvicorn_would() -> None:
    closing = REQUEST.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n")
    for request, headers in ((closing, HEADERS), (REQUEST, [*HEADERS, (b"connection", b"close")])):
        took: list[bool] = []
        direct, _ = serve_one(written(headers, took), request + REQUEST)
        sent, _ = serve_one(by_messages(headers), request + REQUEST)
        assert took == [True] and direct.writes == sent.writes and len(direct.writes) == 1
        assert b"connection: close\r\n" in direct.writes[0] and direct.closed


def test_a_response_is_not_written_whole_past_uvicorns_checks() -> None:
    took: list[bool] = []
    head = REQUEST.replace(b"POST", b"HEAD")
    direct, _ = serve_one(written(HEADERS, took), head)
    sent, _ = serve_one(by_messages(HEADERS), head)
    assert took == [False] and direct.writes == sent.writes  # HEAD: no body, uvicorn's way

    async def started(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        took.append(write_response(send, 200, HEADERS, b"ok"))
        await send({"type": "http.response.body", "body": b"ok"})

    serve_one(started)
    assert took[-1] is False

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()

        async def other(message: Any) -> None:
            await send(message)

        took.append(write_response(other, 200, HEADERS, b"ok"))

    serve_one(wrapped)
    assert took[-1] is False


class Counting:
    """A loop for the protocol that counts the timers it arms (everything else: the real loop's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.armed = loop, 0

    def call_at(self, *args: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self.loop.call_at(*args)

    def call_later(self, *args: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self.loop.call_later(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


def kept_alive(
    requests: list[bytes], gap_s: float = 0.0, keep_alive_s: int = 5, read_timeout_s: float = 10.0
) -> tuple[Transport, int, Any]:
    """`requests` one after another on one kept-alive connection (each sent once the last one is
    answered, `gap_s` later); (the transport, timers armed, the protocol), the connection still open."""
    connection = Transport()

    async def main() -> tuple[int, Any]:
        loop = Counting(asyncio.get_running_loop())
        config = uvicorn.Config(plain, lifespan="off", log_level="warning", timeout_keep_alive=keep_alive_s)
        settings = Settings(read_timeout_s=read_timeout_s)
        protocol = guarded_protocol(settings)(config, ServerState(), {}, loop)  # type: ignore[arg-type]
        protocol.connection_made(connection)
        for request in requests:
            answered = len(connection.writes)
            protocol.data_received(request)
            while len(connection.writes) == answered and not connection.closed:
                await asyncio.sleep(0.001)
            await asyncio.sleep(gap_s)
        return loop.armed, protocol

    armed, protocol = asyncio.run(main())
    return connection, armed, protocol


def test_a_kept_alive_connection_arms_no_timer_per_request() -> None:
    transport, armed, _ = kept_alive([REQUEST] * 30)
    assert len(transport.writes) == 30 and not transport.closed
    assert armed <= 3, armed  # read deadline, keep-alive: once each, not twice per request (60)


def test_an_idle_kept_alive_connection_still_closes_after_the_keep_alive_timeout() -> None:
    transport, _, _ = kept_alive([REQUEST], gap_s=1.3, keep_alive_s=1)
    assert transport.closed  # idle 1.3 s after its answer
    # answers at about 0 and 0.6 s, looked at 1.2 s: the timer armed at 0 found it busy since 0.6
    transport, _, _ = kept_alive([REQUEST, REQUEST], gap_s=0.6, keep_alive_s=1)
    assert not transport.closed and len(transport.writes) == 2


def test_a_later_stalled_head_on_a_kept_alive_connection_still_gets_408() -> None:
    start = b"POST /x HTTP/1.1\r\nHost: t\r\n"  # no end of head
    transport, _, _ = kept_alive([REQUEST, REQUEST, start], gap_s=0.0, read_timeout_s=0.5)
    assert transport.closed and transport.writes[-1].startswith(b"HTTP/1.1 408 ")
