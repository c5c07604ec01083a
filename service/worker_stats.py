"""GET /v1/stats over every worker of `serve --workers N`.

Percentiles do not add up, and shipping every event between processes would cost every request,
so a worker answering /v1/stats asks the others for a mergeable partial of their recent traffic:
it writes the time into `stats-wanted`; each worker, on its next 0.1 s tick, sees the file change
and writes `stats-<index>.json` (per window: counts, outcomes, level counts, budget counts, and 201
quantiles of its latencies and prediction errors); the asker waits for every ready worker's answer
(at most `WAIT_S`; `workers.answered` says how many came) and merges them. Counts and rates are
exact sums; percentiles come from the merged quantiles, within about half a percentile rank. Nothing
is written while nobody asks.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.stats import WINDOWS_S, RecentStats, level_counts, predicted_errors

WAIT_S = 1.0
_POINTS = np.linspace(0, 1, 201)


class SharedStats(RecentStats):
    def __init__(self, directory: Path, index: int, count: int) -> None:
        super().__init__()
        self.directory, self.index, self.count = directory, index, count
        self.wanted = directory / "stats-wanted"
        self._seen = 0

    def snapshot(self, queue_depth: dict[str, dict[str, int]]) -> dict[str, Any]:
        asked = time.time()
        _write(self.wanted, {"at": asked})
        self._write_partial(queue_depth)
        others = [i for i in range(self.count) if i != self.index]
        give_up = time.monotonic() + WAIT_S
        while True:  # blocks this worker's loop, bounded: /v1/stats is an operator's call
            parts = {i: _read(self.directory / f"stats-{i}.json") for i in others}
            fresh = [p for p in parts.values() if p is not None and p["at"] >= asked]
            waiting = [i for i in others if (self.directory / f"ready-{i}").exists()]
            if len(fresh) >= len(waiting) or time.monotonic() > give_up:
                break
            time.sleep(0.01)
        own = _read(self.directory / f"stats-{self.index}.json")
        return merge([p for p in [own, *fresh] if p is not None], self.count)

    def answer_if_asked(self, queue_depth: Any) -> None:
        """Called each tick: write this worker's partial if /v1/stats asked since the last one."""
        try:
            seen = os.stat(self.wanted).st_mtime_ns
        except FileNotFoundError:
            return
        if seen != self._seen:
            self._seen = seen
            self._write_partial(queue_depth())

    def _write_partial(self, queue_depth: dict[str, dict[str, int]]) -> None:
        _write(self.directory / f"stats-{self.index}.json", self.partial(queue_depth))

    def partial(self, queue_depth: dict[str, dict[str, int]]) -> dict[str, Any]:
        uptime, per_window = self.windows()
        windows = {}
        for name, counts, ok in per_window:
            budgeted = ok.budget_met[ok.budget_met >= 0]
            windows[name] = {
                **counts,
                "latency_ms": _quantiles(ok.latency_s * 1000),
                "prediction_error_ms": _quantiles(predicted_errors(ok)),
                "levels": {m: dict(c) for m, c in level_counts(ok).items()},
                "budget": [int(budgeted.sum()), len(budgeted)],
            }
        return {"at": time.time(), "pid": os.getpid(), "uptime_s": uptime, "windows": windows,
                "queue_depth": queue_depth}  # fmt: skip


def merge(parts: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """The workers' partials as one /v1/stats body (the single-process shape, plus `workers`)."""
    windows = {}
    for w in (f"{s}s" for s in WINDOWS_S):
        ws = [p["windows"][w] for p in parts]
        outcomes: Counter[str] = Counter()
        levels: dict[str, Counter[str]] = {}
        for x in ws:
            outcomes.update(x["outcomes"])
            for m, c in x["levels"].items():
                levels.setdefault(m, Counter()).update(c)
        met, budgeted = (sum(x["budget"][i] for x in ws) for i in (0, 1))
        windows[w] = {
            "requests": sum(x["requests"] for x in ws),
            "requests_per_s": sum(x["requests_per_s"] for x in ws),
            "samples_per_s": sum(x["samples_per_s"] for x in ws),
            "outcomes": dict(outcomes),
            "latency_ms": _percentiles([x["latency_ms"] for x in ws], (50, 95, 99)),
            "level_mix": {
                m: {lv: n / sum(c.values()) for lv, n in sorted(c.items())} for m, c in levels.items()
            },
            "prediction_error_ms": _percentiles([x["prediction_error_ms"] for x in ws], (1, 50, 99)),
            "budget_met_fraction": met / budgeted if budgeted else None,
        }
    depth: dict[str, dict[str, int]] = {}
    for p in parts:
        for m, lvs in p["queue_depth"].items():
            for lv, n in lvs.items():
                depth.setdefault(m, {}).setdefault(lv, 0)
                depth[m][lv] += n
    return {
        "uptime_s": max((p["uptime_s"] for p in parts), default=0.0),
        "windows": windows,
        "queue_depth": depth,
        "workers": {"count": count, "answered": len(parts), "pids": sorted(p["pid"] for p in parts)},
    }


def _quantiles(values: np.ndarray) -> dict[str, Any]:
    q = np.quantile(values, _POINTS).tolist() if len(values) else []
    return {"n": len(values), "q": q}


def _percentiles(sketches: list[dict[str, Any]], qs: tuple[int, ...]) -> dict[str, float | None]:
    total = sum(s["n"] for s in sketches)
    if not total:
        return {f"p{q}": None for q in qs}
    points = [
        np.interp(np.linspace(0, 1, min(s["n"], max(2, round(4000 * s["n"] / total)))), _POINTS, s["q"])
        for s in sketches
        if s["n"]
    ]
    merged = np.concatenate(points)
    return {f"p{q}": float(np.percentile(merged, q)) for q in qs}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers never see half a file


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None
