"""Every error the service answers with, and the one place that maps them to HTTP.

Raise a ServiceError subclass anywhere; the handlers installed by `install_handlers` turn it into
`{"error": message}` with its status code (the body the Open Inference Protocol clients parse).
`outcome` is the value of the `outcome` label on `circuitserve_requests_total`; `cancelled` is a
request its client abandoned (gone or stalled before its body was complete, see service.guard): not
served, and not a server fault, so outside the error ratio. `shed` is a request with a latency
budget refused because it could not be answered within it (service.policy.admit).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import logs

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status: ClassVar[int] = 500
    outcome: ClassVar[str] = "error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    outcome = "bad_request"


class NotFound(ServiceError):
    """Unknown model, version or level (404)."""

    status = 404
    outcome = "bad_request"


class Unauthorized(ServiceError):
    """An admin endpoint without the admin bearer token (401)."""

    status = 401
    outcome = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """An admin endpoint on a server that has no admin token set: disabled (403)."""

    status = 403
    outcome = "bad_request"


class Unavailable(ServiceError):
    """Not ready, draining, or the queue is full: try again later (503 with Retry-After)."""

    status = 503
    outcome = "rejected"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class Shed(Unavailable):
    """A request with a latency budget the server predicts it cannot meet, refused (at admission or
    when its batch forms) rather than answered late: 503 with Retry-After, outcome `shed`."""

    outcome = "shed"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before it ran; it was not executed (504)."""

    status = 504
    outcome = "timeout"


class InferenceFailed(ServiceError):
    """The inference session raised (500)."""

    status = 500
    outcome = "error"


class ErrorBody(BaseModel):
    error: str
    request_id: str


def error_docs(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the errors a route can answer with."""
    what = {
        400: "Malformed request or impossible budget",
        404: "Unknown model or version",
        500: "Inference failed",
        401: "Missing or wrong bearer token (when the server has one)",
        403: "Admin endpoints disabled: the server has no admin_token",
        415: "Content-Encoding other than gzip, deflate or identity",
        408: "Headers and body not complete within read_timeout_s; the connection closes",
        413: "Body larger than the configured limit",
        429: "Too many requests in flight (see Retry-After)",
        503: "Not ready, draining, queue full, or shed: its latency budget cannot be met (see Retry-After)",
        504: "Deadline passed before the request ran; not executed",
    }
    return {s: {"model": ErrorBody, "description": what[s]} for s in statuses}


def drop_422_from_docs(app: FastAPI) -> None:
    """FastAPI documents 422 for validation errors; this service answers 400 (see handlers below)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()  # cached by FastAPI in app.openapi_schema; edited in place
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    if isinstance(exc, ClientDisconnect):
        return "cancelled"
    if isinstance(exc, StarletteHTTPException):  # e.g. 413 from service.guard while reading the body
        return "bad_request" if exc.status_code < 500 else "error"
    if isinstance(exc, RequestValidationError):
        return "bad_request"
    return exc.outcome if isinstance(exc, ServiceError) else "error"


JSON = "application/json"


def error_body(message: str) -> bytes:
    """`{"error": message, "request_id": id}`, encoded: clients parse `error`; the id matches the log
    lines. The body of every error answer, whether a Response carries it or service.guard writes it."""
    return to_json({"error": message, "request_id": logs.current.get()})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, headers=headers, media_type=JSON)


def note(method: str, path: str, exc: ServiceError) -> None:
    """The log line of a ServiceError answered. Faults are warnings; refusals and load shedding
    (4xx, 503, 504) are counted in metrics and logged at DEBUG only: one line each would flood,
    and under overload even building a line no handler writes costs the event loop."""
    level = logging.WARNING if exc.status == 500 else logging.DEBUG
    if log.isEnabledFor(level):
        log.log(level, "%s %s -> %d: %s", method, path, exc.status, exc.message)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def handle(request: Request, exc: Exception) -> Response:
    """The response for any exception a route raised: the one mapping of errors to HTTP, used by
    FastAPI's handlers and by the guard's direct dispatch of inference routes (service.guard, which
    answers a ServiceError itself, with the same status, body and headers, and `note`s it)."""
    if isinstance(exc, ServiceError):
        note(request.method, request.scope["path"], exc)
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return error_response(400, _validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, ClientDisconnect):  # nobody to answer; the response goes nowhere
        log.info("%s %s: client disconnected", request.method, request.url.path)
        return error_response(499, "client disconnected")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


def install_handlers(app: FastAPI) -> None:
    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)
    drop_422_from_docs(app)
