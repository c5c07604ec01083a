"""FP16 levels: the ONNX conversion (export.fp16) and the export's keep-or-drop rule (export.build),
on the session's trained bundle (no second torch export)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import build
from export.fp16 import FP16_TINY, Fp16Error, to_fp16
from export.manifest import CPU_PROVIDER, Manifest, read_manifest
from model.data import load_dataset
from model.families import get
from model.train import load_checkpoint


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: list[np.ndarray] = session.run(None, {"input": x})
    return out


def test_a_level_converted_keeps_fp32_edges_and_its_answers(trained_bundle):
    manifest = read_manifest(trained_bundle)
    x = np.random.default_rng(0).uniform(0, 16, (64, 8, 8)).astype(np.float32)
    for lv in manifest.levels:
        fp32 = onnx.load(str(trained_bundle / lv.file))
        fp16 = to_fp16(fp32)
        onnx.checker.check_model(fp16, full_check=True)
        io = [v.type.tensor_type.elem_type for v in [*fp16.graph.input, *fp16.graph.output]]
        assert io == [TensorProto.FLOAT] * 3, "input and both outputs stay FP32"
        weights = [
            t for t in fp16.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
        ]
        assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
        (logits32, probs32), (logits16, probs16) = _run(fp32, x), _run(fp16, x)
        assert np.isfinite(logits16).all() and np.abs(probs16 - probs32).max() < 1e-2
        assert np.abs(logits16 - logits32).max() < build.FP16_ATOL


def test_small_constants_keep_a_subnormal_and_big_ones_stay_finite():
    values = np.array([1e-9, -1e-9, 0.0, 1e6, -1e6, 0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [numpy_helper.from_array(values, "c")],
    )
    model = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    c = numpy_helper.to_array(model.graph.initializer[0])
    assert c.dtype == np.float16
    assert list(c[:3]) == [np.float16(FP16_TINY), np.float16(-FP16_TINY), 0.0]  # floors never become 0
    assert np.isfinite(c).all() and c[3] == np.finfo(np.float16).max and c[5] == 0.5
    (y,) = _run(model, np.zeros(6, np.float32))
    assert y.dtype == np.float32 and np.isfinite(y).all()


def test_subgraphs_are_refused():
    branch = helper.make_graph([], "b", [], [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(Fp16Error, match="subgraph"):
        to_fp16(helper.make_model(graph))


@pytest.fixture
def full_level(trained_bundle, trained_checkpoint, tmp_path):
    """(arguments of build.export_fp16) for the bundle's full level, its file copied to tmp_path."""
    manifest = read_manifest(trained_bundle)
    level = next(lv for lv in manifest.levels if lv.name == "full")
    model, meta = load_checkpoint(trained_checkpoint)
    family = get(meta["family"])
    norm = (torch.tensor(meta["normalization"]["mean"]), torch.tensor(meta["normalization"]["std"]))
    small = family.level(model, torch.tensor(meta["ranking"]["outdegree"])[: level.units])
    assert level.calibration is not None
    module = family.export_module(small, *norm, level.calibration.temperature)
    path = tmp_path / level.file
    path.write_bytes((trained_bundle / level.file).read_bytes())
    test = load_dataset(meta["dataset"], meta["seed"]).test
    return (family, small, module, Fraction(1), level.units, path, level, level.calibration.temperature, test)


def test_an_fp16_twin_is_a_level_of_its_own_with_its_measured_accuracy(full_level, trained_bundle):
    half = build.export_fp16(*full_level)
    assert half is not None
    fp32 = full_level[6]
    assert (half.name, half.precision, half.keep_fraction) == ("full@fp16", "fp16", 1.0)
    assert abs(half.accuracy - fp32.accuracy) <= build.FP16_MAX_LOSS
    assert half.test_size == fp32.test_size and half.latency == {}  # timed by the server, on CUDA
    path = full_level[5].with_name(half.file)
    assert path.is_file() and half.file == "level-full-fp16.onnx"
    # it sits in a manifest beside its FP32 twin (same keep fraction, another precision)
    raw = json.loads((trained_bundle / "manifest.json").read_text())
    raw["levels"].append(half.model_dump(mode="json"))
    twins = Manifest.model_validate(raw)
    assert [lv.name for lv in twins.sorted_levels()][:2] == ["full", "full@fp16"]
    assert [lv.name for lv in twins.sorted_levels(("fp32",))] == ["full", "1/2", "1/4", "1/8"]
    raw["levels"][-1]["precision"] = "fp32"
    raw["levels"][-1]["name"] = "another"
    with pytest.raises(ValueError, match="duplicate keep fractions"):
        Manifest.model_validate(raw)
    assert CPU_PROVIDER in twins.levels[0].latency


def test_an_fp16_twin_that_loses_too_much_is_dropped(full_level, monkeypatch, capsys):
    monkeypatch.setattr(build, "FP16_MAX_LOSS", -1.0)  # any loss, even none, is too much
    assert build.export_fp16(*full_level) is None
    assert not full_level[5].with_name("level-full-fp16.onnx").exists()
    assert "dropped" in capsys.readouterr().err
