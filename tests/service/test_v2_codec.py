"""Open Inference Protocol bodies: JSON and binary tensor data, both directions, and bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from service.errors import BadRequest
from service.v2_codec import HEADER_LENGTH, encode_response, parse_request


def binary_body(header: Any, *arrays: np.ndarray) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(a.astype("<f4").tobytes() for a in arrays), str(len(text))


def test_json_data_flat_or_nested() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for data in (x.ravel().tolist(), x.tolist()):
        doc = {"id": "7", "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": data}]}
        req = parse_request(json.dumps(doc).encode(), None)
        np.testing.assert_array_equal(req.inputs[0].array, x)
        assert req.id == "7" and req.outputs is None and req.parameters == {}


def test_binary_inputs_are_read_in_order() -> None:
    a, b = np.ones((2, 3), np.float32), np.arange(4, dtype=np.float32).reshape(1, 4)
    header = {
        "parameters": {"binary_data_output": True, "latency_budget_ms": 3},
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            {"name": "b", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        ],
        "outputs": [{"name": "p", "parameters": {"binary_data": False}}, {"name": "q"}],
    }
    req = parse_request(*binary_body(header, a, b))
    np.testing.assert_array_equal(req.inputs[0].array, a)
    np.testing.assert_array_equal(req.inputs[1].array, b)
    assert req.outputs == {"p": False, "q": True} and req.binary_output
    assert req.parameters["latency_budget_ms"] == 3


def test_response_binary_and_json_outputs() -> None:
    p = np.array([[0.25, 0.75]], np.float32)
    body, headers = encode_response({"model_name": "m", "id": "1"}, [("p", p, True), ("q", p, False)])
    split = int(headers[HEADER_LENGTH])
    doc = json.loads(body[:split])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[split:], "<f4").reshape(1, 2), p)
    assert doc["outputs"][1]["data"] == [0.25, 0.75] and doc["id"] == "1"
    body, headers = encode_response({"model_name": "m"}, [("p", p, False)])
    assert HEADER_LENGTH not in headers and json.loads(body)["outputs"][0]["shape"] == [1, 2]


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"not json", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (
            b'{"inputs": [{"name": "x", "shape": [2], "datatype": "STRING", "data": [1, 2]}]}',
            None,
            "datatype",
        ),
        (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}', None, "fill"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}]}', None, "FP32"),
        (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}', None, "shape"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "data"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "zz", "integer"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "999", "outside"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
            b' "outputs": [{"name": "p", "parameters": {"classification": 0}}]}',
            None,
            "classification must be a positive integer",
        ),
    ],
)
def test_bad_requests_say_what_is_wrong(body: bytes, header_length: str | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(body, header_length)


def test_binary_sizes_must_match() -> None:
    header = {
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]
    }
    with pytest.raises(BadRequest, match="binary_data_size"):
        parse_request(*binary_body(header, np.ones(1)))
    header["inputs"][0]["parameters"] = {"binary_data_size": 8}
    with pytest.raises(BadRequest, match="fewer"):
        parse_request(*binary_body(header, np.ones(1)))
    with pytest.raises(BadRequest, match="no input claims"):
        parse_request(*binary_body(header, np.ones(3)))
