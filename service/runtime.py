"""onnxruntime sessions: provider choice, thread settings, running a batch.

onnxruntime-gpu lists CUDA as available even without a usable GPU, so the provider is decided from
the providers of a session once it is created, never from `get_available_providers()` alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from service.errors import InferenceFailed

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Session(Protocol):
    def get_providers(self) -> list[str]: ...
    def get_inputs(self) -> Sequence[Any]: ...
    def get_outputs(self) -> Sequence[Any]: ...
    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[Any]: ...


SessionFactory = Callable[..., Session]


class ProviderError(RuntimeError):
    """provider="cuda" was asked for but no session runs on CUDA."""


# Where the NVIDIA driver shows its devices. Without one, asking onnxruntime-gpu for CUDA only prints
# a red ERROR and a WARNING (libcublasLt not found) and falls back to CPU, so it is not asked at all.
GPU_DEVICE_PATHS: tuple[Path, ...] = (Path("/proc/driver/nvidia/gpus"), Path("/dev/nvidia0"))


def gpu_present(paths: Sequence[Path] | None = None) -> bool:
    """True when the NVIDIA driver shows a device: a non-empty gpus directory or a device node."""
    for path in GPU_DEVICE_PATHS if paths is None else paths:
        if path.is_dir() and any(path.iterdir()):
            return True
        if path.exists() and not path.is_dir():
            return True
    return False


@dataclass(frozen=True)
class SessionConfig:
    provider: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int = 1
    inter_op_threads: int = 1


def _options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning between batches: idle onnxruntime threads would take the cores HTTP and JSON need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(
    path: Path,
    config: SessionConfig,
    factory: SessionFactory = ort.InferenceSession,
    model: bytes | None = None,
) -> Session:
    """A session on CUDA when one really runs there (provider auto or cuda), else on CPU.
    With `model` (the file's bytes, already verified) the session is made from those bytes, so the
    file cannot change between its check and its use; `path` then only names it."""
    options = _options(config)
    source = str(path) if model is None else model
    gpu = gpu_present()
    if config.provider == "cuda" and not gpu:
        raise ProviderError(
            f"provider 'cuda' asked for but this host shows no NVIDIA GPU "
            f"(none of {', '.join(map(str, GPU_DEVICE_PATHS))}); use provider 'auto' or 'cpu'"
        )
    if config.provider in ("auto", "cuda") and gpu and CUDA in ort.get_available_providers():
        session = factory(source, options, providers=[CUDA, CPU])
        if session.get_providers()[0] == CUDA:
            return session
        if config.provider == "auto":
            log.info("%s: CUDA execution provider not usable here, running on CPU", path.name)
    if config.provider == "cuda":
        raise ProviderError(
            f"{path.name}: provider 'cuda' asked for but onnxruntime cannot run on CUDA here "
            f"(available: {ort.get_available_providers()}); use provider 'auto' or 'cpu'"
        )
    return factory(source, options, providers=[CPU])


class Interrupted(Exception):
    """An inline run that the watchdog ended; its rows can run again (on the level's thread)."""


class Watchdog:
    """Ends a run on the event loop (an inline run, service.batcher) that takes longer than
    `bound_s`: one daemon thread looks every `bound_s / 2` and sets the run's
    `RunOptions.terminate`, which onnxruntime checks between nodes. So an inline run blocks the loop,
    its probes and a drain at most about 1.5 x `bound_s` plus one node's time."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self._current: tuple[float, ort.RunOptions] | None = None
        self._thread: threading.Thread | None = None
        self.ended = 0  # runs it ended

    def run(self, session: Session, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="inline-watchdog", daemon=True)
            self._thread.start()
        options = ort.RunOptions()
        self._current = (time.monotonic(), options)
        try:
            return session.run(names, feed, options)  # type: ignore[call-arg]
        except Exception as exc:
            if options.terminate:
                raise Interrupted(f"inline run ended after {self.bound_s * 1000:g} ms") from exc
            raise
        finally:
            self._current = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.bound_s / 2)
            current = self._current
            late = current is not None and time.monotonic() - current[0] > self.bound_s
            if current is not None and late and not current[1].terminate:
                current[1].terminate = True
                self.ended += 1


class LevelRunner:
    """Runs one level's graph on a batch: input array in, {output name: array} out. With a
    watchdog, and a plain onnxruntime session (whose run the watchdog can end), `inline` runs a
    batch on the event loop under the watchdog; else `inline` is None."""

    def __init__(
        self,
        session: Session,
        input_name: str,
        output_names: Sequence[str],
        watchdog: Watchdog | None = None,
    ) -> None:
        have_inputs = [i.name for i in session.get_inputs()]
        have_outputs = [o.name for o in session.get_outputs()]
        if have_inputs != [input_name]:
            raise ValueError(f"graph inputs {have_inputs}, manifest expects [{input_name!r}]")
        missing = [n for n in output_names if n not in have_outputs]
        if missing:
            raise ValueError(f"graph lacks outputs {missing} (has {have_outputs})")
        self.session = session
        self.input_name = input_name
        self.output_names = list(output_names)
        self.provider = session.get_providers()[0]
        plain = isinstance(session, ort.InferenceSession) and type(session).run is ort.InferenceSession.run
        self.watchdog = watchdog if plain else None  # a subclass's run may block where no flag reaches
        self.inline: Callable[[np.ndarray], dict[str, np.ndarray]] | None = (
            None if self.watchdog is None else self._inline
        )

    def _inline(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert self.watchdog is not None
        try:
            values = self.watchdog.run(self.session, self.output_names, {self.input_name: batch})
        except Interrupted:
            raise
        except Exception as exc:
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        return {name: np.asarray(v) for name, v in zip(self.output_names, values, strict=True)}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, {self.input_name: batch})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        return {name: np.asarray(v) for name, v in zip(self.output_names, values, strict=True)}
