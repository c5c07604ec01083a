"""A session importable by name, for `serve --workers` tests (each worker is a fresh interpreter,
so a class defined in a `python -c` script cannot reach it): a batch whose first value is SLOW + ms
sleeps that many milliseconds, as service_helpers.SLOW_SERVER does."""

from __future__ import annotations

import time
from typing import Any

import onnxruntime as ort

SLOW = 1e4


class Slow(ort.InferenceSession):  # type: ignore[misc]
    def run(self, names: Any, feed: Any, *args: Any, **kwargs: Any) -> Any:
        first = float(next(iter(feed.values())).flat[0])
        if first >= SLOW:
            time.sleep((first - SLOW) / 1000)
        return super().run(names, feed, *args, **kwargs)


class Broken:
    """A session that cannot be made: the worker's start fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this session cannot be made")
