"""The family protocol: the NAC registered under it, and what training and export rely on."""

import pytest
import torch

from model import families
from model.nac import NAC


def build():
    torch.manual_seed(0)
    return families.get("nac").build((8, 8), 10, "tiny", {"modules": 8})


def test_registry_knows_the_nac_and_refuses_others():
    assert families.get("nac").unit == "modules" and "digits" in families.get("nac").presets
    with pytest.raises(ValueError, match="unknown model family 'nope'; known: nac"):
        families.get("nope")


def test_nac_family_level_matches_forward_on_kept_units():
    family, model = families.get("nac"), build().eval()
    assert isinstance(model, NAC) and family.units(model) == 8 and family.input_shape(model) == (8, 8)
    keep = family.ranking(model)[:3]
    small = family.level(model, keep).eval()
    x = torch.randn(4, 8, 8)
    assert family.units(small) == 3 and family.knobs(small) == {}
    torch.testing.assert_close(family.forward(small, x, None), family.forward(model, x, keep))
    assert family.flops(small) < family.flops(model)
    again = family.from_config(family.config(model))
    assert family.config(again) == family.config(model)


def test_export_module_normalises_and_folds_the_temperature():
    family, model = families.get("nac"), build().eval()
    mean, std = torch.full((64,), 3.0), torch.full((64,), 2.0)
    x = torch.rand(5, 8, 8) * 16
    with torch.no_grad():
        plain_logits, plain_probs = family.export_module(model, mean, std, 1.0)(x)
        hot_logits, hot_probs = family.export_module(model, mean, std, 2.0)(x)
        want = family.forward(model, (x - 3) / 2, None)
    torch.testing.assert_close(plain_logits, want)
    torch.testing.assert_close(hot_logits, want / 2)
    torch.testing.assert_close(hot_probs, torch.softmax(want / 2, -1))
    assert (hot_probs.max(-1).values < plain_probs.max(-1).values).all()  # T > 1 softens


def test_the_family_refuses_a_foreign_model():
    with pytest.raises(TypeError, match="not a NAC"):
        families.get("nac").units(torch.nn.Linear(2, 2))
