"""The app's life: default level, not ready while loading, a broken bundle stops the start."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from service_helpers import asgi_client, make_settings, metric, sample_inputs, wait_ready

from export.manifest import Manifest
from service.app import create_app, serve
from service.loader import StartupError


def predict(client: TestClient, manifest: Manifest) -> Any:
    inputs = sample_inputs(manifest, 1).tolist()
    return client.post(f"/v1/models/{manifest.name}/predict", json={"inputs": inputs})


def test_default_level_setting(bundle_path: Path, manifest: Manifest) -> None:
    with asgi_client(create_app(make_settings(bundle_path, default_level="0.25"))) as client:
        body = predict(client, manifest).json()
        assert (body["sparsity_level"], body["policy"]) == ("1/4", "default")


def test_not_ready_until_loaded_then_ready(bundle_path: Path, manifest: Manifest) -> None:
    release = threading.Event()

    def slow_factory(*args: Any, **kwargs: Any) -> ort.InferenceSession:
        release.wait(10)
        return ort.InferenceSession(*args, **kwargs)

    app = create_app(make_settings(bundle_path), session_factory=slow_factory)
    with asgi_client(app, ready=False) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").status_code == 503
        r = predict(client, manifest)
        assert r.status_code == 503 and "Retry-After" in r.headers and "not ready" in r.json()["error"]
        assert metric(client, "circuitserve_ready") == 0
        release.set()
        wait_ready(client.get)
        assert predict(client, manifest).status_code == 200


def test_a_bundle_that_fails_its_checksum_stops_the_start(bundle_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    level_file = next(broken.glob("*.onnx"))
    level_file.write_bytes(level_file.read_bytes() + b"\0")
    with pytest.raises(Exception, match="checksum"), TestClient(create_app(make_settings(broken))):
        pass
    with pytest.raises(StartupError, match="checksum"):
        serve(make_settings(broken, port=0))
