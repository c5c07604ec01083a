"""The peers' own virtual environments, set up by the bench itself when missing: once, from PyPI,
with progress on stderr, under the bench cache (bench/out/, or $CIRCUITSERVE_BENCH_CACHE). They are
never the server's: the server runs without them.

- peers-venv: LitServe and BentoML (the `peers` extra of pyproject.toml), on this interpreter.
- triton-venv: NVIDIA Triton through PyTriton (nvidia-pytriton ships the tritonserver binary and a
  Python-backend stub per Python 3.8-3.13), on this interpreter when it has a shared libpython (the
  stub links it; bench/peer_apps/triton_app.py puts that interpreter's own first), else on the first
  such Python found (triton_interpreter).

A venv counts as set up when its marker file names the same packages: a half-done or outdated one
is made again. `python -m bench.peer_setup [--dry-run]` does the same by hand (bench/peer_apps/
setup_venv.sh calls it); the quick bench (the tests) never downloads: there a missing venv is
reported as skipped."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = ".circuitserve-setup"  # in the venv: the packages it was made with, one a line
PROGRESS = ("Collecting", "  Downloading", "Installing collected", "Successfully")  # pip's lines shown


def peers_extra(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, ...]:
    with pyproject.open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    return tuple(extras["peers"])


TRITON_PACKAGES = ("nvidia-pytriton==0.7.0", "onnxruntime>=1.18,<1.32", "numpy>=1.26")
STUB_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")  # nvidia-pytriton 0.7.0's stubs
_PROBE = (
    "import sys, sysconfig; v = sys.version_info; "
    "print(f'{v[0]}.{v[1]}', sysconfig.get_config_var('Py_ENABLE_SHARED'))"
)


def _this_python() -> Path | None:
    return Path(sys.executable)


def _fits_pytriton(python: Path) -> bool:
    """A Python that PyTriton's stub can embed: a version it ships a stub for, built with a shared
    libpython (pyenv's and Debian's are; python.org's static builds and some conda ones are not)."""
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.split() in ([v, "1"] for v in STUB_PYTHONS)


def triton_interpreter() -> Path | None:
    """This interpreter if it fits PyTriton, else the first that does: python3.X on PATH, pyenv's."""
    found = [shutil.which(f"python{v}") for v in reversed(STUB_PYTHONS)]
    pyenv = sorted((Path.home() / ".pyenv" / "versions").glob("3.*/bin/python3"), reverse=True)
    candidates = [Path(sys.executable), *(Path(f) for f in found if f), *pyenv]
    return next((p for p in candidates if _fits_pytriton(p)), None)


@dataclass(frozen=True)
class Venv:
    folder: str  # under the bench cache
    packages: Callable[[], tuple[str, ...]]
    imports: str  # what must import in it, comma-separated
    interpreter: Callable[[], Path | None]  # the Python it is made with (None: none found)
    why: str  # said when no interpreter is found


PEERS_VENV = Venv("peers-venv", peers_extra, "litserve, bentoml, onnxruntime", _this_python, "")
TRITON_VENV = Venv(
    "triton-venv",
    lambda: TRITON_PACKAGES,
    "pytriton.triton, onnxruntime",
    triton_interpreter,
    f"no Python {STUB_PYTHONS[0]}-{STUB_PYTHONS[-1]} with a shared libpython found for PyTriton's stub",
)
VENVS = (PEERS_VENV, TRITON_VENV)


def python_in(cache: Path, venv: Venv) -> Path:
    return cache / venv.folder / "bin" / "python"


def is_set_up(cache: Path, venv: Venv) -> bool:
    marker = cache / venv.folder / MARKER
    try:
        return python_in(cache, venv).is_file() and marker.read_text().split() == list(venv.packages())
    except OSError:
        return False


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], log: Path) -> None:
    """Run a setup step, its output to `log`; pip's Collecting/Downloading lines also to stderr."""
    with log.open("a") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # pip's lines as they come, not in blocks
        proc = subprocess.Popen(
            list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith(PROGRESS):
                _log(f"  {line.strip()}")
        if proc.wait() != 0:
            raise SetupError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); see {log}")


class SetupError(RuntimeError):
    """A peer venv could not be made: the bench reports that peer as failed, not the whole run."""


def plan(cache: Path, venv: Venv) -> list[list[str]]:
    """The commands that make `venv` (what --dry-run prints)."""
    python = venv.interpreter()
    if python is None:
        raise SetupError(venv.why)
    target = cache / venv.folder
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off"]
    return [[str(python), "-m", "venv", "--clear", str(target)], [*pip, *venv.packages()]]


def set_up(cache: Path, venv: Venv) -> Path:
    """Make `venv` under `cache` (downloads from PyPI); its Python."""
    steps = plan(cache, venv)
    (cache / "logs").mkdir(parents=True, exist_ok=True)
    log = cache / "logs" / f"setup-{venv.folder}.log"
    log.write_text("")
    _log(f"setting up {venv.folder} in {cache} (once): {' '.join(venv.packages())}; log {log}")
    start = time.monotonic()
    for step in steps:
        _run(step, log)
    python = python_in(cache, venv)
    _run([str(python), "-c", f"import {venv.imports}"], log)
    (cache / venv.folder / MARKER).write_text("\n".join(venv.packages()) + "\n")
    _log(f"{venv.folder} set up in {time.monotonic() - start:.0f} s")
    return python


def ensure(cache: Path, venv: Venv, download: bool) -> Path | str:
    """`venv`'s Python, made first when missing and `download` allows; else why there is none."""
    if is_set_up(cache, venv):
        return python_in(cache, venv)
    if not download:
        return "skipped: not installed (the quick bench does not download; `circuitserve bench` sets it up)"
    try:
        return set_up(cache, venv)
    except SetupError as exc:
        return f"failed: setting up {venv.folder}: {exc}"


def main(argv: Sequence[str] | None = None) -> None:
    from bench.run import cache_dir

    parser = argparse.ArgumentParser(description="Set up the bench's peer venvs under the bench cache.")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--force", action="store_true", help="make them again even when set up")
    args = parser.parse_args(argv)
    cache = cache_dir()
    for venv in VENVS:
        if is_set_up(cache, venv) and not args.force:
            print(f"{venv.folder}: set up in {cache / venv.folder}")
        elif args.dry_run:
            for step in plan(cache, venv):
                print(" ".join(step))
        else:
            set_up(cache, venv)


if __name__ == "__main__":
    main()
