"""The peers' venvs are made once, only when the plan allows downloads (never in the tests: here the
setup steps are a local fake), and Triton is judged and shown beside circuitserve."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import markdown, peer_setup, report
from bench.peer_launch import TRITON
from bench.peer_setup import Venv
from bench.plan import FULL, QUICK

FAKE = Venv("fake-venv", lambda: ("somepeer>=1", "numpy"), "json", lambda: Path(sys.executable), "")


@pytest.fixture()
def steps(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every setup command, recorded instead of run; `python -m venv` makes bin/python."""
    ran: list[list[str]] = []

    def fake_run(cmd: Sequence[str], log: Path) -> None:
        ran.append(list(cmd))
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[-1]) / "bin").mkdir(parents=True, exist_ok=True)
            (Path(cmd[-1]) / "bin" / "python").write_text("")

    monkeypatch.setattr(peer_setup, "_run", fake_run)
    return ran


def test_only_the_full_bench_sets_up_peers() -> None:
    assert FULL.set_up_peers and not QUICK.set_up_peers


def test_a_missing_venv_is_skipped_without_downloading(steps: list[list[str]], tmp_path: Path) -> None:
    status = peer_setup.ensure(tmp_path, FAKE, download=False)
    assert isinstance(status, str) and status.startswith("skipped: not installed") and steps == []


def test_a_venv_is_set_up_once_and_redone_when_half_done(
    steps: list[list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = peer_setup.ensure(tmp_path, FAKE, download=True)
    assert python == tmp_path / "fake-venv" / "bin" / "python"
    venv, pip, check = steps
    assert venv[1:] == ["-m", "venv", "--clear", str(tmp_path / "fake-venv")]
    assert pip[0] == str(python) and pip[-2:] == ["somepeer>=1", "numpy"] and check[-1] == "import json"
    assert "setting up fake-venv" in capsys.readouterr().err  # progress on stderr
    assert peer_setup.ensure(tmp_path, FAKE, download=True) == python and len(steps) == 3  # once
    (tmp_path / "fake-venv" / peer_setup.MARKER).unlink()  # as if pip had been interrupted
    assert peer_setup.ensure(tmp_path, FAKE, download=True) == python and len(steps) == 6


def test_a_failed_setup_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(cmd: Sequence[str], log: Path) -> None:
        raise peer_setup.SetupError("pip said no")

    monkeypatch.setattr(peer_setup, "_run", fail)
    status = peer_setup.ensure(tmp_path, FAKE, download=True)
    assert isinstance(status, str) and status.startswith("failed:") and "pip said no" in status
    nobody = Venv("none-venv", lambda: (), "json", lambda: None, "no interpreter for it")
    assert (
        peer_setup.ensure(tmp_path, nobody, download=True)
        == "failed: setting up none-venv: no interpreter for it"
    )


def test_dry_run_prints_the_steps_and_runs_none(
    steps: list[list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CIRCUITSERVE_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(peer_setup, "VENVS", (FAKE,))
    peer_setup.main(["--dry-run"])
    out = capsys.readouterr().out
    assert f"-m venv --clear {tmp_path / 'fake-venv'}" in out and "pip install" in out and steps == []


def test_peers_extra_and_triton_packages_are_pinned_where_they_must_be() -> None:
    assert any(p.startswith("litserve") for p in peer_setup.peers_extra())
    assert "nvidia-pytriton==0.7.0" in peer_setup.TRITON_PACKAGES  # its stubs: STUB_PYTHONS


def test_triton_request_is_kserve_v2_json_with_a_batch_of_one() -> None:
    example = np.arange(64, dtype=np.float32).reshape(8, 8).tolist()
    body = TRITON.wrap(example)
    (tensor,) = body["inputs"]
    assert tensor["name"] == "input" and tensor["datatype"] == "FP32" and tensor["shape"] == [1, 8, 8]
    assert tensor["data"] == list(range(64)) and TRITON.path == "/v2/models/level/infer"
    json.dumps(body)


def _cell(rps: float, p50: float, p99: float, ours: tuple[float, float, float]) -> dict[str, Any]:
    def run(t: float, p99_ms: float) -> dict[str, float]:
        return {"throughput_rps": t, "p99_ms": p99_ms, "server_cores": 1.5}

    cell = {"throughput_rps": rps, "p50_ms": p50, "p99_ms": p99, "throughput_ratio": ours[0] / rps}
    cell |= {
        "circuitserve_throughput_rps": ours[0],
        "circuitserve_p50_ms": ours[1],
        "circuitserve_p99_ms": ours[2],
    }
    return cell | {"pairs": [{"peer": run(rps, p99), "circuitserve": run(ours[0], ours[2])}]}


def _triton(c64_ours_p99: float) -> dict[str, Any]:
    return {
        "status": "ok",
        "c1": _cell(100.0, 10.0, 14.0, (160.0, 5.0, 8.0)),
        "c8": _cell(400.0, 20.0, 40.0, (700.0, 11.0, 20.0)),
        "c64": _cell(600.0, 100.0, 150.0, (1300.0, 48.0, c64_ours_p99)),
    }


def test_triton_target_needs_throughput_p50_and_every_p99() -> None:
    good = report._triton_target({"peers": {"triton": _triton(90.0)}})
    assert good["reached"] is True and good["why"] == "" and "2.17x" in good["measured"]
    assert "p50 at c1 5.00 vs 10.00" in good["measured"]
    worse_p99 = report._triton_target({"peers": {"triton": _triton(200.0)}})
    assert worse_p99["reached"] is False and "p99 not lower at c64" in worse_p99["why"]
    skipped = report._triton_target({"peers": {"triton": {"status": "skipped: not installed (...)"}}})
    assert skipped["reached"] is None and skipped["measured"] == "not measured"
    assert report._triton_target({"peers": {}})["reached"] is None  # a report from before Triton


def test_peers_section_shows_triton_beside_circuitserve() -> None:
    base = {"model": "digits", "level": "full", "rounds": 2, "max_batch_size": 64, "batch_delay_ms": 0.0}
    peers = {**base, "intra_op_threads": 1, "litserve": {"status": "skipped: not installed"}}
    scale_out = {"replicas": 2, "concurrency": 64, "status": "skipped: no peer measured"}
    r = {"peers": peers | {"triton": _triton(90.0)}, "scale_out": scale_out}
    text = "\n".join(markdown.peers(r))
    assert "**litserve**: skipped: not installed" in text and "**bentoml**: not run" in text
    assert "| triton req/s | p50 ms | p99 ms | circuitserve req/s | circuitserve p50 ms |" in text
    assert "| 1 | 100.0 | 10.00 | 14.00 | 160.0 | 5.00 | 8.00 | 1.60 |" in text
