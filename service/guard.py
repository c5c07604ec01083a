"""The ASGI layer in front of every route: request id, bearer-token auth, body size, admission.

- Request id: the caller's `X-Request-ID` if safe (service.logs), else a fresh one; sent back in
  the `X-Request-ID` header, in error bodies, and on every log line written while handling it.
- Auth (when `auth_token` is set): `Authorization: Bearer <token>`, compared in constant time, on
  every path except the API docs (service.docs) and, unless `protect_health_and_metrics`,
  /v2/health/* and /metrics.
- Bodies over `max_body_bytes` get 413, from Content-Length before reading or while reading.
  `Content-Encoding: gzip | deflate` bodies are decoded while read, the limit held to the decoded
  bytes (service.content_encoding); other encodings get 415.
- The model repository paths (/v2/repository/*) take the admin token instead, checked by their
  routes (service.routes.repository).
- An inference request's body is read whole before it takes a slot, within `read_timeout_s` of the
  request's first byte (service.protocol stamps it; else from here): past it, 408 and the connection
  closes. So a stalled upload holds a connection and its partial body, never a slot.
- A client gone before its body is complete is `cancelled`: logged at INFO, no answer, no error.
- At most `max_inflight_requests` inference requests with complete bodies at once; more get 429.
  The count is what a drain waits for (service.app) and what readiness reports (routes.v2).
- An exception no handler took becomes a 500 with `{"error": ...}`; one access log line per request.
- Admitted POSTs to the two inference routes go straight to their direct handlers (`direct`: engine,
  model, version, headers, body -> body bytes and headers), past Starlette's routing, Request and
  Response objects and FastAPI's dependency machinery, and are answered with one pre-encoded
  http.response.start and one body: on small models that machinery costs more CPU than the model
  itself (profiled; bench/REPORT.md has the figures). FastAPI still documents the routes; errors take
  the same mapping (service.errors.handle).
- Refusals are written the same way: a ServiceError a direct handler raises (a shed above all) and
  the guard's own 401/408/413/415/429 go out as service.errors' status, body and headers in one start
  and one body, with no Request or Response object built (`_Exchange.refuse`): under overload most
  requests are refused, and what a refusal costs the event loop decides how much of it is left
  for the requests that are answered.
- The guard is the outermost layer of the app (service.app), ahead of FastAPI's own middlewares.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import docs, errors, logs
from service.content_encoding import Decoder
from service.engine import Engine
from service.protocol import BODY_COMPLETE, CONNECTIONS, READ_BEGAN, write_response
from service.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")

INFERENCE = re.compile(
    r"/v1/models/(?P<native>[^/]+)/predict|/v2/models/(?P<v2>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer"
)
# (engine, model name, version or None, request headers, body) -> (response body, response headers)
Direct = Callable[[Engine, str, str | None, Headers, bytes], Awaitable[tuple[bytes, Mapping[str, str]]]]


# The request headers the guard reads, found in one pass over the raw list (ASGI names are lowercase)
_RID, _LENGTH, _AUTH, _ENCODING = (b"x-request-id", b"content-length", b"authorization", b"content-encoding")
_READ = frozenset((_RID, _LENGTH, _AUTH, _ENCODING))


_JSON = {"Content-Type": errors.JSON}


def _wanted(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The first value of each header in _READ that the request has (as Starlette's Headers.get)."""
    found: dict[bytes, str] = {}
    for name, value in raw:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
    return found


def is_probe(path: str) -> bool:
    return path.startswith("/v2/health/") or path == "/metrics"


def is_admin(path: str) -> bool:
    return path.startswith("/v2/repository/")


class Gone(Exception):
    """The client disconnected before its request body was complete."""


class Guard:
    def __init__(
        self, app: ASGIApp, engine: Engine, settings: Settings, direct: Mapping[str, Direct] | None = None
    ) -> None:
        self.app = app
        self.engine = engine
        self.settings = settings
        self.direct = dict(direct or {})  # "native" / "v2" -> that protocol's inference route
        token = settings.auth_token
        self.token = token.get_secret_value().strip().encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = _wanted(scope["headers"])
        rid = logs.request_id(wanted.get(_RID))
        context = logs.current.set(rid)
        start = time.monotonic()
        exchange = _Exchange(send, rid.encode(), self.engine)
        try:
            await self._guarded(scope, receive, exchange, wanted)
        except ClientDisconnect:  # a route reading a body the client abandoned: nobody to answer
            log.info("%s %s: client disconnected", scope["method"], scope["path"])
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not exchange.status:
                await exchange.refuse(500, "internal error")
        finally:
            if access_log.isEnabledFor(logging.INFO):
                ms = (time.monotonic() - start) * 1e3
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], exchange.status, ms)
            logs.current.reset(context)

    async def _guarded(
        self, scope: Scope, receive: Receive, exchange: _Exchange, wanted: dict[bytes, str]
    ) -> None:
        path: str = scope["path"]
        send = exchange.send_with_id
        if not self._authorized(path, wanted.get(_AUTH, "")):
            await exchange.refuse(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            return
        inference = INFERENCE.fullmatch(path)
        model = (inference["native"] or inference["v2"]) if inference else None
        length = wanted.get(_LENGTH, "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            self._count(model, "bad_request")
            await exchange.refuse(413, self._too_large())
            return
        if inference is None:
            await self.app(scope, self._limited(wanted.get(_ENCODING), receive), send)
            return
        try:
            body = await self._read_body(scope, receive, wanted.get(_ENCODING))
        except Gone:
            self._count(model, "cancelled")
            log.info("%s %s: client disconnected before its body was complete", scope["method"], path)
            return
        except TimeoutError:
            self._count(model, "cancelled")
            message = f"request body not complete within {self.settings.read_timeout_s:g} s"
            await exchange.refuse(408, message, {"Connection": "close"})
            return
        except HTTPException as exc:  # 413, or a Content-Encoding refused (415) or corrupt (400)
            self._count(model, "bad_request")
            await exchange.refuse(exc.status_code, exc.detail)
            return
        if self.engine.in_flight >= self.settings.max_inflight_requests:
            self._count(model, "rejected")
            limit = self.settings.max_inflight_requests
            message = f"too many requests in flight (limit {limit}); retry later"
            await exchange.refuse(429, message, {"Retry-After": "1"})
            return
        if self.engine.connections is None:  # the server's set, the same for every request
            self.engine.connections = scope.get("extensions", {}).get(CONNECTIONS)
        self.engine.in_flight += 1
        try:
            protocol = "native" if inference["native"] else "v2"
            route = self.direct.get(protocol) if scope["method"] == "POST" else None
            if route is None:
                await self.app(scope, _replay(body, receive), send)
            else:
                await self._dispatch(route, inference, scope, receive, exchange, body)
        finally:
            self.engine.in_flight -= 1
            if not self.engine.in_flight:
                self.engine.spin.poke()

    async def _dispatch(
        self,
        route: Direct,
        match: re.Match[str],
        scope: Scope,
        receive: Receive,
        exchange: _Exchange,
        body: bytes,
    ) -> None:
        """Run an inference route's direct handler (see the module docstring)."""
        name: str = match["native"] or match["v2"]
        headers = Headers(raw=scope["headers"])  # uvicorn's list, not copied (Headers(scope=) copies)
        try:
            answer, answer_headers = await route(self.engine, name, match["version"], headers, body)
        except errors.ServiceError as exc:  # a refusal (shed above all): no Request, no Response built
            errors.note(scope["method"], scope["path"], exc)
            try:
                await exchange.refuse(exc.status, exc.message, exc.headers)
            finally:
                # A refusal that reached the request through its batch's future is a reference
                # cycle: its traceback holds service.batcher's frame, which holds the future, which
                # holds it. Cut here, the request's objects go at once; left to the cyclic
                # collector, an overload's sheds (~50 objects each) made 50-70 ms collections.
                exc.__traceback__ = None
            return
        except Exception as exc:
            response = await errors.handle(Request(scope, _replay(body, receive)), exc)
            await response(scope, receive, exchange.send_with_id)
            return
        await exchange.answer(answer, answer_headers)

    def _authorized(self, path: str, authorization: str) -> bool:
        if self.token is None or docs.is_docs(path) or is_admin(path):
            return True
        if is_probe(path) and not self.settings.protect_health_and_metrics:
            return True
        scheme, _, credentials = authorization.partition(" ")
        given = credentials.strip().encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token) and scheme.lower() == "bearer"

    async def _read_body(self, scope: Scope, receive: Receive, encoding: str | None) -> bytes:
        """The whole body, by the read deadline (TimeoutError), at most max_body_bytes (413). A plain
        body the protocol has whole already (service.protocol BODY_COMPLETE) is taken at once: no
        deadline to arm, nothing to decode."""
        first: Message | None = None
        if encoding is None and scope.get("extensions", {}).get(BODY_COMPLETE):
            first = await receive()
            if first["type"] == "http.disconnect":
                raise Gone
            if not first.get("more_body", False):
                body: bytes = first.get("body", b"")
                if len(body) > self.settings.max_body_bytes:
                    raise HTTPException(413, self._too_large())
                return body
        loop = asyncio.get_running_loop()
        began = scope.get("extensions", {}).get(READ_BEGAN, loop.time())
        decoder = self._decoder(encoding)
        chunks = []
        async with asyncio.timeout_at(began + self.settings.read_timeout_s):
            while True:
                message, first = first or await receive(), None
                if message["type"] == "http.disconnect":
                    raise Gone
                more = message.get("more_body", False)
                chunks.append(decoder.feed(message.get("body", b""), not more))
                if not more:
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _limited(self, encoding: str | None, receive: Receive) -> Receive:
        """`receive`, decoding the body (415 for an unknown encoding) and raising 413 once it passes
        the limit (bodies without Content-Length, and decoded ones)."""
        decoder: Decoder | None = None

        async def limited() -> Message:
            nonlocal decoder
            message = await receive()
            if message["type"] == "http.request":
                decoder = decoder or self._decoder(encoding)
                more = message.get("more_body", False)
                message = {**message, "body": decoder.feed(message.get("body", b""), not more)}
            return message

        return limited

    def _decoder(self, encoding: str | None) -> Decoder:
        return Decoder(encoding, self.settings.max_body_bytes, self._too_large)

    def _too_large(self) -> str:
        return f"request body larger than the limit of {self.settings.max_body_bytes} bytes"

    def _count(self, model: str | None, outcome: str) -> None:
        if model is not None:
            self.engine.count_invalid(model, outcome)


class _Exchange:
    """One request's sending side: its id (and `Connection: close` while draining) on every
    response, the status sent (for the access log)."""

    __slots__ = ("engine", "rid", "send", "status")

    def __init__(self, send: Send, rid: bytes, engine: Engine) -> None:
        self.send, self.rid, self.engine, self.status = send, rid, engine, 0

    def _extra(self) -> list[tuple[bytes, bytes]]:
        extra = [(b"x-request-id", self.rid)]
        if self.engine.draining:
            extra.append((b"connection", b"close"))  # clients reconnect, to a replica that serves
        return extra

    async def send_with_id(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": [*message.get("headers", []), *self._extra()]}
        await self.send(message)

    async def answer(self, body: bytes, headers: Mapping[str, str], status: int = 200) -> None:
        """`body` with `status` (200: an answer): written straight to the connection where
        service.protocol can (write_response), else as one start message and one body message."""
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        raw += self._extra()
        self.status = status
        if write_response(self.send, status, raw, body):
            return
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": body})

    async def refuse(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        """An error answer (service.errors' body, content type and `headers`) written as `answer`
        writes: under overload most requests end here (shed), so no Response object is built."""
        await self.answer(errors.error_body(message), {**_JSON, **(headers or {})}, status)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app whose body was read already: the body once, then the real messages
    (http.disconnect when the client goes)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
