"""The app in-process (ASGI, lifespan run): native API, v2 over JSON, level table, errors, metrics."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import asgi_client, make_settings, metric, sample_inputs, v2_tensor

import service.app as app_module
from export.manifest import Manifest
from service.app import create_app


def predict(client: TestClient, manifest: Manifest, n: int = 1, **body: Any) -> Any:
    inputs = sample_inputs(manifest, n).tolist()
    return client.post(f"/v1/models/{manifest.name}/predict", json={"inputs": inputs, **body})


def by_speed(manifest: Manifest) -> list[str]:
    """Level names, most accurate first (the synthetic bundle's levels get cheaper in that order)."""
    return [lv.name for lv in sorted(manifest.levels, key=lambda lv: -lv.accuracy)]


@pytest.mark.parametrize("n", [3, 20])  # the best class of a few rows is found in lists, of more by numpy
def test_predict_without_budget_runs_the_full_model(client: TestClient, manifest: Manifest, n: int) -> None:
    r = predict(client, manifest, n=n)
    assert r.status_code == 200, r.text
    body = r.json()
    full = manifest.sorted_levels()[0]
    assert (body["sparsity_level"], body["policy"], body["expected_accuracy"]) == (
        "full",
        "default",
        full.accuracy,
    )
    assert "budget_met" not in body and body["queue_ms"] >= 0 and body["compute_ms"] > 0
    assert len(body["predictions"]) == n
    for p in body["predictions"]:
        assert len(p["probabilities"]) == len(manifest.labels)
        assert abs(sum(p["probabilities"]) - 1) < 1e-4
        assert p["class_index"] == int(np.argmax(p["probabilities"]))
        assert p["label"] == manifest.labels[p["class_index"]]


@pytest.mark.parametrize("spec", ["1/2", 0.5, "0.5"])
def test_explicit_level_by_name_or_keep_fraction(
    client: TestClient, manifest: Manifest, spec: object
) -> None:
    body = predict(client, manifest, sparsity_level=spec).json()
    assert (body["sparsity_level"], body["keep_fraction"], body["policy"]) == ("1/2", 0.5, "explicit")


def test_top_k_and_flat_inputs(client: TestClient, manifest: Manifest) -> None:
    flat = sample_inputs(manifest, 2).reshape(2, -1).tolist()
    r = client.post(f"/v1/models/{manifest.name}/predict", json={"inputs": flat, "top_k": 3})
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        scores = [s["probability"] for s in p["top_k"]]
        assert "probabilities" not in p and len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert p["top_k"][0]["class_index"] == p["class_index"]


def test_latency_budget(client: TestClient, manifest: Manifest) -> None:
    body = predict(client, manifest, latency_budget_ms=10_000).json()
    assert (body["sparsity_level"], body["policy"], body["budget_met"]) == ("full", "latency_budget", True)

    def shed() -> float:  # refused before a level ran: level "none", a series made on first use
        try:
            return metric(
                client, "circuitserve_requests_total", model=manifest.name, level="none", outcome="shed"
            )
        except AssertionError:
            return 0.0

    before = shed()
    r = predict(client, manifest, latency_budget_ms=1e-6)  # impossible: shed, not answered late
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert "latency budget" in r.json()["error"]
    assert shed() == before + 1


def test_an_impossible_budget_runs_the_fastest_level_when_shedding_is_off(
    bundle_path: Path, manifest: Manifest
) -> None:
    with asgi_client(create_app(make_settings(bundle_path, shed_late=False))) as client:
        misses = metric(client, "circuitserve_budget_misses_total", model=manifest.name)
        body = predict(client, manifest, latency_budget_ms=1e-6).json()
        # the fastest level by the server's own warm-up profile (the synthetic levels' costs are
        # close, and the profile, not the manifest, is what the policy reads)
        info = client.get(f"/v1/models/{manifest.name}").json()
        at_one = {lv["name"]: lv["latency_ms"]["1"] for lv in info["levels"]}
        assert body["budget_met"] is False
        assert at_one[body["sparsity_level"]] <= 1.5 * min(at_one.values()) + 0.05, (body, at_one)
        assert metric(client, "circuitserve_budget_misses_total", model=manifest.name) == misses + 1


def test_accuracy_floor(client: TestClient, manifest: Manifest) -> None:
    accuracies = sorted(lv.accuracy for lv in manifest.levels)
    body = predict(client, manifest, min_accuracy=accuracies[-1]).json()
    assert (body["sparsity_level"], body["budget_met"]) == ("full", True)
    body = predict(client, manifest, min_accuracy=accuracies[1]).json()
    assert body["expected_accuracy"] >= accuracies[1] and body["policy"] == "min_accuracy"
    body = predict(client, manifest, min_accuracy=1.0).json()
    assert body["budget_met"] is (accuracies[-1] >= 1.0)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"inputs": [[1.0, 2.0]]}, 400, "shape"),
        ({"inputs": [[1.0], [1.0, 2.0]]}, 400, "inputs"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": "x"}, 400, "inputs"),
        ({"sparsity_level": "1/3"}, 404, "no sparsity level"),
        ({"min_accuracy": 2}, 400, "min_accuracy"),
        ({"latency_budget_ms": -1}, 400, "latency_budget_ms"),
        ({"sparsity_level": "full", "latency_budget_ms": 5}, 400, "either"),
        ({"priority": -1}, 400, "priority"),
        ({"unknown_field": 1}, 400, "unknown_field"),
    ],
)
def test_bad_native_requests_get_clear_4xx(
    client: TestClient, manifest: Manifest, body: dict[str, Any], status: int, message: str
) -> None:
    payload = {"inputs": sample_inputs(manifest, 1).tolist(), **body}
    r = client.post(f"/v1/models/{manifest.name}/predict", json=payload)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_nan_unknown_model_and_unknown_route(client: TestClient, manifest: Manifest) -> None:
    row = sample_inputs(manifest, 1).ravel().tolist()
    text = "[" + ",".join(["NaN", *map(str, row[1:])]) + "]"
    r = client.post(
        f"/v1/models/{manifest.name}/predict",
        content='{"inputs": [' + text + "]}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    r = predict(client, manifest.model_copy(update={"name": "nope"}))
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = client.get("/v1/nothing")
    assert r.json() == {"error": "Not Found", "request_id": r.headers["x-request-id"]}


def test_v2_json_infer_carries_the_budget_in_parameters(client: TestClient, manifest: Manifest) -> None:
    x = sample_inputs(manifest, 2)
    doc = {
        "id": "abc",
        "parameters": {"sparsity_level": "1/4", "priority": 1},
        "inputs": [
            {"name": manifest.input.name, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    r = client.post(f"/v2/models/{manifest.name}/versions/{manifest.version}/infer", json=doc)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == manifest.name
    assert body["parameters"]["sparsity_level"] == "1/4" and "expected_accuracy" in body["parameters"]
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]
    assert body["outputs"][0]["shape"] == [2, len(manifest.labels)]


@pytest.mark.parametrize(
    "change, status, message",
    [
        ({"datatype": "FP64"}, 400, "FP32"),
        ({"name": "other"}, 400, "one input named"),
        ({"shape": [1, 2], "data": [0.0, 1.0]}, 400, "shape"),
    ],
)
def test_v2_bad_inputs(
    client: TestClient, manifest: Manifest, change: dict[str, Any], status: int, message: str
) -> None:
    x = sample_inputs(manifest, 1)
    tensor = v2_tensor(manifest, x)
    r = client.post(f"/v2/models/{manifest.name}/infer", json={"inputs": [{**tensor, **change}]})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_v2_wrong_version_output_and_budget(client: TestClient, manifest: Manifest) -> None:
    x = sample_inputs(manifest, 1)
    tensor = v2_tensor(manifest, x)
    r = client.post(f"/v2/models/{manifest.name}/versions/999/infer", json={"inputs": [tensor]})
    assert r.status_code == 404
    r = client.post(
        f"/v2/models/{manifest.name}/infer", json={"inputs": [tensor], "outputs": [{"name": "x"}]}
    )
    assert r.status_code == 400 and "no outputs" in r.json()["error"]
    r = client.post(
        f"/v2/models/{manifest.name}/infer", json={"inputs": [tensor], "parameters": {"min_accuracy": "high"}}
    )
    assert r.status_code == 400 and "min_accuracy" in r.json()["error"]


def test_expired_deadline_gets_504_and_is_not_executed(client: TestClient, manifest: Manifest) -> None:
    before = metric(client, "circuitserve_inferred_samples_total", model=manifest.name, level="1/8")
    x = sample_inputs(manifest, 1)
    tensor = v2_tensor(manifest, x)
    doc = {"inputs": [tensor], "parameters": {"sparsity_level": "1/8", "timeout": 1}}  # 1 µs
    r = client.post(f"/v2/models/{manifest.name}/infer", json=doc)
    assert r.status_code == 504 and "deadline" in r.json()["error"]
    assert metric(client, "circuitserve_inferred_samples_total", model=manifest.name, level="1/8") == before
    timeouts = metric(
        client, "circuitserve_requests_total", model=manifest.name, level="1/8", outcome="timeout"
    )
    assert timeouts >= 1


def test_model_table(client: TestClient, manifest: Manifest) -> None:
    info = client.get(f"/v1/models/{manifest.name}").json()
    assert info["default_level"] == "full" and info["input"]["name"] == manifest.input.name
    assert [lv["name"] for lv in info["levels"]] == [lv.name for lv in manifest.sorted_levels()]
    level = info["levels"][0]
    assert level["correction"] > 0 and level["provider"] == "CPUExecutionProvider"
    assert client.get("/v1/models").json()[0]["name"] == manifest.name
    assert client.get("/v1/models/nope").status_code == 404


def test_stats_and_metrics_after_traffic(client: TestClient, manifest: Manifest) -> None:
    predict(client, manifest, n=4, sparsity_level="1/4")
    stats = client.get("/v1/stats").json()
    window = stats["windows"]["60s"]
    assert window["requests"] >= 1 and window["samples_per_s"] > 0
    assert window["latency_ms"]["p50"] is not None and "1/4" in window["level_mix"][manifest.name]
    assert set(stats["windows"]) == {"10s", "60s"} and manifest.name in stats["queue_depth"]
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    assert metric(client, "circuitserve_ready") == 1
    assert (
        metric(
            client, "circuitserve_level_selections_total", model=manifest.name, level="1/4", policy="explicit"
        )
        >= 1
    )
    assert metric(client, "circuitserve_batch_size_count", model=manifest.name, level="1/4") >= 1
    assert (
        metric(client, "circuitserve_requests_total", model="_unknown", level="none", outcome="bad_request")
        >= 1
    )


def test_openapi_documents_both_apis_with_examples(client: TestClient, manifest: Manifest) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]
    body_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["examples"] and "inputs" in body_schema["required"]
    answer = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/PredictResponse"}
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert "example" in infer["requestBody"]["content"]["application/json"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"inputs": []}', b'{"inputs": [[1]], "top_k": 0}', b'{"inputs": [[1]], "x": 1}']
)
def test_invalid_predict_body_is_400_counted_once(
    client: TestClient, manifest: Manifest, body: bytes
) -> None:
    def count(outcome: str) -> float:
        try:
            return metric(
                client, "circuitserve_requests_total", model=manifest.name, level="none", outcome=outcome
            )
        except AssertionError:  # no such series yet
            return 0.0

    before = {o: count(o) for o in ("bad_request", "error")}
    r = client.post(f"/v1/models/{manifest.name}/predict", content=body)
    assert r.status_code == 400 and r.json()["error"].startswith("invalid request"), r.text
    assert {o: count(o) for o in before} == {
        "bad_request": before["bad_request"] + 1,
        "error": before["error"],
    }


@pytest.mark.parametrize("path", ["/v1/models/{}/predict", "/v2/models/{}/infer"])
def test_inference_routes_answer_405_to_other_methods(
    client: TestClient, manifest: Manifest, path: str
) -> None:
    r = client.get(path.format(manifest.name))
    assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_once_loaded_the_young_generation_is_collected_less_often() -> None:
    """freeze_loaded_objects (serve's on_ready): the collector's youngest threshold to GC_YOUNG, and
    the GIL handed to a waiting (inference) thread within GIL_SWITCH_S, not 5 ms."""
    before, switch = gc.get_threshold(), sys.getswitchinterval()
    try:
        gc.set_threshold(700, 10, 10)
        app_module.freeze_loaded_objects()
        assert gc.get_threshold() == (app_module.GC_YOUNG, 10, 10) and app_module.GC_YOUNG > 700
        assert sys.getswitchinterval() == app_module.GIL_SWITCH_S < 0.005
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch)
