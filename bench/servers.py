"""Servers under test as subprocesses on 127.0.0.1: started on a free port, ready when their health
route answers 200, stopped with SIGTERM (their whole process group, SIGKILL if they linger).
Each server's output goes to a log file; a failed start says where it is and shows its tail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server under test did not start or died."""


@dataclass(frozen=True)
class Server:
    name: str
    base_url: str  # http://127.0.0.1:PORT
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def process(
    name: str,
    cmd: Sequence[str],
    *,
    port: int,
    health_path: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    start_timeout_s: float = 120.0,
    grace_s: float = 10.0,
) -> Iterator[Server]:
    """Run `cmd` (which must listen on HOST:port) until the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    base_url = f"http://{HOST}:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _ready(base_url + health_path):
            if proc.poll() is not None:
                raise ServerError(f"{name} exited with {proc.returncode} before ready; {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"{name} not ready after {start_timeout_s:.0f} s; {log}:\n{_tail(log)}")
            time.sleep(0.2)
        yield Server(name, base_url, proc.pid, log)
        if proc.poll() is not None:
            raise ServerError(f"{name} died during the run (exit {proc.returncode}); {log}:\n{_tail(log)}")
    finally:
        _stop(proc, grace_s)


@contextmanager
def circuitserve(bundles: Sequence[Path], log_dir: Path, **settings: object) -> Iterator[Server]:
    """`circuitserve serve BUNDLE...` from this Python environment; `settings` become CIRCUITSERVE_*
    environment variables (e.g. max_batch_size=64)."""
    port = free_port()
    env = {f"CIRCUITSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    env.setdefault("CIRCUITSERVE_LOG_LEVEL", "warning")
    env.setdefault("CIRCUITSERVE_PROVIDER", "cpu")
    env.setdefault("CIRCUITSERVE_DRAIN_TIMEOUT_S", "2")
    cmd = [sys.executable, "-c", "from circuitserve import app; app()", "serve", *map(str, bundles)]
    cmd += ["--host", HOST, "--port", str(port)]
    ready = "/v2/health/ready"
    with process("circuitserve", cmd, port=port, health_path=ready, log_dir=log_dir, env=env) as server:
        yield server
