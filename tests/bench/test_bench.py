"""The bench harness: the open-loop generator's schedule and its not waiting for answers, and a quick
run end to end (tiny model, real servers on 127.0.0.1) whose report must have every key, sane values."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from bench import load


def test_poisson_schedule_has_the_rate_and_stays_in_the_window() -> None:
    times = load.schedule(2000, 5.0, seed=3)
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < 5.0
    assert abs(len(times) - 10_000) < 4 * math.sqrt(10_000)  # Poisson count: within 4 sigma
    gaps = np.diff(times)
    assert abs(gaps.mean() - 1 / 2000) < 0.05 / 2000
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential gaps: coefficient of variation 1


def test_schedule_is_seeded_and_even_spacing_is_exact() -> None:
    np.testing.assert_array_equal(load.schedule(100, 2.0, seed=1), load.schedule(100, 2.0, seed=1))
    assert not np.array_equal(load.schedule(100, 2.0, seed=1), load.schedule(100, 2.0, seed=2))
    even = load.schedule(100, 2.0, poisson=False)
    np.testing.assert_allclose(even, np.arange(200) / 100)
    assert len(load.schedule(0, 2.0)) == 0 and len(load.schedule(10, 0)) == 0


@pytest.fixture()
def slow_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every POST after 200 ms."""
    started: list[str] = []
    stop = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/slow", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        started.append(f"http://127.0.0.1:{port}/slow")
        await stop.wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield started[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=10)


def test_open_loop_sends_on_schedule_without_waiting_for_answers(slow_server: str) -> None:
    send_times = load.schedule(100, 0.5, poisson=False)  # 50 requests over 0.5 s, each answered in 0.2 s
    target = load.Target(slow_server, [b"{}"])
    start = time.monotonic()
    run = load.run(load.open_loop(target, send_times))
    elapsed = time.monotonic() - start
    assert len(run.records) == 50 and all(r.status == 200 for r in run.records)
    assert elapsed < 2.0  # a closed loop of one would take 50 x 0.2 = 10 s
    assert run.max_lag_s < 0.2  # sent on time, not after earlier answers
    latencies = sorted(r.latency_s for r in run.records)
    assert latencies[0] >= 0.2 and latencies[len(latencies) // 2] < 0.6
    assert [r.sent_s for r in run.records] == pytest.approx(list(send_times))


def test_closed_loop_keeps_concurrency_requests_in_flight(slow_server: str) -> None:
    run = load.run(load.closed_loop(load.Target(slow_server, [b"{}"]), 8, 1.0, warmup_s=0.2))
    assert 8 * 4 <= len(run.records) <= 8 * 7  # 8 workers x ~5 answers of 0.2 s each in 1 s
    assert run.throughput() == pytest.approx(40, rel=0.3)
    assert 190 <= run.latency_ms(50) < 400


# ---------------------------------------------------------------------------------------------
# quick run end to end


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(v: Any) -> bool:
    return _number(v) and 0 <= v <= 1


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from bench.run import run_all

    out = tmp_path_factory.mktemp("bench")
    start = time.monotonic()
    run_all(out=out, quick=True)
    assert time.monotonic() - start < 240  # ~60-90 s on 2 cores with the models cached
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_quick_report_files(quick_report: tuple[dict[str, Any], Path]) -> None:
    report, out = quick_report
    md = (out / "REPORT.md").read_text()
    for image in ("levels.png", "overhead.png", "overload.png"):
        assert (out / image).stat().st_size > 1000 and f"]({image})" in md
    assert "## Targets" in md and "## Closing note" in md and "circuitserve bench --quick" in md
    assert report["meta"]["quick"] is True and report["meta"]["machine"]
    assert set(report) == {"meta", "models", "levels", "overhead", "peers", "overload", "noise", "targets"}


@pytest.mark.slow
def test_quick_report_levels(quick_report: tuple[dict[str, Any], Path]) -> None:
    levels = quick_report[0]["levels"]["digits"]
    assert list(levels) == ["full", "1/2", "1/4", "1/8"]
    for lv in levels.values():
        for key in ("accuracy", "accuracy_random_order", "accuracy_plain_training"):
            assert _fraction(lv[key])
        for key in ("latency_ms_b1", "latency_ms_b128", "speedup_b1", "speedup_b128"):
            assert _number(lv[key]) and lv[key] > 0
    assert levels["full"]["speedup_b128"] == 1.0
    assert levels["1/8"]["modules"] < levels["full"]["modules"]


@pytest.mark.slow
def test_quick_report_overhead(quick_report: tuple[dict[str, Any], Path]) -> None:
    for model in ("small", "large"):
        section = quick_report[0]["overhead"][model]
        for c in ("c1", "c8", "c64"):
            fig = section[c]
            assert fig["server"]["throughput_rps"] > 0 and fig["raw_onnxruntime"]["throughput_rps"] > 0
            assert fig["server"]["error_fraction"] == 0
            assert 0 < fig["server"]["p50_ms"] <= fig["server"]["p99_ms"]
            assert _number(fig["throughput_ratio"]) and fig["throughput_ratio"] > 0
            assert fig["mean_batch_size"] >= 1
            assert 0 < fig["compute_busy_fraction"] <= 1.05 and fig["in_server_onnxruntime_rps"] > 0
        assert section["c1"]["mean_batch_size"] == 1  # one request in flight: batches of one


@pytest.mark.slow
def test_quick_report_peers(quick_report: tuple[dict[str, Any], Path]) -> None:
    peers = quick_report[0]["peers"]
    for name in ("litserve", "bentoml"):
        entry = peers[name]
        assert entry["status"] == "ok" or entry["status"].startswith(("skipped", "failed"))
        if entry["status"] == "ok":
            assert entry["c64"]["throughput_rps"] > 0 and entry["c64"]["throughput_ratio"] > 0


@pytest.mark.slow
def test_quick_report_overload(quick_report: tuple[dict[str, Any], Path]) -> None:
    overload = quick_report[0]["overload"]
    assert overload["capacity"]["throughput_rps"] > 0 and overload["budget_ms"] == 50
    for factor in ("x1", "x2", "x4"):
        for mode in ("adaptive", "full_only"):
            phase = overload[factor][mode]
            assert phase["sent"] > 0
            assert _fraction(phase["within_budget"]) and _fraction(phase["answered"])
            assert phase["within_budget"] <= phase["answered"]
            assert phase["expected_accuracy"] is None or _fraction(phase["expected_accuracy"])
            assert sum(phase["level_mix"].values()) == pytest.approx(1, abs=0.01) or not phase["level_mix"]
        assert set(overload[factor]["full_only"]["level_mix"]) <= {"full"}


@pytest.mark.slow
def test_quick_report_targets(quick_report: tuple[dict[str, Any], Path]) -> None:
    targets = quick_report[0]["targets"]
    assert len(targets) == 4
    for t in targets:
        assert t["reached"] in (True, False, None) and t["goal"] and t["measured"]
        assert t["reached"] is True or t["why"]  # a target not reached says why
