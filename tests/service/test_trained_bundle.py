"""The whole spine: a model trained and exported by model/ and export/, served by a real uvicorn,
answered through tritonclient (binary and JSON) and the native API, checked against onnxruntime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from service_helpers import live_server, make_settings

from export.manifest import read_manifest
from model.data import load_dataset


@pytest.fixture(scope="module")
def served(trained_bundle: Path) -> Iterator[str]:
    with live_server(make_settings(trained_bundle)) as address:
        yield address


def test_every_level_answers_as_its_graph(trained_bundle: Path, served: str) -> None:
    manifest = read_manifest(trained_bundle)
    x = load_dataset("digits").test.x[:16]
    client = triton.InferenceServerClient(served)
    for level in manifest.levels:
        expected = ort.InferenceSession(str(trained_bundle / level.file)).run(
            ["probabilities"], {"input": x}
        )[0]
        for binary in (True, False):
            inp = triton.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput("probabilities", binary_data=binary)
            result = client.infer("tiny", [inp], outputs=[out], parameters={"sparsity_level": level.name})
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
            assert result.get_response()["parameters"]["sparsity_level"] == level.name
    client.close()


def test_native_api_on_raw_digits(trained_bundle: Path, served: str) -> None:
    data = load_dataset("digits").test
    body = {"inputs": data.x[:4].tolist(), "min_accuracy": 0.0, "top_k": 2}
    r = httpx.post(f"http://{served}/v1/models/tiny/predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["policy"] == "min_accuracy" and out["budget_met"] is True
    assert out["sparsity_level"] in {lv.name for lv in read_manifest(trained_bundle).levels}
    level = next(lv for lv in read_manifest(trained_bundle).levels if lv.name == out["sparsity_level"])
    assert out["expected_accuracy"] == level.accuracy
    assert [len(p["top_k"]) for p in out["predictions"]] == [2, 2, 2, 2]
    assert all(p["label"] in [str(i) for i in range(10)] for p in out["predictions"])
