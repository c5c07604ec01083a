"""One server, two families: a NAC bundle and a Neural Interpreter bundle side by side (real
uvicorn), each level answering as its own graph, the interpreter's levels naming their knobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from service_helpers import live_server, make_settings

from export.manifest import read_manifest
from model.data import load_dataset


@pytest.fixture(scope="module")
def served(trained_bundle: Path, interpreter_bundle: Path) -> Iterator[str]:
    settings = make_settings(trained_bundle, bundles=[trained_bundle, interpreter_bundle])
    with live_server(settings) as address:
        yield address


def test_both_families_are_listed_with_their_units_and_knobs(served: str) -> None:
    models = {m["name"]: m for m in httpx.get(f"http://{served}/v1/models", timeout=30).json()}
    assert set(models) == {"tiny", "tiny-ni"}
    assert (models["tiny"]["family"], models["tiny"]["unit"]) == ("nac", "modules")
    assert (models["tiny-ni"]["family"], models["tiny-ni"]["unit"]) == ("interpreter", "functions")
    assert all(lv["knobs"] == {} for lv in models["tiny"]["levels"])
    knobs = {lv["name"]: (lv["units"], lv["knobs"]) for lv in models["tiny-ni"]["levels"]}
    assert knobs["full"] == (4, {"iterations": 2}) and knobs["1/4"] == (2, {"iterations": 1})


@pytest.mark.parametrize("name", ["tiny", "tiny-ni"])
def test_each_level_of_each_family_answers_as_its_graph(
    served: str, trained_bundle: Path, interpreter_bundle: Path, name: str
) -> None:
    bundle = trained_bundle if name == "tiny" else interpreter_bundle
    x = load_dataset("digits").test.x[:3]
    for level in read_manifest(bundle).levels:
        want = ort.InferenceSession(str(bundle / level.file), providers=["CPUExecutionProvider"]).run(
            ["probabilities"], {"input": x}
        )[0]
        body = {"inputs": x.tolist(), "sparsity_level": level.name}
        r = httpx.post(f"http://{served}/v1/models/{name}/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["sparsity_level"] == level.name
        got = np.array([row["probabilities"] for row in out["predictions"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
