"""A valid bundle built with onnx.helper alone (no torch), for the service tests.

Input [-1, 8, 8] -> flatten -> (x - mean) / std -> a MatMul+Relu chain whose depth and width shrink with
the level (so levels really differ in cost) -> "logits" and Softmax "probabilities".
Accuracies are made up but ordered; latencies are a rough made-up profile (the server corrects it online).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.manifest import (
    CPU_PROVIDER,
    MANIFEST_FILE,
    InputSpec,
    LatencyStat,
    Level,
    Manifest,
    Normalization,
    Profile,
    Provenance,
    TensorSpec,
    sha256_file,
)
from model import levels as lv

INPUT_NAME = "x"
INPUT_SHAPE = (8, 8)
N_CLASSES = 10
FEATURES = INPUT_SHAPE[0] * INPUT_SHAPE[1]
# keep fraction -> (hidden layers, width, made-up accuracy)
LEVELS: dict[Fraction, tuple[int, int, float]] = {
    Fraction(1): (6, 256, 0.92),
    Fraction(1, 2): (3, 128, 0.88),
    Fraction(1, 4): (2, 64, 0.80),
    Fraction(1, 8): (1, 32, 0.65),
}


def _graph(
    depth: int, width: int, mean: np.ndarray, std: np.ndarray, rng: np.random.Generator
) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(std.astype(np.float32), "std"),
    ]
    nodes = [
        helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["h0"]),
    ]
    fan_in = FEATURES
    for i in range(depth):
        w = rng.normal(0, 1 / np.sqrt(fan_in), size=(fan_in, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
        fan_in = width
    w_out = rng.normal(0, 1 / np.sqrt(fan_in), size=(fan_in, N_CLASSES)).astype(np.float32)
    inits.append(numpy_helper.from_array(w_out, "w_out"))
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "w_out"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [-1, *INPUT_SHAPE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, N_CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [-1, N_CLASSES]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_bundle(directory: Path, name: str = "synthetic", seed: int = 0) -> Path:
    """Write a complete bundle (manifest.json + one ONNX file per level) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, FEATURES)
    std = rng.uniform(0.5, 2.0, FEATURES)
    levels = []
    for fraction, (depth, width, accuracy) in LEVELS.items():
        path = directory / lv.file_name(fraction)
        onnx.save(_graph(depth, width, mean, std, rng), path)
        cost = depth * width / 1000
        levels.append(
            Level(
                name=lv.name(fraction),
                keep_fraction=float(fraction),
                units=max(1, int(16 * fraction)),
                file=path.name,
                sha256=sha256_file(path),
                accuracy=accuracy,
                latency={
                    CPU_PROVIDER: [
                        LatencyStat(
                            batch_size=b, median_ms=0.02 + cost * b * 0.01, p95_ms=0.03 + cost * b * 0.012
                        )
                        for b in (1, 8, 64)
                    ]
                },
                params=depth * width * width,
                flops=2 * depth * width * width,
            )
        )
    manifest = Manifest(
        name=name,
        input=InputSpec(
            name=INPUT_NAME,
            shape=[-1, *INPUT_SHAPE],
            normalization=Normalization(mean=mean.tolist(), std=std.tolist()),
        ),
        outputs=[TensorSpec(name=n, shape=[-1, N_CLASSES]) for n in ("logits", "probabilities")],
        labels=[f"class-{i}" for i in range(N_CLASSES)],
        levels=levels,
        profile=Profile(provider="CPUExecutionProvider", intra_op_threads=1, repeats=10, machine="synthetic"),
        provenance=Provenance(
            dataset="synthetic",
            seed=seed,
            train_config={},
            code_version="test",
            created="2024-01-01T00:00:00Z",
            ranking="outdegree",
        ),
    )
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
    return directory
