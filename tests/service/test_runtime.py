"""onnxruntime sessions: the provider is decided from the created session (only the GPU is faked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from service_helpers import asgi_client, make_settings

from export.manifest import Manifest
from service import runtime
from service.app import create_app
from service.errors import InferenceFailed
from service.runtime import CPU, CUDA, LevelRunner, ProviderError, SessionConfig, create_session


class FakeGpuSession:
    """A real CPU session that reports the CUDA provider it was asked for: the only thing mocked."""

    def __init__(self, path: str, options: ort.SessionOptions, providers: list[str]) -> None:
        self.inner = ort.InferenceSession(path, options, providers=[CPU])
        self.providers = [p for p in providers if p in (CUDA, CPU)]

    def get_providers(self) -> list[str]:
        return self.providers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class NoGpuSession(FakeGpuSession):
    """What onnxruntime-gpu does without a usable GPU: asked for CUDA, it runs on CPU."""

    def __init__(self, path: str, options: ort.SessionOptions, providers: list[str]) -> None:
        super().__init__(path, options, providers)
        self.providers = [CPU]


@pytest.fixture
def cuda_listed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """onnxruntime-gpu lists CUDA whether or not a GPU exists; make the CPU build do the same, and
    let the probe see a device node (the GPU itself is the only thing faked, with its memory)."""
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [CUDA, CPU])
    (tmp_path / "nvidia0").touch()
    monkeypatch.setattr(runtime, "GPU_DEVICE_PATHS", (tmp_path / "nvidia0",))
    monkeypatch.setattr(runtime, "CUDA_DEVICE", "cpu")  # the fake GPU's I/O buffers are host memory
    monkeypatch.setattr(runtime.ort, "preload_dlls", lambda: None, raising=False)  # nothing to load


def test_the_probe_sees_a_gpu_only_where_the_driver_shows_one(tmp_path: Path) -> None:
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    assert not runtime.gpu_present([gpus, tmp_path / "nvidia0"])
    (gpus / "0000:01:00.0").mkdir()
    assert runtime.gpu_present([gpus])
    (tmp_path / "nvidia0").touch()
    assert runtime.gpu_present([tmp_path / "nvidia0"])


def test_cuda_without_a_gpu_fails_with_one_clear_line(
    bundle_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(runtime, "GPU_DEVICE_PATHS", (tmp_path / "absent",))
    with pytest.raises(ProviderError, match="no NVIDIA GPU") as info:
        create_session(level_path(bundle_path, manifest), SessionConfig("cuda"))
    assert "\n" not in str(info.value)


def test_a_real_server_start_on_a_cpu_host_prints_no_cuda_noise(bundle_path: Path, tmp_path: Path) -> None:
    """provider auto, real serve() in a child process: no onnxruntime ERROR/WARNING about CUDA."""
    from service_helpers import child_server

    if runtime.gpu_present():
        pytest.skip("this host has a GPU")
    with child_server(bundle_path, tmp_path / "log", provider="auto", log_level="info") as child:
        pass
    out = child.output()
    assert "Application startup complete" in out or "ready" in out.lower(), out
    # onnxruntime tags its own lines [E:onnxruntime...] and [W:onnxruntime...]; ours say ERROR/WARNING
    tags = ("[E:onnxruntime", "[W:onnxruntime", "ERROR", "WARNING")
    noisy = [ln for ln in out.splitlines() if any(t in ln for t in tags) and "cuda" in ln.lower()]
    assert not noisy, noisy


def level_path(bundle_path: Path, manifest: Manifest) -> Path:
    return bundle_path / manifest.levels[0].file


def test_cpu_provider_gives_a_real_cpu_session(bundle_path: Path, manifest: Manifest) -> None:
    session = create_session(level_path(bundle_path, manifest), SessionConfig("cpu", 1, 1))
    assert session.get_providers() == [CPU]


@pytest.mark.usefixtures("cuda_listed")
def test_auto_uses_cuda_only_when_the_session_runs_there(bundle_path: Path, manifest: Manifest) -> None:
    path = level_path(bundle_path, manifest)
    assert create_session(path, SessionConfig("auto"), FakeGpuSession).get_providers()[0] == CUDA
    assert create_session(path, SessionConfig("auto"), NoGpuSession).get_providers() == [CPU]
    with pytest.raises(ProviderError, match="cuda"):
        create_session(path, SessionConfig("cuda"), NoGpuSession)


def test_auto_on_this_machine_picks_what_really_runs_here(bundle_path: Path, manifest: Manifest) -> None:
    """No fakes: "auto" must land on CUDA exactly when onnxruntime itself can run this graph there
    (asked directly, below), and the session must answer."""
    path = level_path(bundle_path, manifest)
    can_cuda = CUDA in ort.get_available_providers() and (
        ort.InferenceSession(str(path), providers=[CUDA, CPU]).get_providers()[0] == CUDA
    )
    session = create_session(path, SessionConfig("auto"))
    assert session.get_providers()[0] == (CUDA if can_cuda else CPU)
    x = np.zeros((3, *manifest.input.shape[1:]), dtype=np.float32)
    probabilities = session.run(["probabilities"], {manifest.input.name: x})[0]
    assert probabilities.shape == (3, len(manifest.labels))
    assert np.allclose(probabilities.sum(-1), 1, atol=1e-5)


@pytest.mark.usefixtures("cuda_listed")
def test_the_app_reports_the_provider_its_sessions_use(bundle_path: Path, manifest: Manifest) -> None:
    app = create_app(make_settings(bundle_path, provider="auto"), session_factory=FakeGpuSession)
    with asgi_client(app) as client:
        levels = client.get(f"/v1/models/{manifest.name}").json()["levels"]
    assert {lv["provider"] for lv in levels} == {CUDA}


@pytest.mark.usefixtures("cuda_listed")
def test_provider_cuda_without_a_gpu_fails_loading_clearly(bundle_path: Path) -> None:
    app = create_app(make_settings(bundle_path, provider="cuda"), session_factory=NoGpuSession)
    with asgi_client(app, ready=False) as client:
        for _ in range(200):
            if app.state.engine.failure:
                break
            client.get("/v2/health/live")
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        r = client.post("/v2/models/any/infer", content=b"{}")
        assert r.status_code == 503 and "cuda" in r.json()["error"]


def test_runner_checks_the_graph_and_wraps_errors(bundle_path: Path, manifest: Manifest) -> None:
    session = create_session(level_path(bundle_path, manifest), SessionConfig("cpu"))
    with pytest.raises(ValueError, match="inputs"):
        LevelRunner(session, "wrong", ["logits"])
    with pytest.raises(ValueError, match="outputs"):
        LevelRunner(session, manifest.input.name, ["nope"])
    runner = LevelRunner(session, manifest.input.name, ["logits", "probabilities"])
    out = runner(np.zeros((2, *manifest.input.shape[1:]), np.float32))
    assert out["probabilities"].shape == (2, len(manifest.labels))
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(InferenceFailed):
        runner(np.zeros((2, 3), np.float32))


class SlowWithThreads:
    """A real session; runs with `slow_threads` intra-op threads take 5 ms longer (made slow)."""

    slow_threads = 2

    def __init__(self, source: Any, options: ort.SessionOptions, providers: list[str]) -> None:
        self.inner = ort.InferenceSession(source, options, providers=providers)
        self.threads = options.intra_op_num_threads

    def run(self, names: Any, feed: Any, *args: Any) -> Any:
        if self.threads == self.slow_threads:
            import time

            time.sleep(0.005)
        return self.inner.run(names, feed, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("slow, chosen", [(2, 1), (1, 2)])
def test_each_level_gets_the_thread_count_that_runs_fastest_here(
    bundle_path: Path, manifest: Manifest, slow: int, chosen: int
) -> None:
    import os

    from service.loader import open_model
    from service.metrics import Metrics

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: one thread is the only choice")
    two_threads = manifest.model_copy(
        update={"profile": manifest.profile.model_copy(update={"intra_op_threads": 2})}
    )
    SlowWithThreads.slow_threads = slow
    settings = make_settings(bundle_path, intra_op_threads=None)
    model = open_model(bundle_path, two_threads, settings, Metrics(), SlowWithThreads)
    assert {lv.runner.session.threads for lv in model.levels} == {chosen}  # type: ignore[attr-defined]


class Overridden(ort.InferenceSession):  # type: ignore[misc]  # onnxruntime is untyped
    """A session whose run is its own: no terminate flag is known to reach it."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return super().run(*args, **kwargs)


def test_only_a_plain_session_under_a_watchdog_runs_inline(bundle_path: Path, manifest: Manifest) -> None:
    path, names = level_path(bundle_path, manifest), ["probabilities"]
    plain = create_session(path, SessionConfig("cpu"))
    assert LevelRunner(plain, manifest.input.name, names).inline is None  # no watchdog
    runner = LevelRunner(plain, manifest.input.name, names, watchdog=runtime.Watchdog(1.0))
    assert runner.inline is not None
    x = np.zeros((2, *manifest.input.shape[1:]), np.float32)
    np.testing.assert_array_equal(runner.inline(x)["probabilities"], runner(x)["probabilities"])
    with pytest.raises(InferenceFailed):  # errors are mapped as on the thread
        runner.inline(np.zeros((2, 3), np.float32))
    own = create_session(path, SessionConfig("cpu"), Overridden)
    assert LevelRunner(own, manifest.input.name, names, watchdog=runtime.Watchdog(1.0)).inline is None


def test_the_watchdog_ends_a_run_past_its_bound_and_the_session_still_works(
    bundle_path: Path, manifest: Manifest
) -> None:
    """A real run that takes far longer than the bound (a very large batch) is ended, not awaited."""
    full = manifest.sorted_levels()[0]
    session = create_session(bundle_path / full.file, SessionConfig("cpu"))
    dog = runtime.Watchdog(0.005)
    big = np.random.default_rng(0).standard_normal((50_000, *manifest.input.shape[1:])).astype(np.float32)
    with pytest.raises(runtime.Interrupted):
        dog.run(session, ["probabilities"], {manifest.input.name: big})
    assert dog.ended == 1
    small = dog.run(session, ["probabilities"], {manifest.input.name: big[:2]})  # a later run is fine
    assert small[0].shape == (2, len(manifest.labels))
