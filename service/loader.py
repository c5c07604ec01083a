"""Turning bundle directories into served models: verify, open sessions, build batchers, warm up."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import Level, Manifest, load_bundle
from service import runtime
from service.batcher import Batcher
from service.errors import ServiceError
from service.instances import Instances, share
from service.metrics import Metrics
from service.models import ServedLevel, ServedModel, new_overhead, profile_of
from service.policy import Correction, Estimate, retry_after_s
from service.runtime import (
    CUDA,
    LevelRunner,
    Session,
    SessionConfig,
    SessionFactory,
    Watchdog,
    create_session,
)
from service.settings import Settings
from service.v2_codec import encode_response, parse_request

log = logging.getLogger(__name__)
# A level whose last batch took at most this runs a lone request on the event loop (service.batcher),
# saving the thread hop: two thread wake-ups, each waiting for a core on a busy machine (a median of
# ~0.1 ms, a p90 of ~2 ms here beside a training job) and ~0.2 ms more CPU per request (the run on a
# cold core). 3 ms: the digits full level (0.6-1.1 ms a row here, with spikes past 2 ms) stays
# inline. Only plain onnxruntime sessions, under a watchdog that ends a run past INLINE_BOUND_S
# (service.runtime): a run that stalls pauses the loop, its probes and a drain that long; the
# level then keeps to its thread for a while, longer after each stall (service.batcher). A session
# whose run is overridden (a subclass, a fake) is never run inline.
INLINE_MAX_S = 0.003
INLINE_BOUND_S = 0.02


class StartupError(RuntimeError):
    """The bundles cannot be served as configured."""


def verify_bundles(paths: list[Path]) -> list[tuple[Path, Manifest]]:
    """Read every manifest and check every level file's checksum (raises BundleError)."""
    bundles = [(Path(p), load_bundle(Path(p))) for p in dict.fromkeys(Path(p).resolve() for p in paths)]
    names = [f"{m.name} version {m.version}" for _, m in bundles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StartupError(f"two bundles serve the same model name and version: {duplicates}")
    return bundles


def open_model(
    path: Path,
    manifest: Manifest,
    settings: Settings,
    metrics: Metrics,
    session_factory: SessionFactory = ort.InferenceSession,
) -> ServedModel:
    """Create one session per level (blocking: call it off the event loop). FP16 levels are served
    on CUDA only: on CPU onnxruntime runs FP16 through inserted casts, slower than the FP32 twin."""
    threads = settings.intra_op_threads or manifest.profile.intra_op_threads
    if settings.intra_op_threads is None and settings.worker_count() > 1:
        threads = min(threads, settings.core_share())  # workers x threads <= cores
    config = SessionConfig(
        provider=settings.provider,
        intra_op_threads=threads,
        inter_op_threads=settings.inter_op_threads,
        cuda_graph=settings.cuda_graphs,
    )
    levels, skipped, watchdog = [], [], Watchdog(INLINE_BOUND_S)
    overhead = new_overhead()  # the model's, shared with its batchers (Batcher loop_cost_s)
    for level in manifest.sorted_levels():
        if level.precision == "fp16" and config.provider == "cpu":
            skipped.append(level.name)
            continue
        model_bytes = _verified(path, level)
        session = create_session(path / level.file, config, session_factory, model_bytes)
        if config.provider == "auto":  # one probe decides the provider for the rest
            config = replace(config, provider="cuda" if session.get_providers()[0] == CUDA else "cpu")
            if level.precision == "fp16" and config.provider == "cpu":
                skipped.append(level.name)
                continue
        if settings.intra_op_threads is None and config.provider == "cpu":
            session = _fastest_threads(
                path / level.file, model_bytes, session, config, manifest, settings, session_factory
            )
        # inline on CPU only: a GPU run's time is the device's, and not the loop's to spend
        runner = _runner(session, manifest, settings, watchdog if config.provider == "cpu" else None)
        log.info(
            "%s level %s: %s on %s%s",
            manifest.name,
            level.name,
            level.file,
            runner.provider,
            ", batches padded to powers of two" if runner.buckets else "",
        )
        if not level.latency_on(runner.provider):
            log.info(
                "%s level %s: no %s profile in the bundle, measured at warm-up",
                manifest.name,
                level.name,
                runner.provider,
            )
        levels.append(_served_level(manifest.name, level, runner, settings, metrics, overhead))
    if skipped:
        log.info("%s: FP16 levels %s not served on CPU (FP32 twins are)", manifest.name, ", ".join(skipped))
    if not levels:
        raise StartupError(f"{manifest.name}: only FP16 levels, which are served on CUDA only")
    model = ServedModel(manifest, path, levels, overhead=overhead)
    if settings.default_level is not None:
        try:
            model.default_level = model.resolve_level(settings.default_level).name
        except ServiceError as exc:
            raise StartupError(f"default_level: {exc}") from None
    else:
        model.default_level = levels[0].name
    return model


def _runner(
    session: Session, manifest: Manifest, settings: Settings, watchdog: Watchdog | None
) -> LevelRunner:
    """On CUDA: I/O binding into device buffers, batches bucketed unless batch_buckets is false, and
    CUDA graphs if asked for. On CPU: session.run, bucketed only if batch_buckets is true."""
    cuda = session.get_providers()[0] == CUDA
    buckets = cuda if settings.batch_buckets is None else settings.batch_buckets
    return LevelRunner(
        session,
        manifest.input.name,
        [o.name for o in manifest.outputs],
        buckets=buckets,
        bind_device=runtime.CUDA_DEVICE if cuda else None,
        cuda_graph=cuda and settings.cuda_graphs,
        watchdog=watchdog,
    )


def _verified(bundle: Path, level: Level) -> bytes:
    """The level file's bytes, checked again against the manifest: the session is made from these."""
    data = (bundle / level.file).read_bytes()
    if hashlib.sha256(data).hexdigest() != level.sha256:
        raise StartupError(
            f"{bundle}: level {level.name!r} file {level.file} fails its checksum: "
            "the file changed after export (or after the bundle was verified)"
        )
    return data


def _fastest_threads(
    file: Path,
    model_bytes: bytes,
    session: Session,
    config: SessionConfig,
    manifest: Manifest,
    settings: Settings,
    factory: SessionFactory,
) -> Session:
    """The session with the intra-op thread count that runs a max-size batch fastest here, of
    1 .. the profiled count (capped at the CPUs); fewer threads unless more are 10% faster (a
    second thread buys little on a small level, and the cores serve HTTP too)."""
    most = min(config.intra_op_threads, os.cpu_count() or 1)
    if most <= 1:
        return session if config.intra_op_threads == 1 else _session(file, model_bytes, config, 1, factory)
    x = np.random.default_rng(0).standard_normal((settings.max_batch_size, *manifest.input.shape[1:]))
    feed = {manifest.input.name: x.astype(np.float32)}
    best, best_ms = session, _median_ms(session, feed, settings.warmup_runs)
    for threads in range(most - 1, 0, -1):
        candidate = _session(file, model_bytes, config, threads, factory)
        ms = _median_ms(candidate, feed, settings.warmup_runs)
        if ms <= best_ms * 1.1:
            best, best_ms = candidate, min(ms, best_ms)
    return best


def _session(
    file: Path, model_bytes: bytes, config: SessionConfig, threads: int, factory: SessionFactory
) -> Session:
    return create_session(file, replace(config, intra_op_threads=threads), factory, model_bytes)


def _median_ms(session: Session, feed: dict[str, np.ndarray], runs: int) -> float:
    session.run(None, feed)  # the first run allocates
    seen = []
    for _ in range(max(3, runs)):
        t0 = time.perf_counter()
        session.run(None, feed)
        seen.append((time.perf_counter() - t0) * 1000)
    return statistics.median(seen)


def _served_level(
    model: str, level: Level, runner: LevelRunner, settings: Settings, metrics: Metrics, overhead: Estimate
) -> ServedLevel:
    served: ServedLevel

    def on_batch(samples: int, compute_s: float) -> None:
        served.observe_compute(samples, compute_s)
        served.stats.batch(samples, compute_s)
        metrics.observe_batch(model, level.name, samples, compute_s)

    count = settings.level_instances
    batchers = [
        Batcher(
            runner,
            name=f"{model}/{level.name}" + (f"#{i}" if count > 1 else ""),
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_queue_delay_ms / 1000,
            max_queue_samples=share(settings.max_queue_size, count),
            on_batch=on_batch,
            retry_after=lambda: retry_after_s(served.state(), settings.max_batch_size),
            max_overrun_s=settings.request_timeout_ms / 1000,
            inline_max_s=INLINE_MAX_S if runner.inline is not None else 0.0,
            run_inline=runner.inline,
            cost_s=lambda n: served.correction.ratio * served.profile.predict_ms(n) / 1000,
            loop_cost_s=lambda: overhead.value / 1000,
        )
        for i in range(count)
    ]
    instances = Instances(batchers)
    served = ServedLevel(level, runner, instances, profile_of(level, runner.provider))
    metrics.add_level(model, level.name, lambda: instances.queued_samples)
    return served


def warm_up(level: ServedLevel, shape: list[int], runs: int, max_batch_size: int) -> None:
    """Measure the level on this machine (blocking; run it on the level's inference thread): its
    latency profile at the profiled batch sizes (capped at `max_batch_size`, with 1 and the max)
    replaces the export's, and the online correction starts from 1.0. Small batches run more
    often (up to ~10 ms each size), so a noisy run cannot decide which level is fastest at idle."""
    rng = np.random.default_rng(0)
    sizes = sorted({min(b, max_batch_size) for b, _ in level.profile.latency_ms} | {1, max_batch_size})
    if level.runner.buckets:  # every bucket runs (and, with CUDA graphs, is captured) before ready
        sizes = sorted(
            set(sizes) | {1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size}
        )
    points = []
    for b in sizes:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        t0 = time.perf_counter()
        level.runner(x)  # the first run allocates; it only sizes the repeats
        first_ms = (time.perf_counter() - t0) * 1000
        seen = []
        for _ in range(max(runs, min(30, math.ceil(10 / max(first_ms, 1e-3))))):
            t0 = time.perf_counter()
            level.runner(x)
            seen.append((time.perf_counter() - t0) * 1000)
        points.append((b, statistics.median(seen)))
    level.profile = replace(level.profile, latency_ms=tuple(points))
    level.correction = Correction()


async def measure_overhead(model: ServedModel, runs: int = 20) -> None:
    """Seed the model's overhead estimate (the server's own cost per request, ms): a 1-row v2 JSON
    request decoded, run through the fastest level's batcher, and encoded, less its compute. What
    HTTP adds is learnt online from real answers (Engine.answered)."""
    level = min(model.levels, key=lambda lv: lv.profile.predict_ms(1))
    shape = model.manifest.input.shape[1:]
    tensor = {"name": model.manifest.input.name, "shape": [1, *shape], "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": [0.0] * math.prod(shape)}]}).encode()
    seen = []
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = model.check_input(parse_request(body, None).inputs[0].array)
        result = await level.batcher.submit(rows, deadline=time.monotonic() + 5)
        encode_response({"model_name": model.name}, [(n, a, False) for n, a in result.outputs.items()])
        seen.append((time.perf_counter() - t0 - result.compute_s) * 1000)
        await asyncio.sleep(0)
    model.overhead.value = max(statistics.median(seen), model.overhead.floor)
