"""The CUDA serving paths, run here on CPU: bucketed batches, I/O binding into per-bucket buffers,
CUDA graph run options, preload_dlls, FP16 levels and per-provider profiles. Only the GPU is faked:
FakeGpuSession (tests/service/test_runtime.py) is a real CPU session reporting CUDA, and its
"device" buffers are host memory (runtime.CUDA_DEVICE set to "cpu")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from service_helpers import asgi_client, make_settings, sample_inputs, v2_tensor
from test_runtime import FakeGpuSession

from export.fp16 import to_fp16
from export.manifest import CPU_PROVIDER, FP16_SUFFIX, Manifest, read_manifest, sha256_file
from service import runtime
from service.app import create_app
from service.loader import open_model, warm_up
from service.metrics import Metrics
from service.models import UNPROFILED_BATCHES, profile_of
from service.runtime import CPU, CUDA, LevelRunner, SessionConfig, bucket, create_session
from service.settings import SettingsError, load


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """A host that shows a GPU and lists CUDA; preload_dlls recorded, not run; the fake device's
    memory is host memory. Returns the calls, in order, of preload and session creation."""
    calls: list[str] = []
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [CUDA, CPU])
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(runtime, "GPU_DEVICE_PATHS", (tmp_path / "nvidia0",))
    monkeypatch.setattr(runtime.ort, "preload_dlls", lambda: calls.append("preload"), raising=False)
    monkeypatch.setattr(runtime, "_preloaded", [])
    monkeypatch.setattr(runtime, "CUDA_DEVICE", "cpu")
    return calls


class RecordingGpuSession(FakeGpuSession):
    """FakeGpuSession that records its provider options, batch sizes and CUDA graph ids."""

    def __init__(self, path: Any, options: ort.SessionOptions, providers: list[Any]) -> None:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        super().__init__(path, options, names)
        self.asked = providers
        self.rows: list[int] = []
        self.graph_ids: list[str] = []

    def run(self, names: Any, feed: dict[str, np.ndarray], *args: Any) -> Any:
        self.rows.append(len(next(iter(feed.values()))))
        return self.inner.run(names, feed, *args)

    def run_with_iobinding(self, binding: Any, run_options: Any = None) -> None:
        if run_options is not None:
            self.graph_ids.append(run_options.get_run_config_entry("gpu_graph_id"))
        self.inner.run_with_iobinding(binding, run_options)


def _plain(bundle_path: Path, manifest: Manifest, x: np.ndarray) -> dict[str, np.ndarray]:
    session = create_session(bundle_path / manifest.levels[0].file, SessionConfig("cpu"))
    return LevelRunner(session, manifest.input.name, ["logits", "probabilities"])(x)


def test_buckets_are_powers_of_two() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 33, 64, 65, 1000)] == [1, 2, 4, 4, 8, 64, 64, 128, 1024]


@pytest.mark.parametrize("bind", [None, "cpu"])
def test_a_bucketed_batch_is_padded_and_its_answer_sliced(
    bundle_path: Path, manifest: Manifest, bind: str | None
) -> None:
    """On a real CPU session: 3 rows run as 4 (seen by the session), come back as 3, equal to an
    unpadded run; with I/O binding (bind="cpu") the bucket's buffers are made once and refilled."""
    session = RecordingGpuSession(str(bundle_path / manifest.levels[0].file), ort.SessionOptions(), [CPU])
    runner = LevelRunner(
        session, manifest.input.name, ["logits", "probabilities"], buckets=True, bind_device=bind
    )
    x = sample_inputs(manifest, 3)
    want = _plain(bundle_path, manifest, x)
    for rows in (x, x[::-1].copy()):  # the second call reuses the first one's buffers
        got = runner(rows)
        assert {k: v.shape for k, v in got.items()} == {k: (3, len(manifest.labels)) for k in got}
    np.testing.assert_allclose(got["probabilities"], want["probabilities"][::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runner(x)["logits"], want["logits"], rtol=1e-5, atol=1e-5)
    if bind is None:
        assert session.rows == [4, 4, 4]
    else:
        assert session.rows == [] and list(runner._bindings) == [4]
        runner(sample_inputs(manifest, 5))
        assert sorted(runner._bindings) == [4, 8]


def test_unbucketed_binding_takes_any_shape(bundle_path: Path, manifest: Manifest) -> None:
    session = create_session(bundle_path / manifest.levels[0].file, SessionConfig("cpu"))
    runner = LevelRunner(session, manifest.input.name, ["logits", "probabilities"], bind_device="cpu")
    x = sample_inputs(manifest, 7)
    np.testing.assert_allclose(runner(x)["logits"], _plain(bundle_path, manifest, x)["logits"], rtol=1e-5)
    assert runner._bindings == {}


def test_cuda_graphs_replay_one_graph_per_bucket(bundle_path: Path, manifest: Manifest) -> None:
    path = str(bundle_path / manifest.levels[0].file)
    with pytest.raises(ValueError, match="buckets"):
        LevelRunner(RecordingGpuSession(path, ort.SessionOptions(), [CPU]), "x", ["logits"], cuda_graph=True)
    session = RecordingGpuSession(path, ort.SessionOptions(), [CPU])
    runner = LevelRunner(
        session, manifest.input.name, ["logits"], buckets=True, bind_device="cpu", cuda_graph=True
    )
    for n in (1, 3, 4, 30, 2):
        runner(sample_inputs(manifest, n))
    assert session.graph_ids == ["1", "3", "3", "6", "2"]  # log2(bucket) + 1: never 0 (reserved)


@pytest.mark.usefixtures("fake_gpu")
def test_cuda_graph_is_asked_of_the_cuda_provider(bundle_path: Path, manifest: Manifest) -> None:
    path = bundle_path / manifest.levels[0].file
    session = create_session(path, SessionConfig("cuda", cuda_graph=True), RecordingGpuSession)
    assert session.asked == [(CUDA, {"enable_cuda_graph": "1"}), CPU]  # type: ignore[attr-defined]
    session = create_session(path, SessionConfig("cuda"), RecordingGpuSession)
    assert session.asked == [CUDA, CPU]  # type: ignore[attr-defined]


def test_preload_runs_once_before_the_first_cuda_session(
    bundle_path: Path, manifest: Manifest, fake_gpu: list[str]
) -> None:
    path = bundle_path / manifest.levels[0].file

    def factory(*args: Any, **kwargs: Any) -> FakeGpuSession:
        fake_gpu.append("session")
        names = [p[0] if isinstance(p, tuple) else p for p in kwargs["providers"]]
        return FakeGpuSession(args[0], args[1], names)

    create_session(path, SessionConfig("cpu"), factory)  # asked for CPU: nothing loaded
    assert fake_gpu == ["session"]
    create_session(path, SessionConfig("auto"), factory)
    create_session(path, SessionConfig("cuda"), factory)
    assert fake_gpu == ["session", "preload", "session", "session"]


def test_no_preload_on_a_host_without_a_gpu(
    bundle_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runtime, "GPU_DEVICE_PATHS", (tmp_path / "absent",))
    monkeypatch.setattr(runtime.ort, "preload_dlls", lambda: calls.append("preload"), raising=False)
    monkeypatch.setattr(runtime, "_preloaded", [])
    session = create_session(bundle_path / manifest.levels[0].file, SessionConfig("auto"))
    assert session.get_providers() == [CPU] and calls == []


def test_preload_output_goes_to_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime, "_preloaded", [])
    monkeypatch.setattr(
        runtime.ort, "preload_dlls", lambda: print("Failed to load libcudnn.so.9"), raising=False
    )
    with caplog.at_level("INFO", logger="service.runtime"):
        runtime.preload_cuda_libraries()
        runtime.preload_cuda_libraries()  # once per process
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records] == [
        "onnxruntime.preload_dlls: Failed to load libcudnn.so.9"
    ]


# --- settings --------------------------------------------------------------------------------


def test_cuda_graphs_need_buckets_and_a_gpu_provider(bundle_path: Path) -> None:
    with pytest.raises(SettingsError, match="cuda_graphs needs batch_buckets"):
        load(bundles=[bundle_path], cuda_graphs=True, batch_buckets=False)
    with pytest.raises(SettingsError, match="CIRCUITSERVE_PROVIDER"):
        load(bundles=[bundle_path], cuda_graphs=True, provider="cpu")
    assert load(bundles=[bundle_path], cuda_graphs=True, provider="cuda").batch_buckets is None


# --- a bundle with FP16 twins and a CUDA profile ---------------------------------------------


@pytest.fixture(scope="module")
def fp16_bundle(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic bundle plus an FP16 twin of its full level (export.fp16) and, for 1/2 only,
    a latency table measured on CUDA (made up)."""
    out = tmp_path_factory.mktemp("fp16") / "synthetic"
    shutil.copytree(bundle_path, out)
    raw = json.loads((out / "manifest.json").read_text())
    full = next(lv for lv in raw["levels"] if lv["name"] == "full")
    twin_file = full["file"].replace(".onnx", "-fp16.onnx")
    onnx.save(to_fp16(onnx.load(str(out / full["file"]))), str(out / twin_file))
    twin = full | {"name": "full" + FP16_SUFFIX, "precision": "fp16", "file": twin_file}
    twin["sha256"] = sha256_file(out / twin_file)
    raw["levels"].append(twin)
    half = next(lv for lv in raw["levels"] if lv["name"] == "1/2")
    assert set(half["latency"]) == {CPU_PROVIDER}  # written by this code: keyed by provider
    half["latency"][CUDA] = [{"batch_size": 2, "median_ms": 0.5, "p95_ms": 0.6}]
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def test_fp16_levels_are_not_served_on_cpu(fp16_bundle: Path) -> None:
    manifest = read_manifest(fp16_bundle)
    assert [lv.name for lv in manifest.sorted_levels()][:2] == ["full", "full@fp16"]
    model = open_model(fp16_bundle, manifest, make_settings(fp16_bundle), Metrics())
    assert "full@fp16" not in [lv.name for lv in model.levels]
    assert {lv.runner.provider for lv in model.levels} == {CPU}
    assert not any(lv.runner.buckets or lv.runner.bind_device for lv in model.levels)


@pytest.mark.usefixtures("fake_gpu")
def test_on_cuda_fp16_levels_serve_bucketed_and_bound(fp16_bundle: Path) -> None:
    app = create_app(make_settings(fp16_bundle, provider="cuda"), session_factory=RecordingGpuSession)
    manifest = read_manifest(fp16_bundle)
    x = sample_inputs(manifest, 3)
    want = _plain(fp16_bundle, manifest, x)["probabilities"]
    with asgi_client(app) as client:
        levels = client.get(f"/v1/models/{manifest.name}").json()["levels"]
        assert "full@fp16" in [lv["name"] for lv in levels] and {lv["provider"] for lv in levels} == {CUDA}
        for level in ("full", "full@fp16"):
            body = {"inputs": [v2_tensor(manifest, x)], "parameters": {"sparsity_level": level}}
            r = client.post(f"/v2/models/{manifest.name}/infer", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["parameters"]["sparsity_level"] == level
            probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
            got = np.asarray(probs["data"], np.float32).reshape(3, -1)
            np.testing.assert_allclose(got, want, atol=1e-2 if level.endswith(FP16_SUFFIX) else 1e-5)
        served = app.state.engine.models[manifest.name]
    assert all(lv.runner.buckets and lv.runner.bind_device == "cpu" for lv in served.levels)
    # warm-up ran every bucket up to max_batch_size (64), each through its own binding
    assert all(sorted(lv.runner._bindings) == [1, 2, 4, 8, 16, 32, 64] for lv in served.levels)


@pytest.mark.usefixtures("fake_gpu")
def test_no_buckets_on_cuda_when_turned_off(fp16_bundle: Path) -> None:
    settings = make_settings(fp16_bundle, provider="cuda", batch_buckets=False)
    model = open_model(fp16_bundle, read_manifest(fp16_bundle), settings, Metrics(), RecordingGpuSession)
    assert not any(lv.runner.buckets for lv in model.levels)
    assert all(lv.runner.bind_device == "cpu" for lv in model.levels)


def test_profiles_are_per_provider(fp16_bundle: Path) -> None:
    manifest = read_manifest(fp16_bundle)
    half = next(lv for lv in manifest.levels if lv.name == "1/2")
    assert profile_of(half, CUDA).latency_ms == ((2, 0.5),)
    assert profile_of(half, CPU).latency_ms == tuple(
        (s.batch_size, s.median_ms) for s in half.latency_on(CPU)
    )
    full = next(lv for lv in manifest.levels if lv.name == "full")
    assert full.latency_on(CUDA) == []
    assert [b for b, _ in profile_of(full, CUDA).latency_ms] == list(UNPROFILED_BATCHES)


@pytest.mark.usefixtures("fake_gpu")
def test_warm_up_measures_the_served_providers_profile(fp16_bundle: Path) -> None:
    """A level without a CUDA table starts from placeholders; warm-up replaces them with figures
    measured here, at every bucket, and the policy reads that profile."""
    settings = make_settings(fp16_bundle, provider="cuda", max_batch_size=16)
    model = open_model(fp16_bundle, read_manifest(fp16_bundle), settings, Metrics(), RecordingGpuSession)
    full = model.level("full")
    placeholders = full.profile.latency_ms
    warm_up(full, [8, 8], 1, settings.max_batch_size)
    assert full.profile.latency_ms != placeholders
    assert [b for b, _ in full.profile.latency_ms] == [1, 2, 4, 8, 16]
    assert all(0 < ms < 1000 for _, ms in full.profile.latency_ms)
    assert full.state().profile is full.profile
