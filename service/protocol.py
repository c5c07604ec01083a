"""uvicorn's httptools protocol with limits on reading a request's head, which uvicorn leaves open.

uvicorn parses the request line and headers itself, before the app sees anything, and has no
deadline for them nor any limit on their size or number: a client that trickles headers holds its
connection forever, and one that sends 1 MB header lines or 10,000 headers is served. Here:
- the head must arrive within `read_timeout_s` of the request's first byte (of the connection,
  for its first request); past it, 408 and the connection closes;
- more than `max_header_bytes` of request line and headers, or more than `max_headers` header
  fields, get 431 and the connection closes;
- the time the request began goes to the app as `scope["extensions"][READ_BEGAN]` (event-loop
  time), so service.guard holds the body to the same deadline: one deadline for head and body;
  `scope["extensions"][BODY_COMPLETE]` says the whole body is in already (no deadline to arm);
  `scope["extensions"][CONNECTIONS]` is the server's set of open connections (uvicorn's), so the
  engine knows when a request is the only one that can be in flight (service.batcher's inline run);
- a response's head goes out with its body in one write (`OneWrite`), where uvicorn writes them
  apart: two sends, two segments, and a client woken twice per answer (its read of the head alone
  finds no body and waits again). Measured at concurrency 1 on 2 cores: sending an answer took a
  median 150 µs as two writes.
- `write_response`: a whole response (head and body known) written by the app straight to the
  connection, as uvicorn's `send` would write it for a start message and one body message (same
  bytes, keep-alive, completion), without its per-message checks and header scan: for the
  inference routes (service.guard), where that machinery was ~6% of the event loop at concurrency 64.
Idle keep-alive connections are closed after uvicorn's `timeout_keep_alive`, as uvicorn does.

Both deadlines are kept by one lazy timer each per connection, not a timer armed and cancelled per
request (uvicorn arms its keep-alive timer after every response and cancels it at the next request's
first bytes): a request only stamps when its head began, or when the connection fell idle, and the
timer, when it fires, looks whether that deadline really passed, else waits for what is left of it.
On a busy kept-alive connection that is one timer per deadline's length instead of two timers made
and cancelled per request (uvloop's timers are a libuv handle each: at concurrency 64 the per-request
timers were about 4% of the event loop's samples).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.settings import Settings

log = logging.getLogger(__name__)
READ_BEGAN = "circuitserve.read_began"
BODY_COMPLETE = "circuitserve.body_complete"  # the whole body is in: service.guard reads it at once
CONNECTIONS = "circuitserve.connections"  # the server's open connections (the same set every request)


def plain_response(status: int, reason: str, text: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (written before any app runs)."""
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def guarded_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn.Config(http=...), with `settings`' limits."""

    class Guarded(GuardedHttpTools):
        timeout_s = settings.read_timeout_s
        max_bytes = settings.max_header_bytes
        max_count = settings.max_headers

    return Guarded


class GuardedHttpTools(HttpToolsProtocol):
    timeout_s: float
    max_bytes: int
    max_count: int
    _timer: asyncio.TimerHandle | None = None  # the read deadline's (lazy, see the module docstring)
    _began = 0.0
    _reading = False  # a head is being read (its deadline runs from `_began`)
    _idle_since: float | None = None  # the last response completed then, and nothing came since
    _head_bytes = 0
    _head_count = 0
    _refusal: bytes | None = None  # the response for a head over the limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading:  # a later request on a kept-alive connection: from its first byte
            self._arm()
        self._head_bytes = self._head_count = 0

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn's: bytes came (or the connection went), so the connection is not idle. The lazy
        keep-alive timer is left to find that out when it fires."""
        self._idle_since = None

    def on_response_complete(self) -> None:
        """uvicorn's, but for the keep-alive timer: the connection is stamped idle, and a timer is
        armed only if none is pending (`_keep_alive_due` checks the stamp)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:  # a request came meanwhile: armed again once it is answered
            return
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.max_bytes:
            self._refuse_head()
        self.url += url  # uvicorn's on_url

    def on_header(self, name: bytes, value: bytes) -> None:
        # (the count inline, not a call: three headers a request, on the path of every request)
        # httptools may hand over one header in pieces: a name alone counts as a new field
        self._head_bytes += len(name) + len(value) + 4
        self._head_count += 1 if name else 0
        if self._head_bytes > self.max_bytes or self._head_count > self.max_count:
            self._refuse_head()
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._reading = False  # the timer, if it fires before the next head, finds nothing to do
        before = self.cycle
        super().on_headers_complete()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        extensions = scope.setdefault("extensions", {})
        extensions[READ_BEGAN], extensions[CONNECTIONS] = self._began, self.server_state.connections
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a request (not an upgrade): its own transport view
            cycle.transport = OneWrite(self.transport, cycle, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope.setdefault("extensions", {})[BODY_COMPLETE] = True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; ours when the error was a limit (`_refuse_head`)."""
        if self._refusal is None:
            super().send_400_response(msg)
            return
        self.transport.write(self._refusal)
        self.transport.close()

    def _refuse_head(self) -> None:
        """The head passed a limit: stop the parser; uvicorn then calls send_400_response."""
        self._refusal = plain_response(
            431,
            "Request Header Fields Too Large",
            f"request line and headers over the limit of {self.max_bytes} bytes or {self.max_count} fields",
        )
        raise ValueError("header limit")

    def _arm(self) -> None:
        """A head begins now: its deadline is `timeout_s` from now (a timer only if none is pending)."""
        self._began, self._reading = self.loop.time(), True
        if self._timer is None:
            self._timer = self.loop.call_at(self._began + self.timeout_s, self._read_due)

    def _disarm(self) -> None:
        self._reading = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_due(self) -> None:
        self._timer = None
        if not self._reading:  # the head came in time: armed again by the next one
            return
        due = self._began + self.timeout_s
        if self.loop.time() < due:  # a later head than the one the timer was armed for
            self._timer = self.loop.call_at(due, self._read_due)
            return
        self._reading = False
        if not self.transport.is_closing():
            log.info("request head not complete within %.1f s: 408, connection closed", self.timeout_s)
            text = f"request headers not complete within {self.timeout_s:g} s"
            self.transport.write(plain_response(408, "Request Timeout", text))
            self.transport.close()


class OneWrite:
    """A request cycle's view of its connection's transport: the response head (the first write once
    the response has started) is held and written with the body's first write, as one. A head that
    no write follows in the same turn of the loop (a body still to come) goes out at the next turn;
    closing writes what is held first. Everything else is the transport's."""

    __slots__ = ("_cycle", "_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._cycle, self._loop = transport, cycle, loop
        self._held: bytes | None = None
        self._started = False  # the head was seen

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._started and self._cycle.response_started:  # uvicorn's write of the head
            # the cycle holds this view as its transport: let go of it once it is no longer needed,
            # so a request's objects go by reference counting, not a cyclic collection per request
            self._started, self._held, self._cycle = True, data, None
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def write_whole(self, data: bytes) -> None:
        """A whole response (service.protocol.write_response): written at once, nothing held."""
        self._started, self._cycle = True, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def write_response(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Write `status`, `headers` (lowercase names, safe values, content-length among them) and `body`
    as the response of the request cycle whose `send` this is, in one write, and complete it as
    uvicorn's `send` does. False (nothing written) where uvicorn's own path must take it: `send` is
    not a guarded cycle's, the response started, the client went, writes are paused (a drain to
    await), the method is HEAD, or uvicorn's access log is on."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        return False
    transport = cycle.transport
    if (
        not isinstance(transport, OneWrite)
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.access_log
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    cycle.response_started, cycle.waiting_for_100_continue = True, False
    content, closes = [STATUS_LINE[status]], False
    for name, value in (*cycle.default_headers, *headers):
        if name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
            cycle.keep_alive, closes = False, True
        content += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive and not closes:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", body)
    transport.write_whole(b"".join(content))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
    return True
