"""Request ids: taken from the caller's `X-Request-ID` when safe, else generated; on every log record.

`install()` wraps the log record factory once per process so that every record carries
`request_id` (the id of the request being handled in this context, "-" outside one); the format
used by `serve` prints it.
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import ContextVar
from typing import Any

HEADER = "X-Request-ID"
MAX_LENGTH = 128
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_SAFE = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}")

current: ContextVar[str] = ContextVar("request_id", default="-")


def request_id(given: str | None) -> str:
    """The caller's id if it is short and made of safe characters, else a fresh one."""
    if given is not None and _SAFE.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


def install() -> None:
    """Give every log record a `request_id` attribute (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "adds_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = current.get()
        return record

    factory.adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
