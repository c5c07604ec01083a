"""What a request asks of the server: one type, parsed once per protocol by one function.

Both APIs carry the same fields (native: top-level body keys; v2: request `parameters`, with
Triton's `timeout` in µs). One rule for both: numbers are numbers. `true`, `"5"` or `null` where a
number belongs is a 400 that names the field; so is a value out of its range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from service.errors import BadRequest

MAX_PRIORITY = 2**31 - 1
MAX_LATENCY_MS = 3.6e6


class Budget(NamedTuple):  # immutable; a tuple, made once or twice per request (cheaper than a dataclass)
    level: str | float | None = None  # as sent (name or keep fraction); a level name once resolved
    latency_ms: float | None = None
    min_accuracy: float | None = None
    priority: int = 0  # lower runs first; 0 = the configured default
    timeout_ms: float | None = None  # may only lower the server's default

    @property
    def given(self) -> bool:
        return self.latency_ms is not None or self.min_accuracy is not None

    def with_level(self, name: str) -> Budget:
        return Budget(name, self.latency_ms, self.min_accuracy, self.priority, self.timeout_ms)


NONE = Budget()
_KEYS = frozenset(("sparsity_level", "latency_budget_ms", "min_accuracy", "priority"))  # and the timeout's


def integer(value: Any) -> int | None:
    """`value` as an int if it is one (453 or 453.0, as JSON Schema counts integers), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _number(fields: Mapping[str, Any], key: str, where: str) -> float | None:
    value = fields.get(key)
    if value is None:  # absent, or null: not asked for
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{where}{key!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise BadRequest(f"{where}{key!r} is out of range") from None
    if not math.isfinite(number):
        raise BadRequest(f"{where}{key!r} must be finite, got {value!r}")
    return number


def parse(fields: Mapping[str, Any], *, timeout_key: str, timeout_per_ms: float, where: str = "") -> Budget:
    """The budget in `fields` (`where` prefixes messages, e.g. "parameter ")."""
    if timeout_key not in fields and not fields.keys() & _KEYS:
        return NONE
    level = fields.get("sparsity_level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, str | int | float)):
        raise BadRequest(f"{where}'sparsity_level' must be a level name or keep fraction, got {level!r}")
    latency = _number(fields, "latency_budget_ms", where)
    if latency is not None and not 0 < latency <= MAX_LATENCY_MS:
        raise BadRequest(
            f"{where}'latency_budget_ms' must be a number in (0, {MAX_LATENCY_MS:g}], got {latency:g}"
        )
    accuracy = _number(fields, "min_accuracy", where)
    if accuracy is not None and not 0 <= accuracy <= 1:
        raise BadRequest(f"{where}'min_accuracy' must be a number in [0, 1], got {accuracy:g}")
    sent = fields.get("priority")
    priority = 0 if sent is None else integer(sent)
    if priority is None or not 0 <= priority <= MAX_PRIORITY:
        raise BadRequest(f"{where}'priority' must be an integer in [0, {MAX_PRIORITY}], got {sent!r}")
    timeout = _number(fields, timeout_key, where)
    if timeout is not None and timeout < 0:
        raise BadRequest(f"{where}{timeout_key!r} (timeout) must be a non-negative number, got {timeout:g}")
    if level is not None and (latency is not None or accuracy is not None):
        raise BadRequest("give either sparsity_level or a budget (latency_budget_ms, min_accuracy), not both")
    return Budget(level, latency, accuracy, priority, None if timeout is None else timeout / timeout_per_ms)
