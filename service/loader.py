"""Turning bundle directories into served models: verify, open sessions, build batchers, warm up."""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import Level, Manifest, load_bundle
from service.batcher import Batcher
from service.errors import BadRequest
from service.metrics import Metrics
from service.models import ServedLevel, ServedModel, profile_of
from service.policy import retry_after_s
from service.runtime import CUDA, LevelRunner, SessionConfig, SessionFactory, create_session
from service.settings import Settings

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The bundles cannot be served as configured."""


def verify_bundles(paths: list[Path]) -> list[tuple[Path, Manifest]]:
    """Read every manifest and check every level file's checksum (raises BundleError)."""
    bundles = [(Path(p), load_bundle(Path(p))) for p in paths]
    names = [m.name for _, m in bundles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StartupError(f"two bundles serve the same model name: {duplicates}")
    return bundles


def open_model(
    path: Path,
    manifest: Manifest,
    settings: Settings,
    metrics: Metrics,
    session_factory: SessionFactory = ort.InferenceSession,
) -> ServedModel:
    """Create one session per level (blocking: call it off the event loop)."""
    config = SessionConfig(
        provider=settings.provider,
        intra_op_threads=settings.intra_op_threads or manifest.profile.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
    )
    levels = []
    for level in manifest.sorted_levels():
        session = create_session(path / level.file, config, session_factory, _verified(path, level))
        if config.provider == "auto":  # one probe decides the provider for the rest
            config = SessionConfig("cuda" if session.get_providers()[0] == CUDA else "cpu", *_threads(config))
        runner = LevelRunner(session, manifest.input.name, [o.name for o in manifest.outputs])
        log.info("%s level %s: %s on %s", manifest.name, level.name, level.file, runner.provider)
        levels.append(_served_level(manifest.name, level, runner, settings, metrics))
    model = ServedModel(manifest, path, levels)
    if settings.default_level is not None:
        try:
            model.default_level = model.resolve_level(settings.default_level).name
        except BadRequest as exc:
            raise StartupError(f"default_level: {exc}") from None
    else:
        model.default_level = levels[0].name
    return model


def _verified(bundle: Path, level: Level) -> bytes:
    """The level file's bytes, checked again against the manifest: the session is made from these."""
    data = (bundle / level.file).read_bytes()
    if hashlib.sha256(data).hexdigest() != level.sha256:
        raise StartupError(
            f"{bundle}: level {level.name!r} file {level.file} fails its checksum: "
            "the file changed after export (or after the bundle was verified)"
        )
    return data


def _threads(config: SessionConfig) -> tuple[int, int]:
    return config.intra_op_threads, config.inter_op_threads


def _served_level(
    model: str, level: Level, runner: LevelRunner, settings: Settings, metrics: Metrics
) -> ServedLevel:
    served: ServedLevel

    def on_batch(samples: int, compute_s: float) -> None:
        served.observe_compute(samples, compute_s)
        metrics.observe_batch(model, level.name, samples, compute_s)

    batcher = Batcher(
        runner,
        name=f"{model}/{level.name}",
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_queue_delay_ms / 1000,
        max_queue_samples=settings.max_queue_size,
        on_batch=on_batch,
        retry_after=lambda: retry_after_s(served.state(), settings.max_batch_size),
        max_overrun_s=settings.request_timeout_ms / 1000,
    )
    served = ServedLevel(level, runner, batcher, profile_of(level))
    metrics.add_level(model, level.name, lambda: batcher.queued_samples)
    return served


def warm_up(level: ServedLevel, shape: list[int], runs: int, max_batch_size: int) -> None:
    """Run a level at its profiled batch sizes; seed its correction with the times seen (blocking)."""
    rng = np.random.default_rng(0)
    sizes = sorted({min(b, max_batch_size) for b, _ in level.profile.latency_ms} | {1, max_batch_size})
    for b in sizes:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        level.runner(x)  # the first run allocates; not timed
        seen = []
        for _ in range(runs):
            t0 = time.perf_counter()
            level.runner(x)
            seen.append((time.perf_counter() - t0) * 1000)
        level.correction.observe(level.profile.predict_ms(b), statistics.median(seen))
