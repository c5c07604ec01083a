"""Keeps the event loop polling for a moment after the server falls idle, before it sleeps (opt-in:
settings.idle_spin_us, default 0).

At low load a request reaches a loop asleep in epoll, on a core the system let go idle. On this
project's virtual machines that wake-up is most of a small request's time: at concurrency 1 on the
digits 1/8 level a bare ASGI app answered in a median 0.9-3.0 ms from hour to hour while the level
computes in 0.4 ms, and onnxruntime itself runs 1/8 in 0.47 ms back to back but 0.87 ms after
3 ms of sleep (a cold core). So after an inference answer leaves a server with nothing else in
flight, the loop keeps turning for up to `window_s`: a callback that queues itself again, each turn
of the loop polling the sockets without blocking. A request arriving meanwhile is read at once, on a
warm core. The spin ends as soon as a request is in flight (it then has the loop: no turn is taken
from it) or the window ends.

Cost: at most `window_s` of one core per answer that leaves the server idle; nothing at high load,
where the server is never idle. It never spins while a request waits on an inference thread: that
thread needs the GIL to hand its batch back, and a spinning loop would hold it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class IdleSpin:
    def __init__(
        self, window_s: float, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._busy = busy  # True while any request is in flight
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._until = 0.0  # the clock's time at which the current spin ends
        self._spinning = False

    @property
    def spinning(self) -> bool:
        return self._spinning

    def start(self) -> None:
        """Spin on the running loop from now on (after each `poke`)."""
        self._loop = asyncio.get_running_loop()

    def stop(self) -> None:
        self._loop, self._until = None, 0.0

    def poke(self) -> None:
        """An answer left and nothing is in flight: spin for `window_s` from now."""
        if self._loop is None or self.window_s <= 0:
            return
        self._until = self._clock() + self.window_s
        if not self._spinning:
            self._spinning = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        if self._loop is None or self._busy() or self._clock() >= self._until:
            self._spinning = False
            return
        self._loop.call_soon(self._turn)
