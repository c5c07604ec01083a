"""Faults: a level whose session fails at run time, bundle files changed after export, and bundles
that are ONNX and JSON only (nothing is ever unpickled)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi import FastAPI
from service_helpers import asgi_client, make_settings, metric, sample_inputs

from export.manifest import MANIFEST_FILE, Manifest
from service.app import create_app

BROKEN = "1/8"


class Flaky:
    """A real session that raises from run() while `failing` is set (after warm-up)."""

    failing = threading.Event()

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        self.inner = ort.InferenceSession(model, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing.is_set():
            raise RuntimeError("device lost")
        return self.inner.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failing_level_fails_its_batch_with_500_and_nothing_else(
    bundle_path: Path, manifest: Manifest
) -> None:
    broken_file = (bundle_path / next(lv.file for lv in manifest.levels if lv.name == BROKEN)).read_bytes()

    def factory(model: Any, *args: Any, **kwargs: Any) -> Any:
        return (
            Flaky(model, *args, **kwargs)
            if model == broken_file
            else ort.InferenceSession(model, *args, **kwargs)
        )

    x = sample_inputs(manifest, 1).tolist()
    url = f"/v1/models/{manifest.name}/predict"
    app = create_app(make_settings(bundle_path, max_queue_delay_ms=50), session_factory=factory)
    with asgi_client(app) as client, ThreadPoolExecutor(8) as pool:

        def call(level: str) -> Any:
            return client.post(url, json={"inputs": x, "sparsity_level": level})

        Flaky.failing.set()
        try:
            failed = list(pool.map(call, [BROKEN] * 6))
            others = list(pool.map(call, ["full", "1/2", "1/4"]))
            assert client.get("/v2/health/ready").status_code == 200
        finally:
            Flaky.failing.clear()
        assert all(r.status_code == 500 for r in failed), [r.text for r in failed]
        assert all(
            "inference failed" in r.json()["error"] and "device lost" in r.json()["error"] for r in failed
        )
        assert all(r.status_code == 200 for r in others), [r.text for r in others]
        errors = metric(
            client, "circuitserve_requests_total", model=manifest.name, level=BROKEN, outcome="error"
        )
        assert errors == 6
        r = call(BROKEN)
        assert r.status_code == 200 and r.json()["sparsity_level"] == BROKEN  # the level recovers


def test_a_file_changed_between_verify_and_load_is_refused(bundle_path: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_path, bundle)
    victim = bundle / json.loads((bundle / MANIFEST_FILE).read_text())["levels"][-1]["file"]

    def tamper_then_open(model: Any, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        victim.write_bytes(victim.read_bytes() + b"\0")  # after verify_bundles, before its session
        return ort.InferenceSession(model, *args, **kwargs)

    app = create_app(make_settings(bundle), session_factory=tamper_then_open)
    with asgi_client(app, ready=False) as client:
        failure = load_failure(app)
        assert client.get("/v2/health/ready").status_code == 503
        assert "fails its checksum" in failure and "changed after export" in failure
        r = client.post("/v2/models/synthetic/infer", json={})
        assert r.status_code == 503 and "fails its checksum" in r.json()["error"]


def load_failure(app: FastAPI) -> str:
    """Why loading failed, once it has (it runs in the background after the start)."""
    deadline = time.monotonic() + 30
    while not app.state.engine.failure:
        assert time.monotonic() < deadline, "loading did not fail"
        time.sleep(0.02)
    return str(app.state.engine.failure)


class Bomb:
    """Unpickling this writes a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled"))


def test_bundles_are_onnx_and_json_only(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_path, bundle)
    bomb = pickle.dumps(Bomb(marker))
    for name in ("model.pkl", "weights.pt", "extra.npy", "level-full.pickle"):
        (bundle / name).write_bytes(bomb)
    for banned in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, banned, lambda *a, **k: pytest.fail("something unpickled"))
    with asgi_client(create_app(make_settings(bundle))) as client:
        x = np.zeros((1, 8, 8), np.float32).tolist()
        assert client.post("/v1/models/synthetic/predict", json={"inputs": x}).status_code == 200
    # a pickle posing as a level file, its checksum even updated: onnxruntime refuses it, unread
    doc = json.loads((bundle / MANIFEST_FILE).read_text())
    (bundle / doc["levels"][0]["file"]).write_bytes(bomb)
    doc["levels"][0]["sha256"] = hashlib.sha256(bomb).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(doc))
    app = create_app(make_settings(bundle))
    with asgi_client(app, ready=False):
        assert "protobuf" in load_failure(app).lower()
    assert not marker.exists()
    root = Path(__file__).parents[2]
    sources = [*(root / "service").rglob("*.py"), root / "export" / "manifest.py"]
    for source in sources:
        text = source.read_text()
        assert not any(s in text for s in ("import pickle", "torch.load", "joblib", "allow_pickle=True")), (
            source
        )
