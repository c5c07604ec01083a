"""onnxruntime sessions: provider choice, thread settings, running a batch.

onnxruntime-gpu lists CUDA as available even without a usable GPU, so the provider is decided from
the providers of a session once it is created, never from `get_available_providers()` alone.
"""

from __future__ import annotations

import logging
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


class LevelRunner:
    """Runs one level's graph on a batch: input array in, {output name: array} out."""

    def __init__(self, session: Session, input_name: str, output_names: Sequence[str]) -> None:
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

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, {self.input_name: batch})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        return {name: np.asarray(v) for name, v in zip(self.output_names, values, strict=True)}
