"""`serve --workers N` as users run it: a real supervisor and N real worker processes on one port,
real clients. /metrics and /v1/stats sum every worker (counted per worker from the workers' own
files), readiness is every worker's, a killed worker is restarted, SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import Child, RawClient, child_server, make_settings
from slow_session import SLOW

from export.manifest import Manifest
from service import settings as settings_module
from service.loader import StartupError, open_model
from service.metrics import Metrics
from service.settings import Settings, SettingsError, load
from service.workers import prepare_directory

HERE = Path(__file__).parent
WORKERS_SERVER = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from slow_session import Slow
from service.settings import Settings
from service.workers import serve_workers

serve_workers(Settings(), session_factory=Slow)
"""
BROKEN_SERVER = WORKERS_SERVER.replace("import Slow", "import Broken as Slow")


def served_by(directory: Path) -> dict[int, float]:
    """Inference requests counted per worker pid, from each worker's own counter file."""
    counts = {}
    for f in directory.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(f)]) for s in m.samples]
        counts[int(f.stem.split("_")[1])] = sum(
            s.value for s in samples if s.name == "circuitserve_requests_total"
        )
    return counts


def payload(manifest: Manifest, level: str = "full", sleep_s: float = 0.0) -> dict[str, Any]:
    x = np.zeros((1, *manifest.input.shape[1:]), np.float32)
    x.flat[0] = SLOW + sleep_s * 1000 if sleep_s else 0.0  # the workers' sessions sleep this long
    return {"inputs": x.tolist(), "sparsity_level": level}


def request(manifest: Manifest, level: str = "full", sleep_s: float = 0.0) -> bytes:
    return RawClient.post(f"/v1/models/{manifest.name}/predict", payload(manifest, level, sleep_s))


async def on_every_worker(
    child: Child, manifest: Manifest, directory: Path, per_worker: int
) -> dict[int, list[RawClient]]:
    """Open connections until each of the 2 workers holds `per_worker` of them; which worker took a
    connection is read from the counters after one request on it. Every connection sent one."""
    port = int(child.url.rsplit(":", 1)[1])
    mine: dict[int, list[RawClient]] = {}
    for _ in range(200):
        before = served_by(directory)
        client = RawClient("127.0.0.1", port)
        status, _ = await client.send(request(manifest))
        assert status == 200
        after = served_by(directory)
        pid = next(p for p, n in after.items() if n > before.get(p, 0))
        if len(mine.setdefault(pid, [])) < per_worker:
            mine[pid].append(client)
        else:
            await client.close()
        if len(mine) == 2 and all(len(c) == per_worker for c in mine.values()):
            return mine
    raise AssertionError(f"connections did not reach both workers: {served_by(directory)}")


def sample_sum(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def ready_pids(directory: Path) -> list[int]:
    return [int((directory / f"ready-{i}").read_text()) for i in range(2)]


def test_metrics_and_stats_count_every_request_on_every_worker(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    mp = tmp_path / "mp"
    with child_server(bundle_path, tmp_path / "log", WORKERS_SERVER, workers=2, multiprocess_dir=mp) as child:

        async def traffic() -> int:
            conns = await on_every_worker(child, manifest, mp, per_worker=4)
            clients = [c for cs in conns.values() for c in cs]

            async def five(c: RawClient) -> list[int]:  # one request at a time on a connection
                return [(await c.send(request(manifest)))[0] for _ in range(5)]

            answers = [s for ss in await asyncio.gather(*(five(c) for c in clients)) for s in ss]
            assert answers == [200] * len(answers)
            for c in clients:
                await c.close()
            return len(answers)

        extra = asyncio.run(traffic())
        per_worker = served_by(mp)
        sent = sum(per_worker.values())
        assert len(per_worker) == 2 and min(per_worker.values()) >= 5, per_worker  # both served
        assert sent >= extra + 8
        with httpx.Client(base_url=child.url, timeout=10) as http:
            text = http.get("/metrics").text
            stats = http.get("/v1/stats").json()
    assert sample_sum(text, "circuitserve_requests_total") == sent
    assert sample_sum(text, "circuitserve_requests_total", outcome="success") == sent
    assert sample_sum(text, "circuitserve_request_duration_seconds_count") == sent
    assert sample_sum(text, "circuitserve_ready") == 1  # the minimum over the workers, not a sum
    assert {s.labels["level"] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "circuitserve_queue_depth"} == {lv.name for lv in manifest.levels}  # fmt: skip
    assert stats["workers"]["answered"] == 2 and set(stats["workers"]["pids"]) == set(per_worker)
    window = stats["windows"]["60s"]
    assert window["requests"] == sent and window["outcomes"] == {"success": sent}
    assert window["level_mix"] == {manifest.name: {"full": 1.0}}
    assert window["latency_ms"]["p50"] is not None and sum(stats["queue_depth"][manifest.name].values()) == 0


def test_ready_means_every_worker_and_a_killed_worker_comes_back(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    mp = tmp_path / "mp"
    with child_server(bundle_path, tmp_path / "log", WORKERS_SERVER, workers=2, multiprocess_dir=mp) as child:
        first, second = ready_pids(mp)
        os.kill(first, signal.SIGKILL)
        give_up = time.monotonic() + 10
        while (probe := httpx.get(f"{child.url}/v2/health/ready")).status_code == 200:
            assert time.monotonic() < give_up, "readiness stayed true with a worker dead"
            time.sleep(0.02)
        assert probe.json() == {"ready": False, "reason": "1 of 2 workers ready"}
        served = httpx.post(f"{child.url}/v1/models/{manifest.name}/predict", json=payload(manifest))
        assert served.status_code == 200, served.text  # the live worker serves on meanwhile
        give_up = time.monotonic() + 60
        while httpx.get(f"{child.url}/v2/health/ready").status_code != 200:
            assert child.proc.poll() is None and time.monotonic() < give_up, child.output()
            time.sleep(0.05)
        restarted, same = ready_pids(mp)
        assert restarted != first and same == second
        assert sample_sum(httpx.get(f"{child.url}/metrics").text, "circuitserve_ready") == 1
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(timeout=30) == 0, child.output()
    assert f"worker 0 [{first}] died" in child.output()


def test_sigterm_drains_every_worker_then_exits_0(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    mp = tmp_path / "mp"
    env: dict[str, Any] = {"workers": 2, "multiprocess_dir": mp, "drain_timeout_s": 6, "log_level": "info"}
    with child_server(bundle_path, tmp_path / "log", WORKERS_SERVER, **env) as child:

        async def sigterm_while_busy() -> dict[str, Any]:
            conns = await on_every_worker(child, manifest, mp, per_worker=3)
            slow = [  # on each worker, two levels busy for 1.5 s (two threads, run at once)
                asyncio.create_task(c.send(request(manifest, level, sleep_s=1.5)))
                for cs in conns.values()
                for c, level in zip(cs[:2], ("full", "1/2"), strict=True)
            ]
            await asyncio.sleep(0.5)
            child.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with httpx.AsyncClient(base_url=child.url, timeout=5) as probe:
                while (await probe.get("/v2/health/ready")).status_code == 200:
                    assert time.monotonic() - signalled < 1.0, "readiness still true 1 s after SIGTERM"
                    await asyncio.sleep(0.01)
            late = [await cs[2].send(request(manifest)) for cs in conns.values()]
            answers = await asyncio.gather(*slow)
            code = await asyncio.to_thread(child.proc.wait, 30)
            return {"late": late, "answers": answers, "code": code, "after": time.monotonic() - signalled}

        out = asyncio.run(sigterm_while_busy())
    assert [status for status, _ in out["answers"]] == [200] * 4, out  # running on both: finished
    for status, body in out["late"]:  # new inference on either worker: refused while draining
        assert status == 503 and "draining" in json.loads(body)["error"]
    assert out["code"] == 0 and out["after"] < 6, out  # when done, not at the drain deadline
    assert child.output().count("draining: 2 inference requests in flight") == 2, child.output()


def test_workers_setting_and_the_thread_share(
    bundle_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "cores", lambda: 4)
    monkeypatch.setenv("CIRCUITSERVE_WORKERS", "auto")
    assert Settings().worker_count() == 4 and Settings().core_share() == 1
    assert Settings(workers=3).core_share() == 1 and Settings(workers=2).core_share() == 2
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match="--workers"):
            load(workers=bad)

    threads: list[int] = []

    def counting(source: Any, options: Any, providers: list[str]) -> Any:
        threads.append(options.intra_op_num_threads)
        import onnxruntime as ort

        return ort.InferenceSession(source, options, providers=providers)

    four = manifest.model_copy(
        update={"profile": manifest.profile.model_copy(update={"intra_op_threads": 4})}
    )
    open_model(bundle_path, four, make_settings(bundle_path, workers=4), Metrics(), counting)
    assert threads and set(threads) == {1}  # 4 workers x 1 thread on 4 cores
    threads.clear()
    open_model(
        bundle_path, four, make_settings(bundle_path, workers=4, intra_op_threads=2), Metrics(), counting
    )
    assert set(threads) == {2}  # set explicitly: as set


def test_a_worker_that_cannot_start_stops_the_server(bundle_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CIRCUITSERVE_BUNDLES": f'["{bundle_path}"]', "CIRCUITSERVE_PORT": "0"}
    env |= {"CIRCUITSERVE_WORKERS": "2", "CIRCUITSERVE_PROVIDER": "cpu", "CIRCUITSERVE_LOG_LEVEL": "warning"}
    done = subprocess.run([sys.executable, "-c", BROKEN_SERVER], env=env, capture_output=True, timeout=120)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "before it was ready" in err and "this session cannot be made" in err, err
    assert "restarting" not in err  # no restart loop


def test_the_private_directory_is_emptied_but_never_a_stranger(tmp_path: Path) -> None:
    ours = tmp_path / "mp"
    ours.mkdir()
    for name in ("counter_11.db", "gauge_livesum_11.db", "ready-0", "stats-1.json"):
        (ours / name).write_text("old")
    assert prepare_directory(ours) == (ours, False) and not list(ours.iterdir())
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(StartupError, match="not circuitserve's"):
        prepare_directory(ours)
    assert (ours / "notes.txt").exists()
