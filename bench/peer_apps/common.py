"""What both peer servers share: an onnxruntime session configured like circuitserve's
(service/runtime.py: sequential, all graph optimisations, the same thread counts).

Imported by the peer apps, which run in the peers' own virtual environment: numpy and onnxruntime
only, nothing from the project."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

# settings handed from the bench to a peer process
ONNX_ENV, THREADS_ENV = "BENCH_ONNX", "BENCH_INTRA_OP_THREADS"
BATCH_ENV, DELAY_ENV = "BENCH_MAX_BATCH_SIZE", "BENCH_MAX_DELAY_MS"


def setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the bench sets it)")
    return value


class Classifier:
    """The level's ONNX graph: a batch of raw inputs in, class probabilities out."""

    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(setting(THREADS_ENV))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(setting(ONNX_ENV), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        probs: np.ndarray = self.session.run(["probabilities"], {self.input_name: batch.astype(np.float32)})[
            0
        ]
        return probs


def answer(probs: np.ndarray) -> dict[str, object]:
    """One example's answer, as circuitserve gives it: the best class and every probability."""
    return {"class_index": int(np.argmax(probs)), "probabilities": probs.tolist()}
