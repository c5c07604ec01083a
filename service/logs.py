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

# Fresh ids are cut from one os.urandom read of _POOL ids: a getrandom call per request cost ~40 µs of
# the event loop under load here (c=64, py-spy), 256 ids from one read cost ~0.1 µs each. A forked
# child starts with an empty pool, never with ids its parent may hand out too.
_POOL = 256
_fresh: list[str] = []


def _refill() -> None:
    block = os.urandom(16 * _POOL).hex()
    _fresh[:] = [block[i : i + 32] for i in range(0, len(block), 32)]


os.register_at_fork(after_in_child=_fresh.clear)


def request_id(given: str | None) -> str:
    """The caller's id if it is short and made of safe characters, else a fresh one (128 bits from
    os.urandom, as random as uuid4().hex, without building a UUID)."""
    if given is not None and _SAFE.fullmatch(given):
        return given
    try:
        return _fresh.pop()
    except IndexError:
        _refill()
        return _fresh.pop()


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
