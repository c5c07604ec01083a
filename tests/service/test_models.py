"""service.models: a level's state as the policy sees it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from service.batcher import Batcher
from service.instances import Instances
from service.models import ServedLevel
from service.policy import LevelProfile


def test_the_state_of_a_running_level_comes_from_one_read_of_its_batch() -> None:
    """The level's thread ends a chained batch while the event loop reads the state: running_since
    may turn None between two reads of it (a 500, TypeError, at concurrency 64 on the tiny digits
    bundle, about 1 request in 3000). The state reads the running batch (since, samples) once."""

    async def main() -> None:
        batcher = Batcher(
            lambda x: {"y": x}, name="t", max_batch_size=8, max_delay_s=0.0, max_queue_samples=64
        )
        profile = LevelProfile("full", 1.0, 0.9, ((1, 10.0), (8, 40.0)))
        level = ServedLevel(cast(Any, None), cast(Any, None), Instances([batcher]), profile)
        try:
            assert level.state().running_remaining_ms == 0.0  # idle
            # the moment in question: the thread has cleared running_since, the batch was read whole
            batcher.running_batch, batcher.running_since = (time.monotonic(), 8), None
            assert 30.0 < level.state().running_remaining_ms <= 40.0
        finally:
            await batcher.close(1.0)

    asyncio.run(main())
