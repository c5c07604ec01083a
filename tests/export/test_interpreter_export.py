"""A Neural Interpreter bundle: its (functions, iterations) grid named by cost, parity per level."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.manifest import load_bundle
from export.onnx import PARITY_ATOL
from model.families import get
from model.train import load_checkpoint


def test_levels_are_named_by_cost_and_say_their_knobs(interpreter_bundle):
    manifest = load_bundle(interpreter_bundle)
    assert (manifest.family, manifest.unit) == ("interpreter", "functions")
    grid = [(lv.name, lv.units, lv.knobs) for lv in manifest.sorted_levels()]
    # tiny preset: 4 functions, 2 iterations; a cost fraction halves each knob in turn
    assert grid == [
        ("full", 4, {"iterations": 2}),
        ("1/2", 2, {"iterations": 2}),
        ("1/4", 2, {"iterations": 1}),
        ("1/8", 1, {"iterations": 1}),
    ]
    flops = [lv.flops for lv in manifest.sorted_levels()]
    assert flops == sorted(flops, reverse=True) and flops[2] < flops[0] / 3


def test_every_level_matches_torch_with_a_dynamic_batch(interpreter_bundle, interpreter_checkpoint):
    manifest = load_bundle(interpreter_bundle)
    family = get("interpreter")
    model, meta = load_checkpoint(interpreter_checkpoint)
    order = torch.tensor(meta["ranking"]["outdegree"])
    mean = torch.tensor(meta["normalization"]["mean"])
    std = torch.tensor(meta["normalization"]["std"])
    x = np.random.default_rng(0).random((7, 8, 8), dtype=np.float32) * 16
    for lv in manifest.levels:
        graph = onnx.load(str(interpreter_bundle / lv.file))
        assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
        small = family.level(model, order[: lv.units], lv.knobs)
        module = family.export_module(small, mean, std, lv.calibration.temperature if lv.calibration else 1.0)
        with torch.no_grad():
            want = module(torch.from_numpy(x))[0].numpy()
        session = ort.InferenceSession(str(interpreter_bundle / lv.file), providers=["CPUExecutionProvider"])
        for rows in (slice(0, 1), slice(0, 7)):
            got = session.run(["logits"], {"input": x[rows]})[0]
            assert np.abs(got - want[rows]).max() <= PARITY_ATOL, lv.name


def test_the_checkpoint_ranks_functions_and_keeps_the_random_control(interpreter_checkpoint):
    meta = json.loads((interpreter_checkpoint / "checkpoint.json").read_text())
    assert meta["family"] == "interpreter"
    assert sorted(meta["ranking"]["outdegree"]) == sorted(meta["ranking"]["random"]) == [0, 1, 2, 3]
    assert set(meta["test_accuracy"]["outdegree"]) == {"full", "1/2", "1/4", "1/8"}
