"""`serve --workers N`: one machine's cores, N server processes behind one port.

The supervisor (this process) serves nothing itself:
1. it verifies the bundles (a bad bundle fails here, once, not N times), empties the private
   directory and sets PROMETHEUS_MULTIPROC_DIR to it, then binds the port with SO_REUSEPORT without
   listening (it holds the port, and resolves port 0, but takes no connections);
2. it starts N workers (service.worker, `spawn`: each a fresh interpreter that imports
   prometheus_client with the variable already set), each with its own sessions, batchers and
   policy corrections. Each worker binds its own SO_REUSEPORT socket on that port and listens only
   once it is warm; the kernel spreads new connections evenly over the listening workers (a hash of
   each connection's addresses). One shared socket, uvicorn's and gunicorn's way, was measured
   here to hand a burst of 64 connections to whichever worker woke first;
3. a worker that dies after it was ready is restarted (its gauge files marked dead, its ready
   marker gone, so readiness is false until the new one is ready); one that exits before it was
   ever ready failed to start and would fail again: the supervisor stops the others and fails;
4. SIGTERM/SIGINT goes to every worker at once; each drains as a single server does (readiness
   false, new inference 503, in-flight work finishes within drain_timeout_s, then it stops);
   when all have exited the supervisor exits 0. A second signal is passed on too (drain ends now).
Past one machine, scale out with more pods (deploy/README.md), not more workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from service import logs
from service.loader import StartupError, verify_bundles
from service.runtime import SessionFactory
from service.settings import Settings
from service.worker import marker, reuse_port_socket, run_worker

log = logging.getLogger(__name__)
_OURS = ("ready-", "stats-", ".stats-", "counter_", "gauge_", "histogram_", "summary_")


def prepare_directory(path: Path | None) -> tuple[Path, bool]:
    """The private directory, empty; (path, whether we created it and so remove it at exit).
    A given directory holding anything not ours is refused rather than emptied."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="circuitserve-workers-")), True
    path.mkdir(parents=True, exist_ok=True)
    strangers = sorted(p.name for p in path.iterdir() if not p.name.startswith(_OURS) or p.is_dir())
    if strangers:
        raise StartupError(
            f"multiprocess_dir {path} holds files that are not circuitserve's: {strangers[:5]}"
        )
    for p in path.iterdir():
        p.unlink()
    return path, False


def reserve(host: str, port: int) -> socket.socket:
    """The port, bound with SO_REUSEPORT but not listening: held for the server's life."""
    try:
        return reuse_port_socket(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        directory: Path,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.settings, self.directory = settings, directory
        self.session_factory = session_factory
        self.count = settings.worker_count()
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.was_ready = [False] * self.count
        self.signals: list[int] = []

    def _start(self, index: int) -> BaseProcess:
        process = self.context.Process(
            target=run_worker,
            args=(self.settings, index, self.directory, self.session_factory),
            name=f"circuitserve-worker-{index}",
        )
        process.start()
        log.info("worker %d started [%s]", index, process.pid)
        return process

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)

    def run(self) -> int:
        """Until a signal and every worker's drain: 0 when all drained and exited 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.workers = [self._start(i) for i in range(self.count)]
        while not self.signals:
            failed = self._watch()
            if failed:
                log.error("%s: stopping the server", failed)
                self._forward(signal.SIGTERM)
                self._wait()
                raise StartupError(failed)
            time.sleep(0.1)
        return self._stop()

    def _watch(self) -> str | None:
        """Restart workers that died after they were ready; the reason to stop if one never was."""
        for i, process in enumerate(self.workers):
            if marker(self.directory, i).exists():
                self.was_ready[i] = True
            if process.is_alive():
                continue
            process.join()
            self._forget(i, process)
            if not self.was_ready[i]:
                return f"worker {i} [{process.pid}] exited with status {process.exitcode} before it was ready"
            log.error(
                "worker %d [%s] died (status %s): restarting it; not ready until it is",
                i,
                process.pid,
                process.exitcode,
            )
            self.was_ready[i] = False
            self.workers[i] = self._start(i)
        return None

    def _forget(self, index: int, process: BaseProcess) -> None:
        marker(self.directory, index).unlink(missing_ok=True)
        (self.directory / f"stats-{index}.json").unlink(missing_ok=True)
        if process.pid is not None:
            mark_process_dead(process.pid, str(self.directory))  # its live gauges leave the sums

    def _forward(self, sig: int) -> None:
        for process in self.workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, sig)

    def _stop(self) -> int:
        log.info("signal: draining %d workers", self.count)
        self._forward(signal.SIGTERM)
        return 0 if self._wait() else 1

    def _wait(self) -> bool:
        """Every worker exited (killed past drain_timeout_s and a margin); whether all exited 0."""
        give_up = time.monotonic() + self.settings.drain_timeout_s + 5
        seen = len(self.signals)
        while any(p.is_alive() for p in self.workers):
            if len(self.signals) > seen:  # a second signal: the drains end now
                seen = len(self.signals)
                self._forward(signal.SIGTERM)
            if time.monotonic() > give_up:
                log.error("workers still running past the drain timeout: killed")
                for p in self.workers:
                    p.kill()
            time.sleep(0.05)
        for i, p in enumerate(self.workers):
            p.join()
            self._forget(i, p)
        return all(p.exitcode == 0 for p in self.workers)


def serve_workers(settings: Settings, *, session_factory: SessionFactory | None = None) -> None:
    """Run `settings.worker_count()` workers until SIGTERM/SIGINT (blocking); raises StartupError
    if the bundles cannot be served or a worker fails to start; SystemExit(1) if a drain failed.
    A `session_factory` must be importable by name: each worker is a fresh interpreter."""
    logs.install()
    logging.basicConfig(level=settings.log_level.upper(), format=logs.FORMAT)
    count = settings.worker_count()
    if not settings.bundles:
        raise StartupError("no bundles to serve: pass BUNDLE paths or set CIRCUITSERVE_BUNDLES")
    verify_bundles(settings.bundles)
    directory, created = prepare_directory(settings.multiprocess_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # inherited by every worker
    sock = reserve(settings.host, settings.port)
    port = sock.getsockname()[1]
    log.info(
        "listening on http://%s:%d with %d workers (metrics in %s)", settings.host, port, count, directory
    )
    settings = settings.model_copy(update={"workers": count, "port": port})
    try:
        code = Supervisor(settings, directory, session_factory).run()
    finally:
        sock.close()
        if created:
            shutil.rmtree(directory, ignore_errors=True)
    if code:
        raise SystemExit(code)
