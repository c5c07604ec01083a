"""The request budget: one parser for both APIs, and answers that report what happened (budget_met
from the measured server time, misses counted from outcomes, the prediction error exported)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_helpers import asgi_client, make_settings, metric, sample_inputs, v2_tensor

from export.manifest import Manifest
from service import budget
from service.app import create_app
from service.errors import BadRequest


def native(fields: dict[str, Any]) -> budget.Budget:
    return budget.parse(fields, timeout_key="timeout_ms", timeout_per_ms=1.0)


def test_both_protocols_share_one_rule_numbers_are_numbers() -> None:
    v2 = budget.parse({"timeout": 2500, "priority": 3.0}, timeout_key="timeout", timeout_per_ms=1000.0)
    assert (v2.timeout_ms, v2.priority) == (2.5, 3)  # µs in v2; 3.0 is an integer in JSON Schema
    assert native({}) is budget.NONE and native({"latency_budget_ms": None}) == budget.NONE
    assert native({"latency_budget_ms": 5, "min_accuracy": 0.5}).given
    for bad in ({"latency_budget_ms": True}, {"latency_budget_ms": "5"}, {"priority": "5"},
                {"priority": True}, {"priority": 1.5}, {"timeout_ms": True}, {"timeout_ms": -1},
                {"min_accuracy": 1.1}, {"latency_budget_ms": 0},
                {"sparsity_level": "full", "latency_budget_ms": 5}):  # fmt: skip
        with pytest.raises(BadRequest):
            native(bad)


def predict(client: TestClient, manifest: Manifest, **fields: Any) -> dict[str, Any]:
    body = {"inputs": sample_inputs(manifest, 1).tolist(), **fields}
    r = client.post(f"/v1/models/{manifest.name}/predict", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest.fixture(scope="module")
def unshed(bundle_path: Path) -> Iterator[TestClient]:
    """A server that answers late rather than shedding (shed_late off): what it reports is tested."""
    with asgi_client(create_app(make_settings(bundle_path, shed_late=False))) as c:
        yield c


def test_budget_met_is_the_measured_server_time_not_the_prediction(
    unshed: TestClient, manifest: Manifest
) -> None:
    client = unshed
    misses = metric(client, "circuitserve_budget_misses_total", model=manifest.name)
    # 1 µs: no level can answer in time, whatever the prediction says
    tight = predict(client, manifest, latency_budget_ms=0.001)
    assert tight["budget_met"] is False and tight["server_ms"] > 0.001
    assert tight["server_ms"] >= tight["queue_ms"] + tight["compute_ms"]
    assert metric(client, "circuitserve_budget_misses_total", model=manifest.name) == misses + 1
    roomy = [predict(client, manifest, latency_budget_ms=5000.0) for _ in range(5)]
    assert all(a["budget_met"] is True and a["server_ms"] <= 5000.0 for a in roomy)
    assert metric(client, "circuitserve_budget_misses_total", model=manifest.name) == misses + 1
    assert "budget_met" not in predict(client, manifest)  # no budget, nothing to meet


def test_an_accuracy_floor_no_level_meets_is_reported_missed(client: TestClient, manifest: Manifest) -> None:
    answer = predict(client, manifest, min_accuracy=1.0, latency_budget_ms=5000.0)
    assert answer["expected_accuracy"] < 1.0 and answer["budget_met"] is False


def test_prediction_error_is_exported_and_shown_in_stats(client: TestClient, manifest: Manifest) -> None:
    before = metric(client, "circuitserve_prediction_error_seconds_count", model=manifest.name)
    body = {"inputs": [v2_tensor(manifest, sample_inputs(manifest, 2))], "parameters": {"min_accuracy": 0.0}}
    assert client.post(f"/v2/models/{manifest.name}/infer", json=body).status_code == 200
    predict(client, manifest, latency_budget_ms=5000.0)
    assert metric(client, "circuitserve_prediction_error_seconds_count", model=manifest.name) == before + 2
    window = client.get("/v1/stats").json()["windows"]["60s"]
    assert window["prediction_error_ms"]["p50"] is not None
    assert 0.0 <= window["budget_met_fraction"] <= 1.0
