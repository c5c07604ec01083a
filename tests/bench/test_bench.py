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
from bench.report import cpu_times, steal_share


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
    """An HTTP server on 127.0.0.1 (aiohttp's, not ours): POST /slow answers after 200 ms; /echo
    answers the body back in chunks (chunked encoding); /close answers, then closes the connection;
    /status/N answers N; /hang answers after 2 s; /tagged/T answers after 20 ms with T and how many
    /tagged/T requests were in flight when it arrived (itself included)."""
    started: list[str] = []
    stop = asyncio.Event()
    in_flight: dict[str, int] = {}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 7):
            await resp.write(body[i : i + 7])
        await resp.write_eof()
        return resp

    async def close(request: web.Request) -> web.Response:
        await request.read()
        resp = web.json_response({"closing": True})
        resp.force_close()
        return resp

    async def status(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def tagged(request: web.Request) -> web.Response:
        await request.read()
        tag = request.match_info["tag"]
        in_flight[tag] = in_flight.get(tag, 0) + 1
        seen = in_flight[tag]
        await asyncio.sleep(0.02)
        in_flight[tag] -= 1
        return web.json_response({"tag": tag, "in_flight": seen})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(2)  # far past the client's timeout in the test, short for the teardown
        return web.Response(text="too late")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/slow", handler)
        app.router.add_post("/echo", echo)
        app.router.add_post("/close", close)
        app.router.add_post("/status/{code}", status)
        app.router.add_post("/hang", hang)
        app.router.add_post("/tagged/{tag}", tagged)
        runner = web.AppRunner(app, keepalive_timeout=0.3)  # idle connections closed quickly
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
    loop.close()  # an unclosed loop is a ResourceWarning, an error under the house's warning filter


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
    # asyncio may fire the server's 0.2 s timer up to its clock resolution early: 2 ms of slack
    assert latencies[0] >= 0.198 and latencies[len(latencies) // 2] < 0.6
    assert [r.sent_s for r in run.records] == pytest.approx(list(send_times))


def test_generator_reads_chunked_bodies_reconnects_after_close_and_records_statuses(slow_server: str) -> None:
    base = slow_server.removesuffix("/slow")
    bodies = [json.dumps({"i": i, "pad": "x" * i}).encode() for i in range(40)]
    run = load.run(
        load.closed_loop(load.Target(base + "/echo", bodies), 4, 0.5, warmup_s=0.0, keep_bodies=True)
    )
    assert len(run.ok) > 20 and {r.body for r in run.ok} <= set(bodies)  # chunked bodies come back whole
    closing = load.run(load.closed_loop(load.Target(base + "/close", [b"{}"]), 2, 0.3, warmup_s=0.0))
    assert len(closing.records) > 4 and closing.error_fraction() == 0  # a new connection after each close
    refused = load.run(load.closed_loop(load.Target(base + "/status/503", [b"{}"]), 1, 0.2, warmup_s=0.0))
    assert refused.records and {r.status for r in refused.records} == {503}


def test_closed_loop_splits_its_connections_evenly_over_replicas(slow_server: str) -> None:
    base = slow_server.removesuffix("/slow")
    replicas = [load.Target(f"{base}/tagged/{tag}", [b"{}"]) for tag in ("a", "b")]
    run = load.run(load.closed_loop(replicas, 6, 0.5, warmup_s=0.0, keep_bodies=True))
    answers = [json.loads(r.body) for r in run.ok if r.body is not None]
    assert run.error_fraction() == 0 and len(answers) == len(run.records) > 40
    for tag in ("a", "b"):  # each replica got its own URL, three workers' worth of requests at a time
        mine = [a for a in answers if a["tag"] == tag]
        assert 0.35 < len(mine) / len(answers) < 0.65
        assert max(a["in_flight"] for a in mine) == 3


def test_generator_reconnects_when_the_server_closed_an_idle_connection(slow_server: str) -> None:
    target = load.Target(slow_server.removesuffix("/slow") + "/status/200", [b"{}"])
    run = load.run(load.open_loop(target, [0.0, 0.05, 0.8, 0.85], connections=1))  # idle 0.75 s > 0.3 s
    assert [r.status for r in run.records] == [200] * 4


def test_generator_gives_up_on_a_server_that_does_not_answer(slow_server: str) -> None:
    target = load.Target(slow_server.removesuffix("/slow") + "/hang", [b"{}"])
    start = time.monotonic()
    run = load.run(load.open_loop(target, [0.0, 0.01, 0.02], connections=1, timeout_s=0.3))
    assert [r.status for r in run.records] == [load.TRANSPORT_ERROR] * 3
    # the timeout counts from the send, waiting for the one connection included (not 3 x 0.3 s)
    assert max(r.latency_s for r in run.records) < 0.6 and time.monotonic() - start < 2.0
    nobody = load.Target(f"http://127.0.0.1:{_closed_port()}/x", [b"{}"])
    assert [r.status for r in load.run(load.open_loop(nobody, [0.0])).records] == [load.TRANSPORT_ERROR]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now


def test_closed_loop_keeps_concurrency_requests_in_flight(slow_server: str) -> None:
    run = load.run(load.closed_loop(load.Target(slow_server, [b"{}"]), 8, 1.0, warmup_s=0.2))
    assert 8 * 4 <= len(run.records) <= 8 * 7  # 8 workers x ~5 answers of 0.2 s each in 1 s
    assert run.throughput() == pytest.approx(40, rel=0.3)
    assert 190 <= run.latency_ms(50) < 400


def test_replicas_of_circuitserve_run_side_by_side(trained_bundle: Path, tmp_path: Path) -> None:
    from bench.measure import circuitserve_api, our_server
    from bench.peers import _measure
    from bench.plan import QUICK
    from export.manifest import read_manifest

    manifest = read_manifest(trained_bundle)
    examples = np.random.default_rng(0).uniform(0, 16, (20, *manifest.input.shape[1:])).astype(np.float32)
    figures = _measure(
        lambda folder: our_server(trained_bundle, folder),
        circuitserve_api(manifest.name),
        examples,
        QUICK,
        tmp_path,
        (8,),
        replicas=2,
    )
    assert figures[8]["error_fraction"] == 0 and figures[8]["throughput_rps"] > 0
    assert figures[8]["server_cores"] > 0  # the CPU of both instances
    for i in (0, 1):  # one log each: two servers ran
        assert (tmp_path / f"replica-{i}" / "circuitserve.log").is_file()


def test_accuracy_spread_and_target() -> None:
    from bench import report
    from bench.accuracy import spread

    s = spread([0.98, 0.99, 1.0])
    assert s == {"mean": 0.99, "std": 0.01, "per_seed": [0.98, 0.99, 1.0]}
    assert spread([0.5])["std"] == 0.0

    def section(full: list[float], eighth: list[float]) -> dict[str, Any]:
        levels = {"full": spread(full), "1/2": spread(full), "1/8": spread(eighth)}
        return {"seeds": [0, 1, 2], "levels": levels, "baselines": {"svc": spread([0.99, 0.99, 0.99])}}

    good = report._accuracy_target("digits", section([0.99, 0.99, 0.99], [0.985, 0.98, 0.985]))
    assert good["reached"] is True and good["why"] == "" and "98.5%" in good["goal"]
    low = report._accuracy_target("digits", section([0.98, 0.98, 0.98], [0.98, 0.98, 0.98]))
    assert low["reached"] is False and "svc" in low["why"] and "99.00% ± 0.00%" in low["why"]
    drop = report._accuracy_target("mnist1d", section([0.97, 0.97, 0.97], [0.95, 0.95, 0.96]))
    assert drop["reached"] is False and "1/8" in drop["measured"] and "1.7 below" in drop["measured"]
    assert report._accuracy_target("toy", section([1.0] * 3, [1.0] * 3))["reached"] is False  # no goal


def test_scale_out_target_and_table_from_figures() -> None:
    from bench import markdown, report

    def run(rps: float, p99: float, cores: float) -> dict[str, float]:
        return {"throughput_rps": rps, "p99_ms": p99, "server_cores": cores}

    pairs = [
        {"peer": run(900.0, 150.0, 1.8), "circuitserve": run(2400.0, 40.0, 1.8), "throughput_ratio": 2.67}
    ]
    s = {"replicas": 2, "concurrency": 64, "peer": "litserve", "status": "ok", "pairs": pairs}
    s |= {"throughput_rps": 900.0, "p99_ms": 150.0, "circuitserve_throughput_rps": 2400.0}
    s |= {"circuitserve_p99_ms": 40.0, "throughput_ratio": 2.67}
    target = report._scale_out_target({"scale_out": s})
    assert target["reached"] is True and "2 instances" in target["goal"] and target["why"] == ""
    slower = s | {"throughput_ratio": 1.5}
    missed = report._scale_out_target({"scale_out": slower})
    assert missed["reached"] is False  # 1.8 cores over 2400 and 900 requests/s:
    assert "0.75 ms of CPU per request against litserve's 2.00" in missed["why"]
    worse_p99 = s | {"circuitserve_p99_ms": 200.0}
    assert report._scale_out_target({"scale_out": worse_p99})["reached"] is False
    skipped = {"replicas": 2, "concurrency": 64, "status": "skipped: no peer measured"}
    assert report._scale_out_target({"scale_out": skipped})["reached"] is None
    table = "\n".join(markdown.scale_out({"scale_out": s}))
    assert "| 1 | 900.0 | 150.0 | 2400.0 | 40.00 | 2.67 |" in table and "| median |" in table


def test_overhead_target_is_judged_by_its_ratio() -> None:
    from bench import report

    def overhead(ratio: float) -> dict[str, Any]:
        c64 = {"throughput_ratio": ratio, "raw_onnxruntime": {"throughput_rps": 1000.0}}
        c64 |= {"server": {"throughput_rps": 1000.0 * ratio}, "compute_busy_fraction": 0.5}
        c64 |= {"in_server_onnxruntime_rps": 900.0, "mean_batch_size": 8.0}
        return {"c64": c64, "model": "small", "level": "full"}

    above = report._overhead_target("small", overhead(report.OVERHEAD_RATIO + 0.01))
    below = report._overhead_target("small", overhead(report.OVERHEAD_RATIO - 0.01))
    assert above["reached"] is True and above["why"] == ""
    assert below["reached"] is False and "batches of 8.0" in below["why"]


def test_overload_target_is_the_answers_server_time_within_budget_at_4x() -> None:
    from bench import report

    def at_4x(met: float | None, agrees: float | None = 1.0) -> dict[str, Any]:
        adaptive: dict[str, Any] = {"server_met_budget": met, "budget_met_agrees": agrees}
        adaptive |= {"answered": 0.4, "shed": 0.6}
        adaptive |= {"level_mix": {"1/8": 1.0}, "expected_accuracy": 0.68, "within_budget": 0.3, "sent": 100}
        adaptive |= {"offered_rps": 400.0, "failures": {}, "server_cores": 1.2, "client_cores": 0.4}
        adaptive |= {"prediction_error_ms": {"p50": 1.0, "p99": 30.0}}
        return {"overload": {"budget_ms": 50.0, "x4": {"adaptive": adaptive}}}

    assert report._overload_target(at_4x(0.995))["reached"] is True
    missed = report._overload_target(at_4x(0.98))
    assert missed["reached"] is False and "p50 / p99 1.0 / 30.0" in missed["why"]
    assert report._overload_target(at_4x(0.995, agrees=0.99))["reached"] is False
    silent = report._overload_target(at_4x(None, None))
    assert silent["reached"] is False and silent["measured"].startswith("no answers") and silent["why"]
    assert "≥ 99% of answers with measured server time" in silent["goal"]


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
    # ~4 minutes on 2 cores from a fresh clone: three tiny families trained, every section, peers skipped
    assert time.monotonic() - start < 480
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_quick_report_files(quick_report: tuple[dict[str, Any], Path]) -> None:
    report, out = quick_report
    md = (out / "REPORT.md").read_text()
    for image in ("levels.png", "overhead.png", "overload.png"):
        assert (out / image).stat().st_size > 1000 and f"]({image})" in md
    assert "## Targets" in md and "## Closing note" in md and "circuitserve bench --quick" in md
    assert f"Why this model: {report['meta']['overload_choice']}" in md
    assert report["meta"]["quick"] is True and report["meta"]["machine"]
    assert set(report) == {
        *("meta", "models", "levels", "accuracy", "overhead", "peers", "scale_out", "overload"),
        *("latency_floor", "families", "workers", "perf_analyzer"),
        *("noise", "targets"),
    }


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
def test_quick_report_accuracy_over_seeds(quick_report: tuple[dict[str, Any], Path]) -> None:
    from model.data import load_dataset

    a = quick_report[0]["accuracy"]["digits"]
    assert a["seeds"] == [0, 1] and a["test_examples"] == len(load_dataset("digits", 0).test.y)
    assert list(a["levels"]) == ["full", "1/2", "1/4", "1/8"] and list(a["random_order"]) == list(a["levels"])
    assert set(a["baselines"]) == {"svc", "mlp", "logistic"}
    for s in [*a["levels"].values(), *a["random_order"].values(), *a["baselines"].values()]:
        assert len(s["per_seed"]) == 2 and all(_fraction(v) for v in s["per_seed"])
        assert s["mean"] == pytest.approx(sum(s["per_seed"]) / 2, abs=1e-4) and s["std"] >= 0
    assert a["baselines"]["svc"]["mean"] > 0.97  # scikit-learn's SVC on digits: a strong baseline
    # seed 0 is the levels section's own checkpoint
    assert a["levels"]["full"]["per_seed"][0] == quick_report[0]["levels"]["digits"]["full"]["accuracy"]
    md = (quick_report[1] / "REPORT.md").read_text()
    assert "Accuracy over seeds" in md and "| SVC(gamma=0.001) |" in md


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
    for name in ("litserve", "bentoml", "triton"):
        entry = peers[name]
        assert entry["status"] == "ok" or entry["status"].startswith(("skipped", "failed"))
        if entry["status"] == "ok":
            assert entry["c64"]["throughput_rps"] > 0 and entry["c64"]["throughput_ratio"] > 0
    scale_out = quick_report[0]["scale_out"]
    assert scale_out["replicas"] == 2 and scale_out["concurrency"] == 64
    assert scale_out["status"] == "ok" or scale_out["status"].startswith(("skipped", "failed"))
    if scale_out["status"] == "ok":
        assert scale_out["peer"] in peers and scale_out["throughput_ratio"] > 0
        for pair in scale_out["pairs"]:
            assert pair["circuitserve"]["error_fraction"] == 0 and pair["peer"]["throughput_rps"] > 0


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
        adaptive = overload[factor]["adaptive"]
        assert adaptive["budget_met_agrees"] in (None, 1.0)  # budget_met is the measured server time
        assert adaptive["server_met_budget"] is None or _fraction(adaptive["server_met_budget"])


def test_quick_report_latency_floor(quick_report: tuple[dict[str, Any], Path]) -> None:
    floor = quick_report[0]["latency_floor"]
    for level in floor["levels"]:
        for c in ("1", "8"):
            cell = floor["cells"][level][c]
            for who in ("circuitserve", "bare_asgi", "raw_onnxruntime"):
                assert cell[who]["p50_ms"] > 0 and cell[who]["p99_ms"] >= cell[who]["p50_ms"]
    assert floor["largest_request"]["statuses"] == [200]
    assert floor["largest_request"]["rss_after_mb"] > 0
    assert set(floor["goals"]) >= {"p50_vs_bare_at_c1", "dial_fraction_of_raw"}
    assert floor["http_floor"]["error_fraction"] == 0 and floor["http_floor"]["requests"] > 0
    bare = floor["cells"]["full"]["1"]["bare_asgi"]["p50_ms"]
    assert 0 < floor["http_floor"]["p50_ms"] < bare  # an answer without parse or compute is cheaper
    # session.run inside each server, from its c=1 answers
    assert set(floor["served_compute_ms"]) == {"circuitserve", "bare_asgi"}
    for times in floor["served_compute_ms"].values():
        assert set(times) == set(floor["levels"]) and all(ms > 0 for ms in times.values())
    served = floor["served_compute_ms"]["circuitserve"]
    assert served["full"] < floor["cells"]["full"]["1"]["circuitserve"]["p50_ms"]  # a part of the answer
    goals = floor["goals"]
    full, small = served["full"], served[floor["levels"][-1]]
    ceiling = (full + floor["http_floor"]["p50_ms"]) / (small + floor["http_floor"]["p50_ms"])
    assert goals["dial_ceiling_with_served_compute"] == pytest.approx(ceiling, abs=2e-3)
    assert goals["dial_served_compute"] == pytest.approx(full / small, abs=2e-3)
    dial = next(t for t in quick_report[0]["targets"] if t["target"].startswith("the dial"))
    served_ceiling = goals["dial_ceiling_with_served_compute"]
    assert f"with compute as it ran in circuitserve {served_ceiling}" in dial["measured"]
    assert f"would show a dial of {served_ceiling}" in (quick_report[1] / "REPORT.md").read_text()
    assert set(floor["inline_stalls"]) == set(floor["levels"])
    assert all(isinstance(n, int) and n >= 0 for n in floor["inline_stalls"].values())


def test_latency_floor_counts_inline_stalls_from_the_batchers_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The section reads the watchdog's ends of inline runs, per level, off the server's log: the
    warning service.batcher writes, not a copy of its wording."""
    from bench.latency_floor import _inline_stalls
    from service.batcher import Batcher
    from service.runtime import Interrupted

    def stalled(x: np.ndarray) -> dict[str, np.ndarray]:
        raise Interrupted("inline run ended after 20 ms")

    async def main() -> None:
        b = Batcher(
            lambda x: {"y": x}, name="digits/1/8", max_batch_size=8, max_delay_s=0.0,
            max_queue_samples=64, inline_max_s=1.0, run_inline=stalled,
        )  # fmt: skip
        b.start()
        try:
            rows, deadline = np.ones((1, 2), np.float32), time.monotonic() + 5
            await b.submit(rows, deadline=deadline)  # times a first batch, on the thread
            await b.submit(rows, deadline=deadline)  # inline: the watchdog "ends" it
        finally:
            await b.close()

    with caplog.at_level("WARNING", logger="service.batcher"):
        asyncio.run(main())
    log = tmp_path / "circuitserve.log"
    log.write_text(caplog.text)
    assert _inline_stalls(log, "digits", ["full", "1/8"]) == {"full": 0, "1/8": 1}


@pytest.mark.slow
def test_quick_report_families(quick_report: tuple[dict[str, Any], Path]) -> None:
    from model.families import FAMILIES

    families = quick_report[0]["families"]
    assert set(families) == set(FAMILIES)  # every registered family, none named in bench/
    for name, per_dataset in families.items():
        f = per_dataset["digits"]
        assert list(f["levels"]) == ["full", "1/2", "1/4", "1/8"] and f["seeds"] == [0]
        assert f["levels"]["full"]["flops_fraction"] == 1.0 and f["levels"]["full"]["speedup_b128"] == 1.0
        for lv in f["levels"].values():
            assert _fraction(lv["accuracy"]["mean"]) and _fraction(lv["accuracy_random_order"]["mean"])
            assert _number(lv["latency_ms_b128"]) and lv["units"] >= 1
        # ranked against random at the fewest units past those every order starts with (NFM: pass 1)
        units = [lv["units"] for lv in f["levels"].values()]
        ordered = [u for u in units if u > FAMILIES[name].leading_units] or units
        assert f["levels"][f["smallest_units_level"]]["units"] == min(ordered)
    assert families["interpreter"]["digits"]["levels"]["1/4"]["knobs"] == {"iterations": 1}
    assert "## 1c. Families side by side" in (quick_report[1] / "REPORT.md").read_text()


@pytest.mark.slow
def test_quick_report_targets(quick_report: tuple[dict[str, Any], Path]) -> None:
    targets = quick_report[0]["targets"]
    from model.families import FAMILIES

    # accuracy (digits), overhead x2, peers, Triton, peers at scale-out, overload, floor x2, workers x2;
    # then four per family besides the NAC and dataset (full vs the NAC, a cheap level, ranked vs
    # random, training)
    assert len(targets) == 11 + 4 * (len(FAMILIES) - 1) * len(quick_report[0]["accuracy"])
    for t in targets:
        assert t["goal"] and t["measured"]
        # judged exactly when measured: None only beside "not measured", a bool otherwise
        assert (t["reached"] is None) == (t["measured"] == "not measured"), t
        assert t["reached"] is None or isinstance(t["reached"], bool), t
        assert t["reached"] is True or t["why"]  # a target not reached says why
    # the overhead targets follow their rule on this run's own figures
    from bench import report

    overhead = quick_report[0]["overhead"]
    accuracy_targets = len(quick_report[0]["accuracy"])
    for t, o in zip(targets[accuracy_targets : accuracy_targets + 2], overhead.values(), strict=True):
        assert t["reached"] is (o["c64"]["throughput_ratio"] >= report.OVERHEAD_RATIO), (t, o["c64"])


@pytest.mark.slow
def test_only_reruns_one_section_and_keeps_the_others(quick_report: tuple[dict[str, Any], Path]) -> None:
    from bench.run import UsageError, run_all

    before, out = quick_report
    with pytest.raises(UsageError, match="unknown bench section"):
        run_all(out=out, quick=True, only=["no-such-section"])
    after = run_all(out=out, quick=True, only=["latency_floor"])
    for key in ("levels", "accuracy", "overhead", "peers", "overload"):
        assert after[key] == before[key], key  # kept as they were
    assert after["latency_floor"] != before["latency_floor"]  # measured again: timings differ
    assert [run["sections"] for run in after["meta"]["runs"]] == [["latency_floor"]]
    assert "rerun by `--only`" in (out / "REPORT.md").read_text()
    assert json.loads((out / "report.json").read_text())["meta"]["runs"] == after["meta"]["runs"]


def test_a_families_rerun_replaces_only_its_families() -> None:
    from bench.run import merge

    nac, ni, nfm = {"levels": {"full": 0.99}}, {"levels": {"full": 0.97}}, {"levels": {"full": 0.95}}
    previous = {"families": {"nac": nac, "interpreter": ni, "nfm": nfm}, "accuracy": {"digits": 1}}
    fresh_ni = {"levels": {"full": 0.98}}
    fresh = {
        "meta": {"date": "d", "code_version": "c", "section_seconds": {"families": 9.0}},
        "families": {"interpreter": fresh_ni},
    }
    merged = merge(previous, fresh, families=["interpreter"])
    assert merged["families"] == {"nac": nac, "interpreter": fresh_ni, "nfm": nfm}
    assert merged["accuracy"] == previous["accuracy"]
    assert merged["meta"]["runs"] == [
        {"date": "d", "code_version": "c", "sections": ["families"], "families": ["interpreter"]}
    ]
    # every family rerun (no `families`): the section is the run's, as any other section
    assert merge(previous, fresh)["families"] == {"interpreter": fresh_ni}


def test_families_option_names_known_families_and_needs_the_families_section(tmp_path: Path) -> None:
    from bench.run import UsageError, run_all

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(UsageError, match="unknown model famil"):
        run_all(out=tmp_path, quick=True, only=["families"], families=["no-such-family"])
    for only in (None, ["latency_floor"]):
        with pytest.raises(UsageError, match="with --only families"):
            run_all(out=tmp_path, quick=True, only=only, families=["interpreter"])


def test_training_target_says_the_threads_torch_trained_on() -> None:
    from bench import report

    def level(units: int, acc: float, flops: float, speedup: float) -> dict[str, Any]:
        a = {"mean": acc}
        return {"units": units, "accuracy": a, "accuracy_random_order": a, "flops": flops} | {
            "flops_fraction": flops,
            "speedup_b128": speedup,
            "keep_fraction": flops,
        }

    entry = {
        "unit": "functions",
        "seeds": [0, 1],
        "levels": {"full": level(8, 0.99, 1.0, 1.0), "1/8": level(1, 0.98, 0.125, 6.0)},
        "smallest_units_level": "1/8",
        "train_seconds": [100.0, 200.0],
        "train_threads": [1, 2],
    }
    r = {"families": {"interpreter": {"digits": entry}}}

    def training() -> str:
        return str(next(t for t in report._family_targets(r) if "training" in t["target"])["measured"])

    assert "150 s wall" in training() and "torch on 1/2 thread(s)" in training()
    del entry["train_threads"]  # a report from before they were recorded
    assert "unrecorded" in training()


def test_cheap_level_rules_follow_each_family_issue() -> None:
    """Issue 16's rule (a level at <= 1/4 of the FLOPs, within 2 points) for a new family; NFM's own
    (issue 17): its cheapest level, within 3 points."""
    from bench import report

    table = {
        "full": {"flops": 100, "flops_fraction": 1.0},
        "1/2": {"flops": 30, "flops_fraction": 0.3},
        "1/4": {"flops": 20, "flops_fraction": 0.2},
        "1/8": {"flops": 5, "flops_fraction": 0.05},
    }
    nfm, other = report.CHEAP_RULES["nfm"], report.CHEAP_RULES.get("interpreter", report.CHEAP_RULE)
    assert [k for k, _ in nfm.levels(table)] == ["1/8"] and nfm.within == 0.03
    assert [k for k, _ in other.levels(table)] == ["1/4", "1/8"] and other.within == 0.02
    assert "cheapest level within 3 points" in nfm.goal() and "0.25x full's FLOPs within 2" in other.goal()


def test_steal_share_is_the_hypervisors_part_of_the_cpu_time_between_two_readings() -> None:
    before = [100, 0, 50, 800, 0, 0, 0, 50]  # user nice system idle iowait irq softirq steal
    after = [400, 0, 100, 1100, 0, 0, 0, 150]  # 750 ticks spent, 100 of them stolen
    assert steal_share(before, after) == round(100 / 750, 3)
    assert steal_share(before, before) is None and steal_share(None, after) is None
    now = cpu_times()
    if Path("/proc/stat").exists():  # Linux: a real reading, and the share of real CPU time
        assert now is not None and len(now) > 7
        time.sleep(0.05)
        share = steal_share(now, cpu_times())
        assert share is None or 0.0 <= share <= 1.0
    else:
        assert now is None
