"""The live model repository and model versions (Triton's model repository extension), driven by
unmodified tritonclient.http against a real uvicorn: the admin token, the index, loading a new
version under load with every request answered, unloading with queued work drained, checksums."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from service_helpers import SLOW, asgi_client, live_server, make_settings, sample_inputs
from synthetic_bundle import write_bundle
from tritonclient.utils import InferenceServerException

from export.manifest import MANIFEST_FILE, Manifest, read_manifest
from service.app import create_app

ADMIN = "admin-7Hq2-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
NAME = "repo-model"


class Slow(ort.InferenceSession):  # type: ignore[misc]  # onnxruntime has no stubs
    """A batch whose first value is SLOW + ms sleeps that many milliseconds."""

    def run(self, names: Any, feed: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        first = float(next(iter(feed.values())).flat[0])
        if first >= SLOW:
            time.sleep((first - SLOW) / 1000)
        return super().run(names, feed, *args, **kwargs)


def versioned(directory: Path, version: str, seed: int) -> Path:
    write_bundle(directory, name=NAME, seed=seed)
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": version}))
    return directory


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("staging")
    versioned(root / "2", "2", seed=1)
    versioned(root / "3", "3", seed=2)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    versioned(root / NAME / "1", "1", seed=0)
    return root


@pytest.fixture(scope="module")
def address(repo: Path) -> Iterator[str]:
    settings = make_settings(repo / NAME / "1", bundles=[], repository=repo, admin_token=ADMIN)
    with live_server(settings, session_factory=Slow) as addr:
        yield addr


@pytest.fixture(scope="module")
def manifest(repo: Path) -> Manifest:
    return read_manifest(repo / NAME / "1")


def infer(
    triton_client: triton.InferenceServerClient, x: np.ndarray, version: str = ""
) -> triton.InferResult:
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return triton_client.infer(NAME, [inp], model_version=version)


def served_version(result: triton.InferResult) -> str:
    version: str = result.get_response()["model_version"]
    return version


def test_repository_endpoints_take_the_admin_token(
    address: str, triton_client: triton.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException, match="admin bearer token"):
        triton_client.get_model_repository_index()
    with httpx.Client(base_url=f"http://{address}") as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}):
            for path in ("/v2/repository/index", f"/v2/repository/models/{NAME}/unload"):
                r = http.post(path, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
                assert ADMIN not in r.text
    assert triton_client.get_model_repository_index(headers=AUTH) == [
        {"name": NAME, "version": "1", "state": "READY", "reason": ""}
    ]


def test_without_an_admin_token_the_repository_endpoints_are_off(bundle_path: Path) -> None:
    with asgi_client(create_app(make_settings(bundle_path, auth_token="t"))) as http:
        for path in ("/v2/repository/index", "/v2/repository/models/synthetic/unload"):
            r = http.post(path, headers={"Authorization": "Bearer t"})
            assert r.status_code == 403 and "admin_token" in r.json()["error"]


def test_a_new_version_is_swapped_in_under_load_without_losing_a_request(
    address: str, triton_client: triton.InferenceServerClient, repo: Path, staging: Path, manifest: Manifest
) -> None:
    stop, seen, failures = threading.Event(), [], []

    def loop() -> None:
        own = triton.InferenceServerClient(address)
        x = sample_inputs(manifest, 2)
        while not stop.is_set():
            try:
                seen.append(served_version(infer(own, x)))
            except Exception as exc:  # every one is a lost request
                failures.append(repr(exc))
        own.close()

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(0.3)
        shutil.copytree(staging / "2", repo / NAME / "2")
        index = triton_client.get_model_repository_index(headers=AUTH)
        assert {r["version"]: r["state"] for r in index} == {"1": "READY", "2": "UNAVAILABLE"}
        triton_client.load_model(NAME, headers=AUTH)
        assert triton_client.get_model_metadata(NAME)["versions"] == ["1", "2"]
        x = sample_inputs(manifest, 1)
        assert served_version(infer(triton_client, x)) == "2"  # the latest is the default
        assert served_version(infer(triton_client, x, version="1")) == "1"
        assert triton_client.is_model_ready(NAME, model_version="1") and triton_client.is_model_ready(
            NAME, "2"
        )
        assert not np.allclose(
            infer(triton_client, x).as_numpy("logits"), infer(triton_client, x, "1").as_numpy("logits")
        )
        time.sleep(0.3)
        shutil.rmtree(repo / NAME / "1")  # gone from disk: the next load drops it
        triton_client.load_model(NAME, headers=AUTH)
        assert triton_client.get_model_metadata(NAME)["versions"] == ["2"]
        with pytest.raises(InferenceServerException, match="no version '1'"):
            infer(triton_client, x, version="1")
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert failures == []
    assert seen.count("1") > 0 and seen.count("2") > 0 and seen[-1] == "2"
    assert seen == sorted(seen)  # once the switch happened, no answer came from version 1 again
    stats = triton_client.get_inference_statistics(NAME)["model_stats"]
    assert [s["version"] for s in stats] == ["2"] and stats[0]["inference_count"] > 0


def test_a_load_that_fails_its_checksums_changes_nothing(
    triton_client: triton.InferenceServerClient, repo: Path, staging: Path
) -> None:
    bad = shutil.copytree(staging / "3", repo / NAME / "3")
    level_file = next(bad.glob("*.onnx"))
    level_file.write_bytes(level_file.read_bytes() + b"tampered")
    try:
        with pytest.raises(InferenceServerException, match="checksum"):
            triton_client.load_model(NAME, headers=AUTH)
        assert triton_client.get_model_metadata(NAME)["versions"] == ["2"]
        reasons = {r["version"]: r for r in triton_client.get_model_repository_index(headers=AUTH)}
        assert reasons["3"]["state"] == "UNAVAILABLE" and "checksum" in reasons["3"]["reason"]
        assert reasons["2"]["state"] == "READY"
    finally:
        shutil.rmtree(bad)
    with pytest.raises(InferenceServerException, match="no bundle for model 'nope'"):
        triton_client.load_model("nope", headers=AUTH)


def test_unload_drains_queued_work_then_drops_the_model(
    address: str, triton_client: triton.InferenceServerClient, manifest: Manifest
) -> None:
    answers: list[str] = []

    def slow_request() -> None:
        own = triton.InferenceServerClient(address)
        x = np.full((1, *manifest.input.shape[1:]), SLOW + 600, dtype=np.float32)
        answers.append(served_version(infer(own, x)))
        own.close()

    first = threading.Thread(target=slow_request)
    first.start()
    time.sleep(0.2)  # running now
    queued = threading.Thread(target=slow_request)
    queued.start()
    time.sleep(0.2)  # and one queued behind it
    t0 = time.monotonic()
    triton_client.unload_model(NAME, headers=AUTH)
    took = time.monotonic() - t0
    first.join(timeout=30)
    queued.join(timeout=30)
    assert answers == ["2", "2"] and took > 0.5  # both answered before the unload returned
    with pytest.raises(InferenceServerException, match="unknown model"):
        infer(triton_client, sample_inputs(manifest, 1))
    assert triton_client.get_model_repository_index(headers=AUTH) == [
        {"name": NAME, "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    with pytest.raises(InferenceServerException, match="not loaded"):
        triton_client.unload_model(NAME, headers=AUTH)
    triton_client.load_model(NAME, headers=AUTH)
    assert served_version(infer(triton_client, sample_inputs(manifest, 1))) == "2"


def test_admin_bodies_are_decoded_and_bounded(address: str) -> None:
    with httpx.Client(base_url=f"http://{address}", headers=AUTH) as http:
        r = http.post("/v2/repository/index", content=gzip.compress(b'{"ready": true}'),
                      headers={"Content-Encoding": "gzip"})  # fmt: skip
        assert r.status_code == 200 and [e["state"] for e in r.json()] == ["READY"]
        bomb = gzip.compress(b" " * (16 << 20))
        r = http.post(
            f"/v2/repository/models/{NAME}/load", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 413 and "decoded" in r.json()["error"]
        r = http.post(f"/v2/repository/models/{NAME}/load", json={"parameters": {"config": "{}"}})
        assert r.status_code == 400 and "not supported" in r.json()["error"]
