"""The perf_analyzer section: its parser on perf_analyzer's own output (captured against
`circuitserve serve` on the digits bundle), its input file, the skipped path (never a download in the
quick plan) and its table beside our own generator's figures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from bench import markdown
from bench import perf_analyzer as pa
from bench.plan import FULL, QUICK
from export.manifest import Manifest

# perf_analyzer (tritonclient 2.41.1) -m digits -i http -b 1 --input-data FILE --concurrency-range 1:8:7
# --measurement-interval 1500 --stability-percentage 900 --percentile=99, against circuitserve; trimmed:
# the server's latency breakdowns end in "...", the "Client:"/"Server:" lines lose their trailing space
CAPTURED = """\
 Successfully read data for 1 stream/streams with 8 step/steps.
*** Measurement Settings ***
  Batch size: 1
  Service Kind: Triton
  Using "time_windows" mode for stabilization
  Measurement window: 1500 msec
  Latency limit: 0 msec
  Concurrency limit: 8 concurrent requests
  Using synchronous calls for inference
  Stabilizing using p99 latency

Request concurrency: 1
  Client:
    Request count: 2151
    Throughput: 397.393 infer/sec
    p50 latency: 2592 usec
    p90 latency: 3186 usec
    p95 latency: 3321 usec
    p99 latency: 3762 usec
    Avg HTTP time: 2498 usec (send/recv 198 usec + response wait 2300 usec)
  Server:
    Inference count: 2151
    Execution count: 2151
    Successful request count: 2151
    Avg request latency: 1865 usec (overhead 538 usec + queue 22 usec + ...)

Request concurrency: 8
  Client:
    Request count: 2864
    Throughput: 528.219 infer/sec
    p50 latency: 14830 usec
    p90 latency: 19831 usec
    p95 latency: 21462 usec
    p99 latency: 24249 usec
    Avg HTTP time: 15089 usec (send/recv 68 usec + response wait 15021 usec)
  Server:
    Inference count: 2863
    Execution count: 808
    Successful request count: 2863
    Avg request latency: 11083 usec (overhead 3239 usec + queue 2278 usec + ...)

Inferences/Second vs. Client p99 Batch Latency
Concurrency: 1, throughput: 397.393 infer/sec, latency 3762 usec
Concurrency: 8, throughput: 528.219 infer/sec, latency 24249 usec
"""


def test_parse_reads_every_concurrency_block() -> None:
    assert pa.parse(CAPTURED) == {
        "c1": {
            "requests": 2151,
            "throughput_rps": 397.393,
            "p50_ms": 2.592,
            "p90_ms": 3.186,
            "p99_ms": 3.762,
            "server_request_ms": 1.865,
        },
        "c8": {
            "requests": 2864,
            "throughput_rps": 528.219,
            "p50_ms": 14.83,
            "p90_ms": 19.831,
            "p99_ms": 24.249,
            "server_request_ms": 11.083,
        },
    }


def test_parse_of_a_failed_run_is_empty() -> None:
    failed = "error: failed to get model metadata: HTTP client failed: Couldn't connect to server\n"
    assert pa.parse(failed) == {}
    assert pa.parse(CAPTURED.split("Request concurrency: 8")[0].replace("Throughput", "Thru")) == {}


def test_input_data_is_the_examples_with_their_shape(tmp_path: Path) -> None:
    manifest = cast(Manifest, SimpleNamespace(input=SimpleNamespace(name="input")))
    x = np.arange(2 * 8 * 8, dtype=np.float64).reshape(2, 8, 8)
    data = json.loads(pa.input_data(manifest, x, tmp_path / "in.json").read_text())["data"]
    assert len(data) == 2 and data[1]["input"]["shape"] == [8, 8]
    assert data[1]["input"]["content"] == [float(v) for v in x[1].ravel()]


def test_command_asks_one_concurrency_over_http() -> None:
    server = cast(Any, SimpleNamespace(base_url="http://127.0.0.1:8123"))
    cmd = pa.command(Path("/t/bin/perf_analyzer"), server, "digits", Path("/d.json"), 64, FULL)
    assert cmd[0] == "/t/bin/perf_analyzer"
    assert cmd[1:9] == ["-m", "digits", "-u", "127.0.0.1:8123", "-i", "http", "-b", "1"]
    joined = " ".join(cmd)
    assert "--concurrency-range 64:64" in joined and "--input-data /d.json" in joined
    assert f"--measurement-interval {round(FULL.load_s * 1e3 / 3)}" in joined


@pytest.fixture()
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []

    def fake(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 3, "", "perf_analyzer needs libcudart.so.12\n")

    monkeypatch.setattr(pa.subprocess, "run", fake)
    return ran


def test_the_quick_plan_skips_without_downloading(no_subprocess: list[list[str]], tmp_path: Path) -> None:
    assert not QUICK.set_up_peers
    nothing = cast(Manifest, None)
    result = pa.run_perf_analyzer(QUICK, tmp_path, nothing, np.zeros((1, 8, 8)), tmp_path, tmp_path)
    assert result["status"].startswith("skipped: perf_analyzer not set up") and result["needs"]
    assert no_subprocess == []
    lines = markdown.perf_analyzer({"perf_analyzer": result})
    assert lines[-2] == f"Status: {result['status']}"


def test_a_failed_setup_is_reported(no_subprocess: list[list[str]], tmp_path: Path) -> None:
    status = pa.ensure(tmp_path, download=True)
    assert isinstance(status, str) and status.startswith("failed: setting up perf_analyzer")
    assert "libcudart" in status and no_subprocess[0][1:] == [str(pa.SCRIPT), "--set-up-only"]


def test_a_set_up_binary_is_found(tmp_path: Path) -> None:
    tools = pa.tools(tmp_path)
    (tools / "bin").mkdir(parents=True)
    (tools / "lib").mkdir()
    (tools / "bin" / "perf_analyzer").write_text("")
    (tools / "bin" / "perf_analyzer").chmod(0o755)
    assert not pa.is_set_up(tmp_path)
    for lib in ("libb64.so.0d", "libcudart.so.12"):
        (tools / "lib" / lib).write_text("")
    assert pa.ensure(tmp_path, download=False) == tools / "bin" / "perf_analyzer"


def test_the_table_puts_our_generator_beside_it() -> None:
    figures = pa.parse(CAPTURED)
    section = {
        "status": "ok",
        "model": "digits",
        "level": "full",
        "needs": list(pa.NEEDS),
        "input_data": "64 test examples",
        "measurement_interval_ms": 2000,
        "stability_percentage": 300,
        "command": "perf_analyzer -m digits",
        **{k: {"status": "ok", **v, "client_cores": 0.5} for k, v in figures.items()},
    }
    pair = {"circuitserve": {"throughput_rps": 500.0, "p50_ms": 1.9, "p99_ms": 3.0}}
    other = {"circuitserve": {"throughput_rps": 600.0, "p50_ms": 2.1, "p99_ms": 3.2}}
    peers = {
        "litserve": {"status": "ok", "c1": {"pairs": [pair, other]}},
        "bentoml": {"status": "failed: x"},
    }
    md = "\n".join(markdown.perf_analyzer({"perf_analyzer": section, "peers": peers}))
    assert "| 1 | 397.4 | 2.59 | 3.76 | 550.0 | 2.00 | 3.10 | 1.86 | 0.5000 |" in md
    assert "| 8 | 528.2 | 14.83 | 24.25 | – | – | – | 11.08 | 0.5000 |" in md
    assert "libb64.so.0d" in md
