"""Generated inference requests (hypothesis): v2 JSON, v2 binary, native. Whatever arrives, the answer
is a 200 or a 4xx with `{"error": ...}`: never a 5xx, never a crash. Cases are bounded per test."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.manifest import Manifest
from service.v2_codec import DATATYPES, HEADER_LENGTH

CASES = 150
FUZZ = settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
NAME = "synthetic"  # the name write_bundle gives; checked against the manifest below
tried: dict[str, int] = {}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
anything = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), st.just(10**400)
)
shapes = st.one_of(
    st.lists(st.integers(-2, 9) | st.sampled_from([2**31, 2**63, 2**64]), max_size=4),
    st.integers(1, 4).map(lambda n: [n, 8, 8]),
    anything,
)
levels = st.one_of(st.sampled_from(["full", "1/2", "1/4", "1/8", "0.5", "1/0", "3/7", ""]), numbers, anything)
parameters = st.fixed_dictionaries(
    {},
    optional={
        "sparsity_level": levels,
        "latency_budget_ms": numbers | anything,
        "min_accuracy": numbers | anything,
        "priority": st.integers(-(2**70), 2**70) | anything,
        "timeout": numbers | anything,
        "binary_data_output": anything,
    },
)
datatypes = st.one_of(st.sampled_from([*DATATYPES, "BYTES", "FP8"]), anything)


@st.composite
def tensors(draw: st.DrawFn, binary: bool) -> dict[str, Any]:
    """Mostly well-formed x inputs (so the budget and success paths run too), often broken."""
    n = draw(st.integers(1, 3))
    values = draw(st.lists(numbers, min_size=n * 64, max_size=n * 64)) if draw(st.booleans()) else None
    data = values if values is not None else np.zeros(n * 64).tolist()
    tensor: dict[str, Any] = {"name": "x", "shape": [n, 8, 8], "datatype": "FP32", "data": data}
    if binary:
        del tensor["data"]
        tensor["parameters"] = {"binary_data_size": draw(st.sampled_from([n * 256, 0, -1, 2**64]) | anything)}
    for key, strategy in (("name", anything), ("shape", shapes), ("datatype", datatypes), ("data", anything)):
        if draw(st.integers(0, 4)) == 0:
            tensor[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    return tensor


def documents(binary: bool) -> st.SearchStrategy[Any]:
    doc = st.fixed_dictionaries(
        {"inputs": st.lists(tensors(binary), min_size=0, max_size=2) | anything},
        optional={
            "id": anything,
            "parameters": parameters | anything,
            "outputs": st.lists(st.fixed_dictionaries({"name": anything}, optional={"parameters": anything}))
            | anything,
        },
    )
    return st.one_of(doc, doc, doc, anything)


def check(r: Any, kind: str) -> None:
    tried[kind] = tried.get(kind, 0) + 1
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str) and r.json()["request_id"]


def test_v2_json_bodies(client: TestClient, manifest: Manifest) -> None:
    assert manifest.name == NAME

    broken = st.sampled_from(["", "[" * 5000, '{"inputs": ' * 3000, '{"id": 1' + "0" * 5000 + "}", "\xff"])

    @FUZZ
    @given(text=documents(binary=False).map(json.dumps) | broken)
    def fuzz(text: str) -> None:
        check(client.post(f"/v2/models/{NAME}/infer", content=text.encode("utf-8", "replace")), "v2-json")

    fuzz()
    assert tried["v2-json"] >= CASES // 2


def test_v2_binary_bodies(client: TestClient) -> None:
    @FUZZ
    @given(doc=documents(binary=True), tail=st.binary(max_size=1024), split=st.integers(-3, 3) | anything)
    def fuzz(doc: Any, tail: bytes, split: Any) -> None:
        head = json.dumps(doc).encode()
        length = str(len(head) + split) if isinstance(split, int) else json.dumps(split)
        r = client.post(f"/v2/models/{NAME}/infer", content=head + tail, headers={HEADER_LENGTH: length})
        check(r, "v2-binary")

    fuzz()
    assert tried["v2-binary"] >= CASES // 2


def test_native_bodies(client: TestClient) -> None:
    rows = st.lists(st.lists(st.lists(numbers, min_size=8, max_size=8), min_size=8, max_size=8), max_size=3)
    body = st.fixed_dictionaries(
        {"inputs": rows | anything},
        optional={k: anything | numbers for k in ("sparsity_level", "latency_budget_ms", "min_accuracy")}
        | {"top_k": st.integers(-3, 2**70) | anything, "priority": anything, "timeout_ms": anything},
    )

    @FUZZ
    @given(doc=body | anything)
    def fuzz(doc: Any) -> None:
        json_type = {"content-type": "application/json"}
        check(client.post(f"/v1/models/{NAME}/predict", content=json.dumps(doc), headers=json_type), "native")

    fuzz()
    assert tried["native"] >= CASES // 2
