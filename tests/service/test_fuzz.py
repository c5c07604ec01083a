"""Generated inference requests (hypothesis): v2 JSON, v2 binary, native. Valid requests mutated, and
junk. Whatever arrives, the answer is a 200 or a 4xx with `{"error": ...}` (or the service's own
503/504, load shedding): never a 500, never a crash. Cases are bounded per test (CASES)."""

from __future__ import annotations

import json
from collections import Counter
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
tried: dict[str, list[int]] = {}  # statuses seen, per kind

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
anything = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
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
datatypes = st.one_of(st.sampled_from([*DATATYPES, "BYTES", "FP8"]), anything)


valid_parameters = st.fixed_dictionaries(
    {},
    optional={
        "sparsity_level": st.sampled_from(["full", "1/2", "1/4", "1/8", "0.5"]),
        "latency_budget_ms": st.floats(0.001, 1e4),
        "min_accuracy": st.floats(0, 1),
        "priority": st.integers(0, 10),
        "timeout": st.integers(10**6, 10**8),
        "binary_data_output": st.booleans(),
    },
)
outputs = st.sampled_from(
    [[{"name": "probabilities"}], [{"name": "logits", "parameters": {"binary_data": True}}]]
)
mutants = st.one_of(anything, numbers, shapes, datatypes, levels)


def mutations(draw: st.DrawFn, places: list[Any]) -> None:
    """Up to three times: in one of the dicts in `places`, drop a key or set it to any JSON value."""
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from([p for p in places if isinstance(p, dict)]))
        key = draw(st.sampled_from([*sorted(target), "extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(mutants)


@st.composite
def requests(draw: st.DrawFn, binary: bool, mutate: bool = True) -> tuple[dict[str, Any], bytes]:
    """A valid infer request, then up to three mutations: a key dropped or given any JSON value."""
    n = draw(st.integers(1, 3))
    x = np.asarray(draw(st.lists(st.floats(-100, 100, width=32), min_size=n * 64, max_size=n * 64)))
    x = x.astype(np.float32).reshape(n, 8, 8)
    tensor: dict[str, Any] = {"name": "x", "shape": [n, 8, 8], "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
    else:
        tensor["data"] = draw(st.sampled_from([x.tolist(), x.ravel().tolist()]))
    extra = {"id": st.text(max_size=8), "parameters": valid_parameters, "outputs": outputs}
    doc: dict[str, Any] = {"inputs": [tensor], **draw(st.fixed_dictionaries({}, optional=extra))}
    if mutate:
        mutations(draw, [doc, tensor, doc.get("parameters"), tensor.get("parameters")])
    tail = x.tobytes() if binary else b""
    return doc, draw(st.sampled_from([tail, tail[:-4], tail + b"\0"]) | st.binary(max_size=1024))


def check(r: Any, kind: str) -> None:
    """Never a server fault: 200, a 4xx, or the service's own 503 (queue full) / 504 (deadline)."""
    tried.setdefault(kind, []).append(r.status_code)
    assert r.status_code < 500 or r.status_code in (503, 504), r.text
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str) and r.json()["request_id"]


def assert_bounded_and_varied(kind: str) -> None:
    """The cases ran (bounded), and both answers were reached: some succeeded, some were refused."""
    statuses = tried[kind]
    print(f"\n{kind}: {len(statuses)} cases, statuses {dict(sorted(Counter(statuses).items()))}")
    assert CASES // 2 <= len(statuses) <= CASES * 2 and {200, 400} <= set(statuses), sorted(set(statuses))


def test_v2_json_bodies(client: TestClient, manifest: Manifest) -> None:
    assert manifest.name == NAME

    broken = st.sampled_from(["", "[" * 5000, '{"inputs": ' * 3000, '{"id": 1' + "0" * 5000 + "}", "\xff"])

    @FUZZ
    @given(text=requests(binary=False).map(lambda r: json.dumps(r[0])) | broken)
    def fuzz(text: str) -> None:
        check(client.post(f"/v2/models/{NAME}/infer", content=text.encode("utf-8", "replace")), "v2-json")

    fuzz()
    assert_bounded_and_varied("v2-json")


def test_v2_binary_bodies(client: TestClient) -> None:
    @FUZZ
    @given(request=requests(binary=True), split=st.sampled_from([0, 0, 0, -1, 1]) | anything)
    def fuzz(request: tuple[dict[str, Any], bytes], split: Any) -> None:
        head, tail = json.dumps(request[0]).encode(), request[1]
        length = str(len(head) + split) if isinstance(split, int) else json.dumps(split)
        r = client.post(f"/v2/models/{NAME}/infer", content=head + tail, headers={HEADER_LENGTH: length})
        check(r, "v2-binary")

    fuzz()
    assert_bounded_and_varied("v2-binary")


def test_native_bodies(client: TestClient) -> None:
    @st.composite
    def bodies(draw: st.DrawFn) -> dict[str, Any]:
        request, _ = draw(requests(binary=False, mutate=False))
        body = {"inputs": request["inputs"][0]["data"], **request.get("parameters", {})}
        body.pop("timeout", None), body.pop("binary_data_output", None)
        optional = {"top_k": st.integers(-3, 12), "timeout_ms": st.floats(1e3, 1e5)}
        body.update(draw(st.fixed_dictionaries({}, optional=optional)))
        mutations(draw, [body])
        return body

    @FUZZ
    @given(doc=bodies() | anything)
    def fuzz(doc: Any) -> None:
        json_type = {"content-type": "application/json"}
        check(client.post(f"/v1/models/{NAME}/predict", content=json.dumps(doc), headers=json_type), "native")

    fuzz()
    assert_bounded_and_varied("native")
