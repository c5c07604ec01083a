"""The native route's fast request path (routes.native._request_validator) against the whole way
(_decode, _rows): what the fast path passes, the whole way passes too, with the same float32 rows and
the same fields; everything else takes the whole way, which names what is wrong."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_core import ValidationError

from export.manifest import Manifest
from service.errors import BadRequest
from service.models import ServedModel
from service.routes import native

EXAMPLES = 300
plain = st.one_of(st.floats(-4, 4, width=32), st.integers(-20, 20))
odd = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2.0**53, -(2.0**53), 2.0**100 - 2.0**75, 1e300, 10**400]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just([]),
    st.just([1.0]),
)


def served(client: TestClient, manifest: Manifest) -> ServedModel:
    model: ServedModel = client.app.state.engine.model(manifest.name)  # type: ignore[attr-defined]
    return model


@st.composite
def bodies(draw: st.DrawFn, shape: tuple[int, ...]) -> bytes:
    """A request of 1-3 rows of `shape` (or flat) of plain numbers, half the time with up to two odd
    values among them; sometimes a row of the wrong size, a known field or an unknown one."""
    n, size = draw(st.integers(1, 3)), math.prod(shape)
    flat: list[Any] = draw(st.lists(plain, min_size=n * size, max_size=n * size))
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        flat[draw(st.integers(0, n * size - 1))] = draw(odd)
    if draw(st.integers(0, 3)) == 0:
        rows: Any = [flat[i * size : (i + 1) * size] for i in range(n)]
    else:
        rows = np.asarray(flat, dtype=object).reshape(n, *shape).tolist()
    if draw(st.integers(0, 5)) == 0:
        rows[0] = rows[0][:-1]  # ragged
    doc: dict[str, Any] = {"inputs": rows}
    extra = st.sampled_from(["top_k", "sparsity_level", "priority", "timeout_ms", "surprise"])
    for key in draw(st.lists(extra, max_size=2)):
        doc[key] = draw(st.one_of(st.integers(-1, 12), st.floats(0, 3), st.just("1/2"), st.booleans()))
    return json.dumps(doc).encode()


def whole_way(model: ServedModel, raw: bytes) -> tuple[dict[str, Any], np.ndarray] | None:
    try:
        doc = native._decode(raw)
        return doc, native._rows(model, doc["inputs"], b"true" in raw or b"false" in raw)
    except BadRequest:
        return None


def fast_way(model: ServedModel, raw: bytes) -> tuple[dict[str, Any], np.ndarray] | None:
    validator = native._request_validator(model.row_shape)
    assert validator is not None
    try:
        doc = validator.validate_json(raw)
    except ValidationError:
        return None
    try:
        return native._top_k(doc), np.array(doc["inputs"], dtype=np.float32)
    except BadRequest:
        return None


fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_what_the_fast_path_passes_the_whole_way_passes_with_the_same_rows(
    client: TestClient, manifest: Manifest
) -> None:
    model = served(client, manifest)
    taken = {"fast": 0, "whole way only": 0, "refused": 0}

    @fuzz
    @given(bodies(model.row_shape))
    def check(raw: bytes) -> None:
        fast, whole = fast_way(model, raw), whole_way(model, raw)
        if fast is None:
            taken["refused" if whole is None else "whole way only"] += 1
            return
        taken["fast"] += 1
        assert whole is not None, raw
        assert fast[0] == whole[0]
        assert fast[1].dtype == whole[1].dtype == np.float32 and fast[1].flags.c_contiguous
        assert np.array_equal(fast[1], whole[1]), raw

    check()
    assert all(taken.values()), taken  # each kind of body was seen: the comparison was not vacuous


@pytest.mark.parametrize(
    "row",
    [
        [0.5] * 64,  # flat
        [True] + [0.0] * 63,
        [2.0**53] + [0.0] * 63,  # beyond the fast path's exact integers: the whole way decides
        [10**19] + [0] * 63,  # beyond int64: the whole way refuses it
        [2.0**100 - 2.0**75] + [0.0] * 63,  # the input bound: refused
        [0.0] * 63 + [-1e300],
    ],
)
def test_what_the_fast_path_refuses_gets_the_whole_ways_answer(
    client: TestClient, manifest: Manifest, row: list[Any]
) -> None:
    model = served(client, manifest)
    nested = np.asarray(row, dtype=object).reshape(model.row_shape).tolist() if len(row) == 64 else row
    for inputs in ([row], [nested]):
        raw = json.dumps({"inputs": inputs}).encode()
        if inputs[0] is row and model.row_shape != (64,):
            assert fast_way(model, raw) is None
        expected = whole_way(model, raw)
        r = client.post(f"/v1/models/{manifest.name}/predict", content=raw)
        assert (r.status_code == 200) is (expected is not None), r.text
        if expected is not None:
            assert len(r.json()["predictions"]) == 1


def test_ints_floats_and_top_k_take_the_fast_path(client: TestClient, manifest: Manifest) -> None:
    model = served(client, manifest)
    row = np.arange(64).reshape(model.row_shape).tolist()
    row[0][0] = 0.25  # ints and floats mixed
    raw = json.dumps({"inputs": [row, row], "top_k": 2.0, "sparsity_level": "1/2"}).encode()
    fast = fast_way(model, raw)
    assert fast is not None and fast[0]["top_k"] == 2 and fast[1].shape == (2, *model.row_shape)
    r = client.post(f"/v1/models/{manifest.name}/predict", content=raw)
    assert r.status_code == 200 and [len(p["top_k"]) for p in r.json()["predictions"]] == [2, 2]


def test_a_dynamic_row_size_has_no_fast_path() -> None:
    assert native._request_validator((-1, 8)) is None
    assert native._request_validator((8, 8)) is not None
