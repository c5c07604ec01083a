"""The served OpenAPI document agrees with the server: bodies it admits are served, bodies the
server refuses are outside it (`{}` for v2, a level and a budget together for native)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from service_helpers import sample_inputs, v2_tensor

from export.manifest import Manifest

NATIVE, V2 = "/v1/models/{name}/predict", "/v2/models/{name}/infer"


def _body_schema(doc: dict[str, Any], path: str) -> Draft202012Validator:
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def _row(manifest: Manifest) -> list[Any]:
    row: list[Any] = sample_inputs(manifest, 1)[0].tolist()
    return row


def test_v2_bodies_the_schema_admits_are_served(
    client: TestClient, doc: dict[str, Any], manifest: Manifest
) -> None:
    schema = _body_schema(doc, V2)
    for n in (1, 3):
        body = {
            "inputs": [v2_tensor(manifest, sample_inputs(manifest, n))],
            "parameters": {"sparsity_level": "1/2"},
        }
        assert schema.is_valid(body)
        assert client.post("/v2/models/synthetic/infer", json=body).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "wrong", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]},
        {"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 63}]},
        {"inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [1e31] * 64}]},
        {
            "inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
            "parameters": {"sparsity_level": "1/2", "latency_budget_ms": 5},
        },
        {
            "inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
            "outputs": [{"name": "probabilities", "parameters": False}],
        },
    ],
    ids=["empty", "no-inputs", "wrong-name", "short-data", "too-large", "level-and-budget", "false-params"],
)
def test_v2_bodies_the_server_refuses_are_outside_the_schema(
    client: TestClient, doc: dict[str, Any], body: dict[str, Any]
) -> None:
    assert not _body_schema(doc, V2).is_valid(body)
    assert client.post("/v2/models/synthetic/infer", json=body).status_code == 400


def test_native_schema_agrees(client: TestClient, doc: dict[str, Any], manifest: Manifest) -> None:
    schema, row = _body_schema(doc, NATIVE), _row(manifest)
    served = [{"inputs": [row]}, {"inputs": [row, row], "sparsity_level": "1/4", "latency_budget_ms": None}]
    refused = [
        {"inputs": [row], "sparsity_level": "1/2", "latency_budget_ms": 5.0},
        {"inputs": [row], "sparsity_level": 0.5, "min_accuracy": 0.5},
        {"inputs": [row], "sparsity_level": "1/3"},
        {"inputs": [[1e31] * 64]},
    ]
    for body in served:
        assert (
            schema.is_valid(body)
            and client.post("/v1/models/synthetic/predict", json=body).status_code == 200
        )
    for body in refused:
        assert not schema.is_valid(body)
        assert client.post("/v1/models/synthetic/predict", json=body).status_code in (400, 404), body


def test_model_names_are_the_served_ones(doc: dict[str, Any]) -> None:
    params = doc["paths"][NATIVE]["post"]["parameters"]
    assert [p["schema"]["enum"] for p in params if p["name"] == "name"] == [["synthetic"]]
