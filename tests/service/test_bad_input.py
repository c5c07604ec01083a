"""Bad input over HTTP, both APIs: every case gets a 4xx whose `{"error": ...}` says what is wrong,
and the server answers the next good request. (Native field checks: test_app; codec units: test_v2_codec.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import asgi_client, make_settings, metric

from export.manifest import Manifest
from service.app import create_app
from service.v2_codec import HEADER_LENGTH

LIMIT = 16 * 1024  # max_body_bytes
QUEUE = 8  # max_queue_size, in samples
ROW = np.zeros((8, 8), np.float32).tolist()


@pytest.fixture(scope="module")
def small(bundle_path: Path) -> Iterator[TestClient]:
    settings = make_settings(bundle_path, max_body_bytes=LIMIT, max_queue_size=QUEUE)
    with asgi_client(create_app(settings)) as c:
        yield c


def v2(shape: list[int], data: Any = None, datatype: str = "FP32", **params: Any) -> dict[str, Any]:
    n = int(np.prod(shape))
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": [0.0] * n if data is None else data}
    return {"inputs": [tensor], "parameters": params}


def binary(
    shape: list[int], raw: bytes, size: int | None = None, split: int = 0
) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}
    if size is None:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + raw, {HEADER_LENGTH: str(len(head) + split)}


INF = np.full((1, 8, 8), np.inf, np.float32).tobytes()
GOOD = np.zeros((1, 8, 8), np.float32).tobytes()
CASES: dict[str, tuple[str, Any, int, str]] = {
    # name: (api, body: dict (JSON) | str (raw JSON text) | (bytes, headers), status, message)
    "v2 wrong shape": ("v2", v2([1, 3]), 400, "shape [batch, 8, 8]"),
    "v2 wrong dtype": ("v2", v2([1, 8, 8], datatype="INT32"), 400, "must be FP32"),
    "v2 data of strings": ("v2", v2([1, 1], ["a"]), 400, "found strings"),
    "v2 data of numeric strings": ("v2", v2([1, 1], ["7"]), 400, "found strings"),
    "v2 data of booleans": ("v2", v2([1, 8, 8], [True] * 64), 400, "found booleans"),
    "v2 a boolean among numbers": ("v2", v2([1, 8, 8], [0.0] * 63 + [False]), 400, "found booleans"),
    "v2 null data": ("v2", v2([1, 8, 8], [0.0] * 63 + [None]), 400, "found null"),
    "v2 timeout true": ("v2", v2([1, 8, 8], timeout=True), 400, "'timeout' must be a number"),
    "v2 priority as a string": ("v2", v2([1, 8, 8], priority="5"), 400, "'priority' must be an integer"),
    "v2 infinity": ("v2", json.dumps(v2([1, 8, 8], [float("inf")] + [0.0] * 63)), 400, "NaN or infinite"),
    "v2 NaN": ("v2", json.dumps(v2([1, 8, 8], [float("nan")] * 64)), 400, "NaN or infinite"),
    "v2 empty batch": ("v2", v2([0, 8, 8], []), 400, "no rows"),
    "v2 no inputs": ("v2", {"inputs": []}, 400, "non-empty list"),
    "v2 too many items": ("v2", v2([QUEUE + 1, 8, 8]), 400, "exceed the queue limit"),
    "v2 malformed JSON": ("v2", '{"inputs": [', 400, "not valid JSON"),
    "v2 deep JSON": ("v2", "[" * 10_000, 400, "not valid JSON"),
    "v2 5000-digit number": ("v2", '{"id": ' + "9" * 5000 + "}", 400, "not valid JSON"),
    "v2 unknown level": ("v2", v2([1, 8, 8], sparsity_level="3/7"), 404, "no sparsity level"),
    "v2 level out of range": ("v2", v2([1, 8, 8], sparsity_level=10**400), 404, "no sparsity level"),
    "v2 budget out of range": ("v2", v2([1, 8, 8], latency_budget_ms=-5), 400, "latency_budget_ms"),
    "v2 budget overflows": ("v2", v2([1, 8, 8], latency_budget_ms=10**400), 400, "out of range"),
    "v2 accuracy out of range": ("v2", v2([1, 8, 8], min_accuracy=1.5), 400, "min_accuracy"),
    "v2 negative timeout": ("v2", v2([1, 8, 8], timeout=-1), 400, "timeout"),
    "bin header past the body": ("v2", binary([1, 8, 8], GOOD, split=10_000), 400, "outside the body"),
    "bin size mismatch": ("v2", binary([1, 8, 8], GOOD, size=100), 400, "does not match shape"),
    "bin fewer bytes": ("v2", binary([1, 8, 8], GOOD[:-4], size=256), 400, "fewer binary bytes"),
    "bin bytes left over": ("v2", binary([1, 8, 8], GOOD + b"\0" * 4, size=256), 400, "no input claims"),
    "bin infinity": ("v2", binary([1, 8, 8], INF), 400, "NaN or infinite"),
    "bin header length not a number": ("v2", (GOOD, {HEADER_LENGTH: "x"}), 400, "must be an integer"),
    "native wrong shape": ("native", {"inputs": [[1.0, 2.0]]}, 400, "shape"),
    "native strings": ("native", {"inputs": [["a"] * 64]}, 400, "numbers"),
    "native numeric strings": ("native", {"inputs": [["7"] * 64]}, 400, "found strings"),
    "native null": ("native", {"inputs": [[None] + [0.0] * 63]}, 400, "found null"),
    "native a boolean among numbers": ("native", {"inputs": [[True] + [0.0] * 63]}, 400, "found booleans"),
    "native budget true": ("native", {"inputs": [ROW], "latency_budget_ms": True}, 400, "must be a number"),
    "native budget string": ("native", {"inputs": [ROW], "latency_budget_ms": "5"}, 400, "must be a number"),
    "native priority true": (
        "native",
        {"inputs": [ROW], "priority": True},
        400,
        "'priority' must be an integer",
    ),
    "native priority string": (
        "native",
        {"inputs": [ROW], "priority": "5"},
        400,
        "'priority' must be an integer",
    ),
    "native timeout true": ("native", {"inputs": [ROW], "timeout_ms": True}, 400, "must be a number"),
    "native timeout string": ("native", {"inputs": [ROW], "timeout_ms": "5"}, 400, "must be a number"),
    # the bound, checked on the parsed float64 before the cast to float32 (models.rows_of_numbers)
    "native at the input bound": (
        "native",
        {"inputs": [[2.0**100 - 2.0**75] + [0.0] * 63]},
        400,
        "NaN or infinite",
    ),
    "native beyond float32": ("native", {"inputs": [[0.0] * 63 + [-1e300]]}, 400, "NaN or infinite"),
    "native overflowing int": ("native", {"inputs": [[10**400] + [0] * 63]}, 400, "numbers"),
    "native empty batch": ("native", {"inputs": []}, 400, "inputs"),
    "native too many items": ("native", {"inputs": [ROW] * (QUEUE + 1)}, 400, "exceed the queue limit"),
    "native malformed JSON": ("native", '{"inputs": [', 400, "JSON"),
    "native budget out of range": ("native", {"inputs": [ROW], "min_accuracy": -1}, 400, "min_accuracy"),
    "native unknown level": ("native", {"inputs": [ROW], "sparsity_level": 0.3}, 404, "no sparsity level"),
    "oversized body": ("v2", v2([1, 8, 8], [0.0] * 64) | {"pad": "x" * LIMIT}, 413, "limit of 16384 bytes"),
    "oversized native": ("native", {"inputs": [ROW], "pad": "x" * LIMIT}, 413, "limit"),
}


def send(client: TestClient, manifest: Manifest, api: str, body: Any, model: str | None = None) -> Any:
    name = model or manifest.name
    url = f"/v1/models/{name}/predict" if api == "native" else f"/v2/models/{name}/infer"
    if isinstance(body, tuple):
        return client.post(url, content=body[0], headers=body[1])
    text = body if isinstance(body, str) else json.dumps(body)
    return client.post(url, content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_a_4xx_that_says_why(small: TestClient, manifest: Manifest, case: str) -> None:
    api, body, status, message = CASES[case]
    r = send(small, manifest, api, body)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert set(r.json()) == {"error", "request_id"} and r.json()["request_id"] == r.headers["x-request-id"]
    assert (
        send(small, manifest, api, {"inputs": [ROW]} if api == "native" else v2([1, 8, 8])).status_code == 200
    )


@pytest.mark.parametrize("api", ["native", "v2"])
def test_unknown_model_is_404(small: TestClient, manifest: Manifest, api: str) -> None:
    body = {"inputs": [ROW]} if api == "native" else v2([1, 8, 8])
    r = send(small, manifest, api, body, model="nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]


def test_a_body_without_length_is_cut_off_at_the_limit(small: TestClient, manifest: Manifest) -> None:
    before = metric(
        small, "circuitserve_requests_total", model=manifest.name, level="none", outcome="bad_request"
    )

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse it up front
        yield json.dumps(v2([1, 8, 8]))[:-1].encode() + b', "pad": "'
        for _ in range(8):
            yield b"x" * 4096
        yield b'"}'

    for url in (f"/v2/models/{manifest.name}/infer", f"/v1/models/{manifest.name}/predict"):
        r = small.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit of 16384 bytes" in r.json()["error"], r.text
    after = metric(
        small, "circuitserve_requests_total", model=manifest.name, level="none", outcome="bad_request"
    )
    assert after == before + 2  # each counted once, against its model
