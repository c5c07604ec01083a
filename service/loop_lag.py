"""How late the event loop runs what is due: a timer that asks to wake every `interval_s` and
measures how much later than asked it woke.

uvicorn gives no arrival time of a request's bytes, so the time a request spends waiting for the
loop before the guard sees it, and between its own steps once admitted (batch done -> route ->
answer sent), shows here: when the loop is the bottleneck, every callback waits about this long.
`lag_ms` is the mean lateness of the last `window` ticks (what one wait for the loop costs now),
or the lateness of the tick overdue now if that is more: a backlog shows at once, one stall of the
process (a busy machine) moves it by 1/window, and it decays within `window` ticks once clear. The policy
adds it to a request's predicted server time (service.policy.admit).
"""

from __future__ import annotations

import asyncio
from collections import deque


class LoopLag:
    def __init__(self, interval_s: float = 0.005, window: int = 8) -> None:
        self.interval_s = interval_s
        self._recent: deque[float] = deque([0.0], maxlen=window)
        self._mean_s = 0.0  # of _recent, kept by _tick: lag_ms is read once per request
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    @property
    def lag_ms(self) -> float:
        """The mean lateness of the recent ticks, or of the tick overdue now if more, in ms."""
        overdue = self._loop.time() - self._due if self._timer is not None and self._loop else 0.0
        return max(self._mean_s, overdue, 0.0) * 1000

    def start(self) -> None:
        """Tick on the running loop until `stop` (idempotent)."""
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._timer = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self._recent.append(max(0.0, self._loop.time() - self._due))
        self._mean_s = sum(self._recent) / len(self._recent)
        self._arm()
