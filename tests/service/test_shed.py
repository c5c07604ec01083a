"""Shedding: a request whose latency budget cannot be met gets a fast 503 with Retry-After, counted
as `shed`, instead of a late answer: at admission (the prediction does not fit, the event loop's
lag included) and when its batch forms (queued behind work that ran long). No timing assertions:
each case is made certain by a budget no server meets or a batch that sleeps far past it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import SLOW, asgi_client, child_server, make_settings, metric, sample_inputs, v2_tensor

from export.manifest import Manifest
from service import errors
from service.app import create_app
from service.batcher import BatchResult
from service.budget import Budget
from service.engine import Inference, Tracked
from service.loop_lag import LoopLag
from service.policy import MARGIN_SHARE

BUDGET_MS = 400.0  # far more than a loaded machine's event loop lag eats (those are shed at admission)
HOLD_MS = 1500  # the batch that holds the full level: far past every queued request's budget
QUEUED = 6


def test_loop_lag_sees_a_blocked_loop() -> None:
    async def main() -> tuple[float, float]:
        lag = LoopLag(interval_s=0.002)
        lag.start()
        await asyncio.sleep(0.02)
        time.sleep(0.1)  # the loop blocked: the tick due meanwhile runs 100 ms late
        await asyncio.sleep(0)
        blocked = lag.lag_ms
        lag.stop()
        return blocked, LoopLag().lag_ms

    blocked, unstarted = asyncio.run(main())
    assert blocked >= 90.0 and unstarted == 0.0


class Late(LoopLag):
    """A loop that reads 1 s late (a stand-in for one swamped by connections)."""

    @property
    def lag_ms(self) -> float:
        return 1000.0


def test_a_late_event_loop_sheds_budgets_it_eats(bundle_path: Path, manifest: Manifest) -> None:
    """A budget the loop's lag leaves no room in is shed before any level is compared."""
    app = create_app(make_settings(bundle_path))
    with asgi_client(app) as client:
        engine = app.state.engine
        engine.lag = Late()
        choose, compared = engine.choose, []

        def counted(*args: Any, **kwargs: Any) -> Any:
            compared.append(args)
            return choose(*args, **kwargs)

        engine.choose = counted
        path = f"/v1/models/{manifest.name}/predict"
        inputs = sample_inputs(manifest, 1).tolist()
        r = client.post(path, json={"inputs": inputs, "latency_budget_ms": 500})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "at any level (event loop 1000.0 ms late" in r.json()["error"]
        assert compared == []
        roomy = client.post(path, json={"inputs": inputs, "latency_budget_ms": 5000})
        assert roomy.status_code == 200 and roomy.json()["budget_met"] is (roomy.json()["server_ms"] <= 5000)
        assert len(compared) == 1
        # no budget, nothing to shed for: answered however late the loop is
        assert client.post(path, json={"inputs": inputs}).status_code == 200
        assert (
            metric(client, "circuitserve_requests_total", model=manifest.name, level="none", outcome="shed")
            == 1
        )


def test_refusals_are_written_by_the_guard_as_the_error_mapping_would(
    bundle_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shed (and any ServiceError of an inference route) is answered without the general handler
    (a Request and a Response built per refusal): the same status, body, headers and metrics."""
    app = create_app(make_settings(bundle_path))
    with asgi_client(app) as client:
        app.state.engine.lag = Late()

        async def general(*args: object) -> None:
            raise AssertionError("a refusal went through the general error handler")

        monkeypatch.setattr(errors, "handle", general)
        body = {"inputs": sample_inputs(manifest, 1).tolist(), "latency_budget_ms": 500}
        path = f"/v1/models/{manifest.name}/predict"
        shed = client.post(path, json=body, headers={"X-Request-ID": "rid-7"})
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "1" and shed.headers["x-request-id"] == "rid-7"
        assert shed.headers["content-type"] == "application/json"
        assert int(shed.headers["content-length"]) == len(shed.content)
        assert shed.json().keys() == {"error", "request_id"} and shed.json()["request_id"] == "rid-7"
        assert "latency budget of 500 ms" in shed.json()["error"]
        tensor = v2_tensor(manifest, sample_inputs(manifest, 1))
        v2 = {"inputs": [tensor], "parameters": {"latency_budget_ms": 500}}
        assert client.post(f"/v2/models/{manifest.name}/infer", json=v2).status_code == 503
        unknown = client.post("/v1/models/nope/predict", json=body)
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
        assert (
            metric(client, "circuitserve_requests_total", model=manifest.name, level="none", outcome="shed")
            == 2
        )


class Behind(LoopLag):
    """A loop that reads 60 ms late: two hops of it (120 ms) fit a 500 ms budget, not one with 400 ms
    kept back."""

    @property
    def lag_ms(self) -> float:
        return 60.0


def test_the_learnt_margin_is_kept_back_from_budgets_at_admission(
    bundle_path: Path, manifest: Manifest
) -> None:
    app = create_app(make_settings(bundle_path))
    with asgi_client(app) as client:
        engine = app.state.engine
        engine.lag = Behind()
        path = f"/v1/models/{manifest.name}/predict"
        body = {"inputs": sample_inputs(manifest, 1).tolist(), "latency_budget_ms": 500}
        engine.margin.value_ms = 0.0
        assert client.post(path, json=body).status_code == 200
        engine.margin.value_ms = 1000.0  # kept back: at most MARGIN_SHARE of the budget (400 ms)
        r = client.post(path, json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert f"margin {MARGIN_SHARE * 500:.1f} ms" in r.json()["error"]
        # a budget the margin's cap leaves room in: still admitted (the margin can shrink again)
        roomy = {**body, "latency_budget_ms": 5000}
        assert client.post(path, json=roomy).status_code == 200


def test_answers_teach_the_margin_and_late_ones_not_the_overhead(
    bundle_path: Path, manifest: Manifest
) -> None:
    """`Engine.answered` on answers made up here: one within its budget, one a second late that spent
    that second waiting for the loop (after admission, before its result came back)."""
    app = create_app(make_settings(bundle_path))
    with asgi_client(app) as client:
        engine = app.state.engine
        model = engine.model(manifest.name)
        level = model.levels[0]
        budget = Budget(latency_ms=50.0)
        decision = engine.choose(model, budget, 1)
        result = BatchResult({}, 0.0, 0.001, 1)
        before = model.overhead.value

        def answer(age_s: float) -> Inference:
            now = time.monotonic()
            made = Inference(level, budget, decision, result, own_ms=0.2, resumed=now)
            rec = Tracked(model=manifest.name, start=now - age_s)
            answered: Inference = engine.answered(model, made, rec)
            engine.record(rec, "success", age_s)  # what the answer teaches is learnt here
            return answered

        assert answer(0.0).budget_met is True
        assert (engine.margin.hits, engine.margin.misses, engine.margin.value_ms) == (1, 0, 0.0)
        for _ in range(20):
            assert answer(1.0).budget_met is False
        assert engine.margin.misses == 20
        assert engine.margin.value_ms == MARGIN_SHARE * 50.0  # 20 steps of 2 ms, capped at 40
        # the late answers' waits are the margin's: the overhead learnt only their own 0.2 ms
        assert model.overhead.value <= max(before, 1.0) < 50.0
        assert client.get("/v2/health/ready").status_code == 200


async def _queued_behind_a_long_batch(url: str, manifest: Manifest) -> tuple[int, list[httpx.Response]]:
    path = f"/v1/models/{manifest.name}/predict"
    hold = np.zeros((1, *manifest.input.shape[1:]), np.float32)
    hold.flat[0] = SLOW + HOLD_MS
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        first = asyncio.create_task(http.post(path, json={"inputs": hold.tolist(), "sparsity_level": "full"}))
        await asyncio.sleep(0.1)  # the holding batch is running now
        # only full meets this floor, so these queue behind the holder; their prediction (the profile
        # knows nothing of the sleep) fits the budget: admitted, then shed when their batch forms
        body = {
            "inputs": sample_inputs(manifest, 1).tolist(),
            "latency_budget_ms": BUDGET_MS,
            "min_accuracy": 0.9,
        }
        answers = await asyncio.gather(*(http.post(path, json=body) for _ in range(QUEUED)))
        return (await first).status_code, list(answers)


def _shed(http: httpx.Client, model: str) -> dict[str, float]:
    """Shed requests of `model` by level, from /metrics."""
    return {
        s.labels["level"]: s.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for s in family.samples
        if s.name == "circuitserve_requests_total"
        and s.labels.get("outcome") == "shed"
        and s.value
        and s.labels.get("model") == model
    }


def test_requests_queued_past_their_budget_are_shed_not_run(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    full = manifest.sorted_levels()[0]
    assert full.accuracy >= 0.9 > max(lv.accuracy for lv in manifest.levels if lv is not full)
    with child_server(bundle_path, tmp_path / "log", max_queue_delay_ms=0) as child:
        holder, answers = asyncio.run(_queued_behind_a_long_batch(child.url, manifest))
        with httpx.Client(base_url=child.url) as http:
            shed = _shed(http, manifest.name)
            # idle again: the same request is answered, and says whether it met its budget
            body = {"inputs": sample_inputs(manifest, 1).tolist(), "latency_budget_ms": BUDGET_MS}
            idle = http.post(f"/v1/models/{manifest.name}/predict", json=body)
        assert child.proc.poll() is None, child.output()
    assert holder == 200
    assert [r.status_code for r in answers] == [503] * QUEUED, [r.text for r in answers]
    assert all(r.headers["retry-after"] == "1" and "latency budget" in r.json()["error"] for r in answers)
    # when their batch formed (level full); at admission (none) only if the loop ran very late
    assert sum(shed.values()) == QUEUED, shed
    assert idle.status_code == 200 and idle.json()["budget_met"] is (idle.json()["server_ms"] <= BUDGET_MS)
