"""uvicorn with a drain: on SIGTERM/SIGINT the server keeps listening while in-flight inference
finishes, then exits, all within `drain_timeout_s` of the signal.

1. The signal: readiness turns false and new inference gets 503 (`Connection: close`).
2. Queued batches start at once; the drain waits until no inference request is in flight, or until
   a small reserve before the deadline, when whatever is still queued or running gets 503.
3. uvicorn's own shutdown (close the listener, let responses go out) and the app's lifespan
   shutdown get only the time left, so the two never add up to twice the timeout.
A second signal ends the drain at once. No signal is re-raised: the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from service.engine import Engine

log = logging.getLogger(__name__)
_MIN_GRACE_S = 0.1


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.reserve_s = min(1.0, 0.2 * engine.settings.drain_timeout_s)  # for uvicorn and the exit
        self._began = self._finished = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.engine.drain_deadline is None:
            self.engine.request_drain()  # plain assignments: safe in a signal handler
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True  # a second signal: end the drain now

    async def on_tick(self, counter: int) -> bool:
        if self.engine.draining and not self._finished:
            if not self._began:
                self._began = True
                self.engine.begin_drain()
                log.info(
                    "draining: %d inference requests in flight, %.1f s at most",
                    self.engine.in_flight,
                    self.engine.drain_left_s(),
                )
            left = self.engine.drain_left_s()
            if self.should_exit or self.engine.in_flight == 0 or left <= self.reserve_s:
                await self._finish()
        return await super().on_tick(counter)

    async def _finish(self) -> None:
        self._finished = self.should_exit = True
        if self.engine.in_flight:
            log.warning(
                "drain ends with %d inference requests in flight: they get 503", self.engine.in_flight
            )
        await self.engine.close(0)  # fails what is left with 503, so those answers go out now
        left = max(_MIN_GRACE_S, self.engine.drain_left_s())
        self.config.timeout_graceful_shutdown = left  # type: ignore[assignment]
