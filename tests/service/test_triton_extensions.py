"""Triton's model configuration, statistics and classification extensions, gzip/deflate request
bodies and GET /v2/models, driven by unmodified tritonclient.http against a real uvicorn."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from service_helpers import live_server, make_settings, sample_inputs, v2_tensor
from starlette.exceptions import HTTPException
from tritonclient.utils import InferenceServerException

from export.manifest import Manifest
from service.content_encoding import Decoder
from service.routes.v2 import EXTENSIONS

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def address(bundle_path: Path) -> Iterator[str]:
    with live_server(make_settings(bundle_path, max_body_bytes=LIMIT)) as addr:
        yield addr


def _infer(
    triton_client: triton.InferenceServerClient,
    manifest: Manifest,
    x: np.ndarray,
    outputs: list[triton.InferRequestedOutput] | None = None,
    **kwargs: object,
) -> triton.InferResult:
    inp = triton.InferInput(manifest.input.name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return triton_client.infer(manifest.name, [inp], outputs=outputs, **kwargs)


def test_every_extension_is_advertised(triton_client: triton.InferenceServerClient) -> None:
    extensions = triton_client.get_server_metadata()["extensions"]
    assert extensions == EXTENSIONS
    for name in ("model_configuration", "statistics", "classification", "model_repository"):
        assert name in extensions


def test_model_config_is_triton_shaped(
    triton_client: triton.InferenceServerClient, manifest: Manifest
) -> None:
    config = triton_client.get_model_config(manifest.name)
    assert config == triton_client.get_model_config(manifest.name, model_version=manifest.version)
    assert config["name"] == manifest.name and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [8, 8]}]
    assert [o["dims"] for o in config["output"]] == [[10], [10]]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 1000  # make_settings: 1 ms
    assert batching["priority_levels"] > 1 and batching["default_queue_policy"]["max_queue_size"] == 4096
    params = config["parameters"]
    assert params["sparsity_levels"]["string_value"] == "full,1/2,1/4,1/8"
    assert params["default_level"]["string_value"] == "full"
    assert all(isinstance(p["string_value"], str) for p in params.values())  # Triton's ModelParameter
    with pytest.raises(InferenceServerException, match="no version '7'"):
        triton_client.get_model_config(manifest.name, model_version="7")
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_client.get_model_config("nope")


def test_statistics_count_requests_per_model_version_and_level(
    triton_client: triton.InferenceServerClient, manifest: Manifest
) -> None:
    def ours(stats: dict[str, list[dict[str, object]]]) -> dict[str, object]:
        (entry,) = [s for s in stats["model_stats"] if s["name"] == manifest.name]
        return entry

    before = ours(triton_client.get_inference_statistics())
    _infer(triton_client, manifest, sample_inputs(manifest, 3), parameters={"sparsity_level": "1/4"})
    _infer(triton_client, manifest, sample_inputs(manifest, 2), parameters={"sparsity_level": "1/4"})
    after = triton_client.get_inference_statistics(manifest.name)
    assert after == triton_client.get_inference_statistics(manifest.name, manifest.version)
    entry = ours(after)
    assert entry["version"] == manifest.version
    assert entry["inference_count"] == before["inference_count"] + 5  # type: ignore[operator]
    assert entry["execution_count"] >= before["execution_count"] + 2  # type: ignore[operator]
    assert entry["last_inference"] > 0  # type: ignore[operator]
    stats = entry["inference_stats"]
    assert isinstance(stats, dict)
    assert stats["success"]["count"] == before["inference_stats"]["success"]["count"] + 2  # type: ignore[index]
    assert stats["success"]["ns"] > 0 and stats["compute_infer"]["ns"] > 0 and stats["fail"]["count"] == 0
    assert {"queue", "compute_input", "compute_output", "cache_hit", "cache_miss"} <= set(stats)
    assert {b["batch_size"] for b in entry["batch_stats"]} >= {2, 3}  # type: ignore[attr-defined]
    levels = entry["sparsity_levels"]
    assert isinstance(levels, dict) and set(levels) == {"full", "1/2", "1/4", "1/8"}
    assert levels["1/4"]["inference_count"] - before["sparsity_levels"]["1/4"]["inference_count"] == 5  # type: ignore[index]
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton_client.get_inference_statistics("stats-of-nothing")


@pytest.mark.parametrize("binary", [True, False])
def test_classification_returns_top_classes(
    triton_client: triton.InferenceServerClient, manifest: Manifest, binary: bool
) -> None:
    x = sample_inputs(manifest, 4, seed=3)
    plain = _infer(triton_client, manifest, x).as_numpy("probabilities")
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
    result = _infer(triton_client, manifest, x, outputs=outputs)
    assert result.get_output("probabilities")["datatype"] == "BYTES"
    top = result.as_numpy("probabilities")
    assert top is not None and plain is not None and top.shape == (4, 3)
    for row, probs in zip(top, plain, strict=True):
        parts = [(b if isinstance(b, bytes) else str(b).encode()).decode().split(":") for b in row]
        indices = [int(p[1]) for p in parts]
        assert indices == list(np.argsort(-probs, kind="stable")[:3])
        assert [p[2] for p in parts] == [manifest.labels[i] for i in indices]
        np.testing.assert_allclose([float(p[0]) for p in parts], probs[indices], atol=1e-6)
    too_many = [triton.InferRequestedOutput("probabilities", class_count=11)]
    with pytest.raises(InferenceServerException, match="classification 11"):
        _infer(triton_client, manifest, x, outputs=too_many)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_decoded(
    triton_client: triton.InferenceServerClient, manifest: Manifest, algorithm: str
) -> None:
    x = sample_inputs(manifest, 5, seed=4)
    plain = _infer(triton_client, manifest, x).as_numpy("probabilities")
    packed = _infer(triton_client, manifest, x, request_compression_algorithm=algorithm).as_numpy(
        "probabilities"
    )
    np.testing.assert_array_equal(packed, plain)


def test_compressed_bodies_are_held_to_the_limit_once_decoded(address: str, manifest: Manifest) -> None:
    x = sample_inputs(manifest, 1)
    body = httpx.Request("POST", "/", json={"inputs": [v2_tensor(manifest, x)]}).content
    path = f"/v2/models/{manifest.name}/infer"
    bomb = gzip.compress(b" " * (LIMIT * 64))  # JSON whitespace: fine but for its size
    assert len(bomb) < LIMIT // 4
    with httpx.Client(base_url=f"http://{address}") as http:
        ok = http.post(path, content=zlib.compress(body), headers={"Content-Encoding": "deflate"})
        assert ok.status_code == 200
        for target in (path, "/v1/models/" + manifest.name + "/predict"):
            r = http.post(target, content=bomb, headers={"Content-Encoding": "gzip"})
            assert r.status_code == 413 and "decoded" in r.json()["error"], target
        r = http.post(path, content=body, headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and "gzip" in r.json()["error"]
        r = http.post(path, content=gzip.compress(body)[:-9], headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["error"]
        r = http.post(path, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400
        assert http.get("/v2/health/ready").status_code == 200


def test_models_are_listed_for_kserve(address: str, manifest: Manifest) -> None:
    assert httpx.get(f"http://{address}/v2/models").json() == {"models": [manifest.name]}


def test_the_decoder_streams_and_stops_at_the_limit() -> None:
    data = b'{"inputs": []}' * 100
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for packed in (gzip.compress(data), zlib.compress(data), raw.compress(data) + raw.flush()):
        name = "gzip" if packed[:2] == b"\x1f\x8b" else "deflate"
        decoder = Decoder(name, len(data), lambda: "too large")
        chunks = [packed[i : i + 7] for i in range(0, len(packed), 7)]
        out = b"".join(decoder.feed(c, i == len(chunks) - 1) for i, c in enumerate(chunks))
        assert out == data
        small = Decoder(name, len(data) - 1, lambda: "too large")
        with pytest.raises(HTTPException) as refused:
            for c in chunks:
                small.feed(c, False)
        assert refused.value.status_code == 413 and small.seen == len(data)  # never inflated past it
    with pytest.raises(HTTPException) as unknown:
        Decoder("br", 10, lambda: "")
    assert unknown.value.status_code == 415
