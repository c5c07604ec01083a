"""A served model: its manifest, the server's own per-request cost, and per level the session
runner, batcher and live profile (measured at warm-up, corrected online)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.manifest import CPU_PROVIDER, Level, Manifest
from model import levels
from service.errors import BadRequest, NotFound
from service.instances import Instances
from service.model_stats import LevelStats
from service.policy import Correction, Estimate, LevelProfile, LevelState
from service.runtime import LevelRunner

# Input values must be below 2**100 in magnitude as float32 (larger ones drive float32 arithmetic
# inside a model to NaN outputs). As a bound on the JSON numbers before rounding to float32, that is
# |x| < INPUT_LIMIT: exactly the numbers that round to less than 2**100 (ties round to even, 2**100).
INPUT_BOUND = np.float32(2.0**100)
INPUT_LIMIT = 2.0**100 - 2.0**75
# max (min) over all elements, NaN if any is: the ufunc's reduce itself, without ndarray.max's
# Python wrapper (numpy._core._methods), on the path of every request
_largest = np.maximum.reduce
_least = np.minimum.reduce


# Batch sizes warm-up measures for a level whose bundle has no table for the served provider.
UNPROFILED_BATCHES = (1, 8, 32, 128)


def profile_of(level: Level, provider: str = CPU_PROVIDER) -> LevelProfile:
    """The level's profile from the bundle's table for `provider`. Without one (a bundle exported on
    a CPU machine, served on CUDA) the points are placeholders at UNPROFILED_BATCHES: warm-up
    (service.loader.warm_up) measures every level on the served provider before the server is ready,
    and the policy runs on that measured profile."""
    table = level.latency_on(provider)
    if table:
        points = tuple(sorted((s.batch_size, s.median_ms) for s in table))
    else:
        points = tuple((b, float(b)) for b in UNPROFILED_BATCHES)
    interval = level.accuracy_interval
    low = None if interval is None else interval.low
    return LevelProfile(level.name, level.keep_fraction, level.accuracy, points or ((1, 1.0),), low)


@dataclass
class ServedLevel:
    level: Level
    runner: LevelRunner
    batcher: Instances  # one batcher per instance (service.instances): one by default
    profile: LevelProfile
    correction: Correction = field(default_factory=Correction)
    stats: LevelStats = field(default_factory=LevelStats)  # GET /v2/models/stats (service.model_stats)

    @property
    def name(self) -> str:
        return self.level.name

    def observe_compute(self, samples: int, compute_s: float) -> None:
        self.correction.observe_compute(self.profile.predict_ms(samples), compute_s * 1000)

    def state(self) -> LevelState:
        b = self.batcher.next()  # what waits ahead of a request arriving now is its instance's
        remaining, running = 0.0, b.running_batch  # one read: the level's thread may change it
        if running is not None:
            since, samples = running
            expected = self.correction.ratio * self.profile.predict_ms(samples)
            remaining = max(0.0, expected - (time.monotonic() - since) * 1000)
        return LevelState(self.profile, self.correction.ratio, b.queued_samples, remaining, b.idle)


def new_overhead() -> Estimate:
    """The server's own cost per request (ms), before warm-up measures it."""
    return Estimate(0.5, floor=0.01)


@dataclass
class ServedModel:
    manifest: Manifest
    path: Path
    levels: list[ServedLevel]  # most accurate (largest keep fraction) first
    default_level: str = "full"
    # the server's own cost per request (ms): parse, hops, encode; prior from warm-up
    overhead: Estimate = field(default_factory=new_overhead)
    _by_name: dict[str, ServedLevel] = field(init=False, repr=False)
    output_names: list[str] = field(init=False, repr=False)  # the manifest's, in its order
    row_shape: tuple[int, ...] = field(init=False, repr=False)  # one example's: the input's less batch

    def __post_init__(self) -> None:
        self._by_name = {lv.name: lv for lv in self.levels}
        self.output_names = [o.name for o in self.manifest.outputs]
        self.row_shape = tuple(self.manifest.input.shape[1:])

    @property
    def name(self) -> str:
        return self.manifest.name

    def level(self, name: str) -> ServedLevel:
        return self._by_name[name]

    def resolve_level(self, spec: object) -> ServedLevel:
        """A level by name ("full", "1/2") or keep fraction (0.5, "0.5"); NotFound (404) if none
        matches, as for an unknown model."""
        if isinstance(spec, str) and spec in self._by_name:
            return self._by_name[spec]
        fraction = _as_fraction(spec)
        if fraction is not None:
            for lv in self.levels:
                if math.isclose(lv.level.keep_fraction, fraction, rel_tol=1e-6):
                    return lv
        known = ", ".join(f"{lv.name!r} ({lv.level.keep_fraction:g})" for lv in self.levels)
        raise NotFound(f"model {self.name!r} has no sparsity level {spec!r}; levels: {known}")

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """The request's rows, or BadRequest saying what is wrong with them."""
        spec = self.manifest.input
        if x.dtype != np.float32:
            raise BadRequest(f"input {spec.name!r} must be FP32 (float32), got {x.dtype}")
        self._check_shape(x)
        if not _largest(abs(x), None) < INPUT_BOUND:  # also false for NaN (the max of an array with one)
            raise self._out_of_bounds()
        return np.ascontiguousarray(x)

    def rows_of_numbers(self, raw: np.ndarray) -> np.ndarray:
        """check_input for JSON numbers as parsed (int64 or float64, service.v2_codec.json_numbers):
        the same answers, the bound checked once and before the cast to float32 (|v| < INPUT_LIMIT
        is exactly what rounds below INPUT_BOUND; int64 is always within it), so the cast cannot
        overflow and needs no np.errstate."""
        self._check_shape(raw)
        # two reductions of the same kind, no abs(): no temporary array, and the second finds its
        # code warm (at concurrency 1 a request's numpy calls run on caches a run has just evicted)
        if raw.dtype.kind == "f" and not (
            _largest(raw, None) < INPUT_LIMIT and _least(raw, None) > -INPUT_LIMIT
        ):
            raise self._out_of_bounds()
        return raw.astype(np.float32)  # C-contiguous

    def _check_shape(self, x: np.ndarray) -> None:
        spec = self.manifest.input
        want = tuple(spec.shape[1:])
        if x.ndim != len(spec.shape) or tuple(x.shape[1:]) != want:
            raise BadRequest(
                f"input {spec.name!r} must have shape [batch, {', '.join(map(str, want))}], "
                f"got {list(x.shape)}"
            )
        if x.shape[0] < 1:
            raise BadRequest(f"input {spec.name!r} has no rows")

    def _out_of_bounds(self) -> BadRequest:
        return BadRequest(
            f"input {self.manifest.input.name!r} contains NaN or infinite values, "
            f"or values beyond ±{INPUT_LIMIT:.4g}"
        )


def _as_fraction(spec: object) -> float | None:
    """A requested level as a keep fraction (model.levels.parse), None if it is not one."""
    if not isinstance(spec, str | int | float):
        return None
    try:
        return float(levels.parse(spec))
    except levels.LevelError:
        return None
