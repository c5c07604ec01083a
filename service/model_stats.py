"""Per level of each served model version: what Triton's statistics extension reports
(GET /v2/models[/{m}[/versions/{v}]]/stats), kept as plain counters (bounded: one entry per batch
size, at most `max_batch_size` of them)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def merge(self, other: Duration) -> None:
        self.count += other.count
        self.ns += other.ns

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class LevelStats:
    inference_count: int = 0  # samples answered successfully
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0  # wall clock, ms since the epoch, of the last success
    success: Duration = field(default_factory=Duration)  # arrival to answer, per successful request
    fail: Duration = field(default_factory=Duration)  # requests that reached a level and failed
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)  # per request: its batches' compute
    batches: dict[int, Duration] = field(default_factory=dict)  # batch size -> compute of such batches

    def request(
        self, ok: bool, samples: int, elapsed_s: float, queue_s: float | None, compute_s: float
    ) -> None:
        if not ok:
            self.fail.add(elapsed_s)
            return
        self.success.add(elapsed_s)
        self.queue.add(queue_s or 0.0)
        self.compute_infer.add(compute_s)
        self.inference_count += samples
        self.last_inference_ms = int(time.time() * 1000)

    def batch(self, samples: int, compute_s: float) -> None:
        self.execution_count += 1
        duration = self.batches.get(samples)
        if duration is None:
            duration = self.batches[samples] = Duration()
        duration.add(compute_s)

    def merge(self, other: LevelStats) -> None:
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for mine, theirs in zip(self._durations(), other._durations(), strict=True):
            mine.merge(theirs)
        for size, d in other.batches.items():
            self.batches.setdefault(size, Duration()).merge(d)

    def _durations(self) -> tuple[Duration, ...]:
        return self.success, self.fail, self.queue, self.compute_infer

    def triton(self) -> dict[str, Any]:
        """Triton's figures. onnxruntime's run includes copying inputs in and outputs out, so
        compute_input and compute_output count the same requests with 0 ns; it is all compute_infer."""
        none = {"count": self.compute_infer.count, "ns": 0}
        return {
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": none,
                "compute_infer": self.compute_infer.json(),
                "compute_output": none,
                "cache_hit": {"count": 0, "ns": 0},  # no response cache; perf_analyzer reads them
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.json(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batches.items())
            ],
        }


def model_stats(name: str, version: str, levels: Iterable[tuple[str, LevelStats]]) -> dict[str, Any]:
    """One `model_stats[]` entry: the model version's totals in Triton's shape, and the same figures
    per sparsity level under `sparsity_levels` (level name -> figures)."""
    total, per_level = LevelStats(), {}
    for level, stats in levels:
        total.merge(stats)
        per_level[level] = stats.triton()
    return {"name": name, "version": version, **total.triton(), "sparsity_levels": per_level}
