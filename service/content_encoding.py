"""Request bodies sent with `Content-Encoding: gzip` or `deflate` (tritonclient's
request_compression_algorithm), decoded while they stream in, the body limit held to the DECODED
bytes: a small body that inflates past `max_body_bytes` (a zip bomb) stops at the limit with 413.
Other encodings get 415; a body that is not what its encoding says gets 400."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}  # 0: see _wbits
SUPPORTED = ("gzip", "deflate", "identity")


def _wbits(first: bytes) -> int:
    """HTTP `deflate` is zlib-wrapped (RFC 9110); some clients send raw deflate: told by the header."""
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


class Decoder:
    """`feed` each body chunk; it returns the decoded bytes so far, raising HTTPException 413 once
    they pass `limit` (never inflating more than one byte beyond it), 400 on a corrupt or truncated
    stream. Identity bodies pass through, counted against the same limit."""

    def __init__(self, encoding: str | None, limit: int, too_large: Callable[[], str]) -> None:
        name = (encoding or "identity").strip().lower()
        if name != "identity" and name not in _WBITS:
            raise HTTPException(
                415, f"Content-Encoding {encoding!r} is not supported; send one of {', '.join(SUPPORTED)}"
            )
        self.name = name
        self._inflate: Any = None  # a zlib decompress object, made from the first bytes
        self.limit, self.seen, self.too_large = limit, 0, too_large

    def feed(self, chunk: bytes, last: bool) -> bytes:
        if self.name == "identity":
            out = chunk
        else:
            if self._inflate is None:
                if not chunk and not last:
                    return b""
                self._inflate = zlib.decompressobj(_WBITS[self.name] or _wbits(chunk))
            try:
                out = self._inflate.decompress(chunk, self.limit - self.seen + 1)
            except zlib.error as exc:
                raise HTTPException(400, f"request body is not valid {self.name}: {exc}") from None
        self.seen += len(out)
        if self.seen > self.limit:
            raise HTTPException(413, self.too_large() + " (decoded)" * (self.name != "identity"))
        if last and self._inflate is not None and (not self._inflate.eof or self._inflate.unused_data):
            raise HTTPException(400, f"request body is not one complete {self.name} stream")
        return out
