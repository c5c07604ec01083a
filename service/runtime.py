"""onnxruntime sessions: provider choice, thread settings, running a batch.

onnxruntime-gpu lists CUDA as available even without a usable GPU, so the provider is decided from
the providers of a session once it is created, never from `get_available_providers()` alone.

On CUDA (see LevelRunner): the CUDA 13 / cuDNN 9 libraries of the `gpu` extra are loaded with
`onnxruntime.preload_dlls()` before the first CUDA session; batches are padded to a power of two
(`bucket`), so the CUDA EP sees a few shapes and reuses its kernels; input and outputs go through
I/O binding, into buffers kept per bucket, and the outputs are copied once into host memory; with
`cuda_graph` each bucket is captured as its own CUDA graph (`gpu_graph_id`), which needs exactly
those fixed-address buffers.
"""

from __future__ import annotations

import contextlib
import io
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
    def io_binding(self) -> Any: ...
    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> None: ...


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
    cuda_graph: bool = False  # CUDA EP option enable_cuda_graph (only used on CUDA)


# The onnxruntime device name of a CUDA session's buffers (OrtValue device_type).
CUDA_DEVICE = "cuda"
_preloaded: list[bool] = []  # once per process


def preload_cuda_libraries() -> None:
    """Load CUDA 13 and cuDNN 9 (the `gpu` extra's nvidia-* wheels, else the system's) before the first
    CUDA session, with onnxruntime's own `preload_dlls()`. Called only when a GPU is present and CUDA
    is asked for, so a CPU host never tries. onnxruntime prints what it cannot load; that goes to our
    log (a session that then fails on CUDA says so in its own message)."""
    if _preloaded:
        return
    _preloaded.append(True)
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime before 1.21: the libraries must be on the loader's path
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # a bad directory or a broken wheel: the session will tell
        log.warning("onnxruntime.preload_dlls failed: %s: %s", type(exc).__name__, exc)
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.info("onnxruntime.preload_dlls: %s", line.strip())


def _cuda(config: SessionConfig) -> str | tuple[str, dict[str, str]]:
    """The CUDA entry of a session's provider list: with its options only where there are some."""
    return (CUDA, {"enable_cuda_graph": "1"}) if config.cuda_graph else CUDA


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
        preload_cuda_libraries()
        session = factory(source, options, providers=[_cuda(config), CPU])
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


def bucket(rows: int) -> int:
    """The power of two a batch of `rows` is padded to."""
    return 1 << max(0, rows - 1).bit_length()


@dataclass
class _Binding:
    """One bucket's I/O binding: input and output buffers on the session's device, bound once."""

    binding: Any
    input: Any  # OrtValue (rows, *input_shape), float32
    outputs: list[Any]  # OrtValues, kept alive with the binding (fixed addresses)
    run_options: Any  # RunOptions naming the bucket's CUDA graph, or None


class LevelRunner:
    """Runs one level's graph on a batch: input array in, {output name: array} out.

    `buckets`: pad each batch with zero rows to a power of two and slice the answer (the padding
    never reaches the caller). `bind_device` ("cuda" on a CUDA session, "cpu" to exercise the path
    on a CPU one): run through I/O binding, into per-bucket buffers on that device, the outputs
    copied once to host; None runs `session.run`. `cuda_graph`: the session was created with
    enable_cuda_graph; each bucket then replays its own graph (gpu_graph_id = log2(bucket) + 1).
    With a watchdog, and a plain CPU session run as it is (no buckets, no binding), `inline` runs a
    batch on the event loop under the watchdog; else `inline` is None.
    """

    def __init__(
        self,
        session: Session,
        input_name: str,
        output_names: Sequence[str],
        *,
        buckets: bool = False,
        bind_device: str | None = None,
        cuda_graph: bool = False,
        watchdog: Watchdog | None = None,
    ) -> None:
        if cuda_graph and not (buckets and bind_device):
            raise ValueError("CUDA graphs need fixed shapes and buffers: buckets and I/O binding")
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
        self.buckets = buckets
        self.bind_device = bind_device
        self.cuda_graph = cuda_graph
        shapes = {o.name: o.shape for o in session.get_outputs()}
        self._output_rows = {n: list(shapes[n])[1:] for n in self.output_names}
        self._bindings: dict[int, _Binding] = {}
        # inline (on the event loop, under the watchdog): a plain CPU session run as it is; a
        # subclass's run may block where no flag reaches, and a bucketed or bound run is not plain
        plain = isinstance(session, ort.InferenceSession) and type(session).run is ort.InferenceSession.run
        self.watchdog = watchdog if plain and not buckets and bind_device is None else None
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
        # a plain InferenceSession's tensor outputs are numpy arrays already
        return dict(zip(self.output_names, values, strict=True))

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(batch)
        size = bucket(rows) if self.buckets else rows
        if size != rows:
            batch = np.concatenate([batch, np.zeros((size - rows, *batch.shape[1:]), batch.dtype)])
        try:
            if self.bind_device is None:
                values = self.session.run(self.output_names, {self.input_name: batch})
            else:
                values = self._run_bound(batch)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        return {name: np.asarray(v)[:rows] for name, v in zip(self.output_names, values, strict=True)}

    def _run_bound(self, batch: np.ndarray) -> list[np.ndarray]:
        assert self.bind_device is not None
        if not self.buckets:  # any shape: a fresh binding, outputs allocated by onnxruntime there
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
            for name in self.output_names:
                binding.bind_output(name, self.bind_device)
            self.session.run_with_iobinding(binding)
            return list(binding.copy_outputs_to_cpu())
        bound = self._bindings.get(len(batch)) or self._bind(batch)
        bound.input.update_inplace(np.ascontiguousarray(batch))
        self.session.run_with_iobinding(bound.binding, bound.run_options)
        return list(bound.binding.copy_outputs_to_cpu())  # the one device-to-host copy

    def _bind(self, batch: np.ndarray) -> _Binding:
        """Buffers for one bucket, kept for the runner's life (a CUDA graph replays on them)."""
        device = self.bind_device
        assert device is not None
        binding = self.session.io_binding()
        x = ort.OrtValue.ortvalue_from_shape_and_type(list(batch.shape), batch.dtype, device, 0)
        binding.bind_ortvalue_input(self.input_name, x)
        outputs = []
        for name in self.output_names:
            shape = [len(batch), *self._output_rows[name]]
            if not all(isinstance(d, int) for d in shape):
                raise ValueError(f"output {name!r} has a dynamic shape {shape}: cannot preallocate it")
            out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
            binding.bind_ortvalue_output(name, out)
            outputs.append(out)
        options = None
        if self.cuda_graph:
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(len(batch).bit_length()))
        bound = _Binding(binding, x, outputs, options)
        self._bindings[len(batch)] = bound
        return bound
