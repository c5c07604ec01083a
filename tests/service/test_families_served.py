"""One real uvicorn serving a bundle of every registered family side by side: each model's every
level answers as its own graph, and the level table shows each family's units and knobs."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from service_helpers import live_server, make_settings, v2_tensor

from export.manifest import read_manifest
from model.data import load_dataset
from model.families import FAMILIES


def test_one_server_serves_every_family(family_bundles: dict[str, Path]) -> None:
    assert set(family_bundles) == set(FAMILIES)
    paths = [family_bundles[name] for name in sorted(family_bundles)]
    x = load_dataset("digits").test.x[:8]
    with live_server(make_settings(paths[0], bundles=paths)) as address:
        table = {m["name"]: m for m in httpx.get(f"http://{address}/v1/models", timeout=30).json()}
        for path in paths:
            manifest = read_manifest(path)
            info = table[manifest.name]
            assert (info["family"], info["unit"]) == (manifest.family, manifest.unit)
            assert {lv["name"]: (lv["units"], lv["knobs"]) for lv in info["levels"]} == {
                lv.name: (lv.units, lv.knobs) for lv in manifest.levels
            }
            for level in manifest.levels:
                want = ort.InferenceSession(str(path / level.file)).run(["probabilities"], {"input": x})[0]
                body = {"inputs": [v2_tensor(manifest, x)], "parameters": {"sparsity_level": level.name}}
                r = httpx.post(f"http://{address}/v2/models/{manifest.name}/infer", json=body, timeout=30)
                assert r.status_code == 200, r.text
                out = {o["name"]: o for o in r.json()["outputs"]}["probabilities"]
                got = np.asarray(out["data"], np.float32).reshape(out["shape"])
                np.testing.assert_allclose(got, want, atol=1e-5)
                assert r.json()["parameters"]["sparsity_level"] == level.name
        interpreter = {lv["name"]: lv["knobs"] for lv in table["tiny-interpreter"]["levels"]}
        assert interpreter["full"] == {"iterations": 2} and interpreter["1/4"] == {"iterations": 1}
