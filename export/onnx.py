"""Any level's `nn.Module` to one checked ONNX file (the shape of timm's `onnx_export`).

Family-agnostic: it sees a module taking one float32 batch (B, *input_shape) and returning a tuple
of tensors, each with the batch as its first axis. Steps: eval mode, export with a dynamic batch
axis, `onnx.checker` with full_check (shape inference included), then parity: onnxruntime and torch
on the same inputs must agree within `atol` on every output and on every row's argmax.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.profile import cpu_session

PARITY_ATOL = 1e-4  # max |onnx - torch| over every output element
FP16_ATOL = 5e-2  # an FP16 graph against its FP32 module (logits of a few units, 11 mantissa bits)
MAX_BATCH = 65536


class ExportError(RuntimeError):
    """Export refused: bad checkpoint or levels, or a graph that fails its checks."""


def onnx_export(
    module: nn.Module,
    path: Path,
    input_shape: Sequence[int],
    input_name: str,
    output_names: Sequence[str],
    check_inputs: np.ndarray,
    atol: float = PARITY_ATOL,
) -> list[np.ndarray]:
    """Export `module` to `path`, check it, prove parity on `check_inputs` (n, *input_shape).
    Returns the ONNX outputs on `check_inputs`, one array per output name."""
    module.eval()
    example = torch.zeros(2, *input_shape)  # batch 2: a batch of 1 invites the exporter to specialise
    # the exporter logs about optional torchvision ops and warns about its own internals: noise here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return check_parity(module, path, input_name, output_names, check_inputs, atol)


def check_parity(
    module: nn.Module,
    path: Path,
    input_name: str,
    output_names: Sequence[str],
    x: np.ndarray,
    atol: float = PARITY_ATOL,
    chunk: int = 256,
    same_argmax: bool = True,
) -> list[np.ndarray]:
    """Run the graph and the module on the same rows; ExportError if any output is not finite or
    differs by more than `atol`, or (with `same_argmax`) the first output's argmax differs on any
    row. An FP16 graph is checked against its FP32 module without the argmax rule: a near tie may
    flip, and its measured accuracy is what decides whether it is kept."""
    session = cpu_session(path)
    runs = [session.run(list(output_names), {input_name: x[i : i + chunk]}) for i in range(0, len(x), chunk)]
    got = [np.concatenate([r[k] for r in runs]) for k in range(len(output_names))]
    with torch.no_grad():
        want = [t.numpy() for t in module(torch.from_numpy(x))]
    for out_name, g, w in zip(output_names, got, want, strict=True):
        if not np.isfinite(g).all():  # NaN would pass the comparison below
            bad = int((~np.isfinite(g)).reshape(len(g), -1).any(axis=1).sum())
            raise ExportError(f"{path.name}: ONNX output {out_name!r} is not finite on {bad} rows")
        diff = float(np.abs(g - w).max())
        if diff > atol:
            raise ExportError(
                f"{path.name}: ONNX output {out_name!r} differs from torch (max |diff| {diff:.2e} > {atol})"
            )
    if same_argmax and not np.array_equal(got[0].argmax(-1), want[0].argmax(-1)):
        raise ExportError(f"{path.name}: ONNX and torch disagree on a predicted class")
    return got
