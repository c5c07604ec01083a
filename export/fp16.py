"""An exported FP32 graph -> its FP16 twin: FP16 weights and arithmetic, FP32 input and outputs.

Converted at the ONNX level, after the exporter has folded constants in FP32, so anything computed
once from the weights (a NAC's log-kernel, floored at 1e-9) is rounded to FP16 only as a result:
done in FP16 its floor would flush to 0 and its log to -inf. Steps: every FLOAT initializer,
Constant and tensor attribute becomes FLOAT16 (clipped to FP16's finite range; a nonzero value
below its smallest subnormal keeps that subnormal, with its sign, so a floor or epsilon never
becomes 0); every Cast to FLOAT casts to FLOAT16; a Cast from FP32 follows the input and a Cast to
FP32 precedes each output. A graph with subgraphs (If, Loop, Scan) is refused. onnxruntime runs
the result on CUDA in FP16; on CPU it inserts casts around nodes it has no FP16 kernel for.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)


class Fp16Error(ValueError):
    """The graph cannot be converted (it has subgraphs)."""


def _half(array: np.ndarray) -> np.ndarray:
    a = np.clip(array.astype(np.float32), -FP16_MAX, FP16_MAX)
    small = (a != 0) & (np.abs(a) < FP16_TINY)
    a = np.where(small, np.sign(a) * FP16_TINY, a)
    return a.astype(np.float16)


def _half_tensor(t: TensorProto) -> TensorProto:
    if t.data_type != TensorProto.FLOAT:
        return t
    return numpy_helper.from_array(_half(numpy_helper.to_array(t)), t.name)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A converted copy of `model` (one FP32 input, FP32 outputs); the input and output names and
    types stay as they were."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for i, t in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_half_tensor(t))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise Fp16Error(f"node {node.name or node.op_type} has a subgraph: not converted")
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_half_tensor(attr.t))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    # FP32 at the edges: the input cast in, each output cast out
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    inputs -= {t.name for t in graph.initializer}
    for name in inputs:
        for node in graph.node:
            node.input[:] = [f"{name}_fp16" if x == name else x for x in node.input]
        graph.node.insert(0, helper.make_node("Cast", [name], [f"{name}_fp16"], to=TensorProto.FLOAT16))
    for output in graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        name = output.name
        for node in graph.node:
            node.output[:] = [f"{name}_fp16" if x == name else x for x in node.output]
            node.input[:] = [f"{name}_fp16" if x == name else x for x in node.input]
        graph.node.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
    del graph.value_info[:]  # FP32 types of intermediates: inferred again by the checker
    return out
