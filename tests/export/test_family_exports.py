"""Every registered family exports through the one generic path: parity with torch on every level,
dynamic batch, full check, and a manifest whose per-level units and knobs say what each graph keeps."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.build import PARITY_ATOL
from export.manifest import load_bundle
from model.data import load_dataset
from model.families import FAMILIES, get
from model.train import load_checkpoint


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_exports_with_parity(
    name: str, family_checkpoints: dict[str, Path], family_bundles: dict[str, Path]
) -> None:
    bundle, family = family_bundles[name], get(name)
    manifest = load_bundle(bundle)
    model, meta = load_checkpoint(family_checkpoints[name])
    assert (manifest.family, manifest.unit) == (name, family.unit)
    assert [lv.name for lv in manifest.sorted_levels()] == ["full", "1/2", "1/4", "1/8"]
    mean, std = (torch.tensor(meta["normalization"][k]) for k in ("mean", "std"))
    order, x = torch.tensor(meta["ranking"]["outdegree"]), load_dataset("digits").test.x[:64]
    for lv in manifest.levels:
        onnx.checker.check_model(onnx.load(str(bundle / lv.file)), full_check=True)
        kept, knobs = family.settings(model, Fraction(lv.keep_fraction).limit_denominator())
        assert kept == lv.units
        small = family.level(model, order[:kept], knobs)
        temperature = lv.calibration.temperature if lv.calibration else 1.0
        module = family.export_module(small, mean, std, temperature)
        session = ort.InferenceSession(str(bundle / lv.file), providers=["CPUExecutionProvider"])
        for b in (1, 5, 64):  # a dynamic batch axis
            got = session.run(["logits"], {"input": x[:b]})[0]
            with torch.no_grad():
                want = module.eval()(torch.from_numpy(x[:b]))[0].numpy()
            # as export checks it: on the logits before the temperature (a small T scales rounding)
            assert np.abs(got - want).max() * min(1.0, temperature) <= PARITY_ATOL


def test_nfm_levels_say_what_they_keep(family_bundles: dict[str, Path]) -> None:
    by_name = {lv.name: lv for lv in load_bundle(family_bundles["nfm"]).levels}
    # tiny: 2 pass-2 layers -> units pass 1 + 2 reads; 1/2 keeps one read, 1/4 and 1/8 pass 1 alone
    assert [by_name[n].units for n in ("full", "1/2", "1/4", "1/8")] == [3, 2, 1, 1]
    assert by_name["full"].knobs == {"passes": 2, "reads": 2}
    assert by_name["1/2"].knobs == {"passes": 2, "reads": 1}
    assert by_name["1/4"].knobs == by_name["1/8"].knobs == {"passes": 1, "reads": 0}
    assert by_name["1/4"].flops < by_name["1/2"].flops < by_name["full"].flops
    assert by_name["1/4"].params < by_name["full"].params / 2  # no pass-2 weights in its graph
