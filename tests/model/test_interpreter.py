"""The Neural Interpreter family: shapes, its two knobs, ranking by routed mass."""

from fractions import Fraction
from typing import Any

import pytest
import torch

from model import families
from model.interpreter import (
    LOC,
    PRESETS,
    Interpreter,
    InterpreterConfig,
    ModLin,
    compatibility,
    flops_per_example,
    split_cost,
)


def tiny(input_shape=(8, 8), **kw: Any) -> Interpreter:
    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(PRESETS["tiny"]) | kw
    return Interpreter(InterpreterConfig(input_shape=input_shape, num_classes=5, **cfg)).eval()


@pytest.mark.parametrize(
    ("shape", "kw", "tokens"),
    [
        ((8, 8), {}, 16 + 1),  # 4x4 patches at stride 2, plus one CLS token
        ((8, 8), {"cls_tokens": 2, "locs": 2}, 16 + 2),
        ((40,), {"tokenizer": "signal", "patch": 2, "window": 4}, 20 + 1),
        ((40,), {"tokenizer": "signal", "patch": 2, "window": 4, "stem": 0}, 20 + 1),
        ((13,), {"tokenizer": "features", "patch": 4, "stem": 0}, 4 + 1),
    ],
)
def test_shapes(shape, kw, tokens):
    m = tiny(shape, **kw)
    x = torch.randn(3, *shape)
    assert m.n_tokens == tokens
    assert m(x).shape == (3, 5)
    assert m(x, mass=True).shape == (3, m.cfg.functions)
    assert m(x, keep=torch.tensor([2, 0]), iterations=1).shape == (3, 5)


def test_stem_convolves_before_the_tokenizer_and_keeps_the_token_grid():
    for shape, kw in (((8, 8), {}), ((40,), {"tokenizer": "signal", "patch": 2, "window": 4})):
        plain, stemmed = tiny(shape, **kw, stem=0), tiny(shape, **kw, stem=4)
        assert stemmed.n_tokens == plain.n_tokens  # the same patches, 4 channels each
        assert stemmed.tokenizer.proj.in_features == 4 * plain.tokenizer.proj.in_features
        assert stemmed.stem.macs > 0 and plain.stem.macs == 0 and plain.stem.conv is None
        extra = flops_per_example(stemmed) - flops_per_example(plain)  # the stem, wider token inputs
        wider = stemmed.tokenizer.n_tokens * 3 * plain.tokenizer.proj.in_features * stemmed.cfg.dim
        assert extra == 2 * (stemmed.stem.macs + wider)
    # signals: a chunk of p samples is p * C values, sample-major, so token i still starts at sample i * p
    m = tiny((40,), tokenizer="signal", patch=2, window=4, stem=4)
    x = torch.zeros(1, 40)
    x[0, 30] = 1.0  # the 5-tap stem moves only samples 28..32
    y = m.stem(x).reshape(40, 4)
    assert torch.equal(y.abs().sum(-1) != y[0].abs().sum(), (torch.arange(40) - 30).abs() <= 2)
    with pytest.raises(ValueError, match="not feature vectors"):
        tiny((13,), tokenizer="features", patch=4, stem=4)


def test_modlin_has_no_one_plus():
    lin = ModLin(4, 3, 2)
    codes = torch.randn(5, 2)
    x = torch.randn(2, 1, 7, 4)
    m = torch.nn.functional.layer_norm(lin.to_mod(codes), (4,))  # (U, din)
    want = lin.fc(x * m[:, None, :])
    torch.testing.assert_close(lin(x, codes), want)
    assert lin(x, codes).shape == (2, 5, 7, 3)


def test_compatibility_normalises_over_the_functions_and_cuts_far_ones():
    types = torch.randn(2, 6, 8)
    sig = torch.randn(4, 8)
    c = compatibility(types, sig, torch.tensor(1.0), tau=2.0, straight_through=False)
    assert c.shape == (2, 4, 6)
    torch.testing.assert_close(c.sum(1), torch.ones(2, 6), atol=1e-5, rtol=0)
    # a type opposite to every signature is past any cut below 2: it reaches no function
    far = compatibility(-sig[:1].expand(1, 1, -1), sig[:1], torch.tensor(1.0), 1.5, False)
    assert float(far.abs().max()) == 0.0


def test_straight_through_cut_passes_gradients():
    types = torch.randn(1, 3, 8, requires_grad=True)
    sig = torch.randn(4, 8)
    plain = compatibility(types, sig, torch.tensor(1.0), tau=0.0, straight_through=False)
    assert float(plain.detach().abs().max()) == 0.0  # tau 0 cuts everything
    st = compatibility(types, sig, torch.tensor(1.0), tau=0.0, straight_through=True)
    torch.testing.assert_close(st, plain)  # the same values
    (st * torch.randn_like(st)).sum().backward()
    assert types.grad is not None and float(types.grad.abs().sum()) > 0


def test_token_routed_only_to_dropped_functions_passes_through_unchanged():
    cfg = InterpreterConfig(input_shape=(8, 8), num_classes=5, **PRESETS["tiny"])  # type: ignore[arg-type]
    torch.manual_seed(0)
    loc = LOC(cfg).eval()
    x = torch.randn(2, 5, cfg.dim)
    codes = torch.randn(3, cfg.code_dim)
    # token 0's type matches only function 0; keep functions 1 and 2 and cut at a small distance
    sig = torch.randn(3, cfg.type_dim)
    types = torch.randn(2, 5, cfg.type_dim)
    types[:, 0] = sig[0]
    sig[1:] = -sig[0] + 0.01 * torch.randn(2, cfg.type_dim)
    route = compatibility(types, sig[1:], torch.tensor(1.0), tau=0.5, straight_through=False)
    assert float(route[:, :, 0].abs().max()) == 0.0
    y = loc(x, route, codes[1:])
    torch.testing.assert_close(y[:, 0], x[:, 0])  # the residual carries it
    assert not torch.allclose(y[:, 1:], x[:, 1:])  # the others were computed on


def test_level_model_matches_forward_on_kept_functions_and_iterations():
    family, model = families.get("interpreter"), tiny(functions=8, iterations=4)
    keep = torch.tensor([5, 2, 7])
    small = family.level(model, keep, {"iterations": 2}).eval()
    x = torch.randn(4, 8, 8)
    assert family.units(small) == 3 and family.knobs(small) == {"iterations": 2}
    torch.testing.assert_close(family.forward(small, x, None), model(x, keep, 2))
    again = family.from_config(family.config(model))
    assert family.config(again) == family.config(model)
    with pytest.raises(ValueError, match=r"iterations must be in 1\.\.4"):
        family.level(model, keep, {"iterations": 5})


def test_fewer_iterations_and_functions_cost_proportionally_less():
    model = tiny(functions=8, iterations=4)
    full = flops_per_example(model)
    fewer = [flops_per_example(model.prune(torch.arange(8), n)) for n in (3, 2, 1)]
    assert full > fewer[0] > fewer[1] > fewer[2]
    half_funcs = flops_per_example(model.prune(torch.arange(4)))
    assert 0.45 < half_funcs / full < 0.6  # linear in U, plus the fixed tokenizer, types and head
    # fewer iterations = fewer LOC runs (the same weights, applied fewer times)
    calls: list[int] = []
    model.locs[0].register_forward_hook(lambda *_: calls.append(1))
    for n in (4, 1):
        calls.clear()
        model.prune(torch.arange(8), n).locs[0].register_forward_hook(lambda *_: calls.append(1))
        model(torch.randn(1, 8, 8), iterations=n)
        assert len(calls) == n


def test_cost_fraction_splits_over_both_knobs():
    assert split_cost(Fraction(1), 8, 4) == (8, 4)
    assert split_cost(Fraction(1, 2), 8, 4) == (4, 4)
    assert split_cost(Fraction(1, 4), 8, 4) == (4, 2)
    assert split_cost(Fraction(1, 8), 8, 4) == (2, 2)
    assert split_cost(Fraction(1, 3), 8, 4) == (3, 4)  # no exact split: round the functions
    family, model = families.get("interpreter"), tiny(functions=8, iterations=4)
    assert family.settings(model, Fraction(1, 4)) == (4, {"iterations": 2})


def test_ranking_by_routed_mass_on_data():
    family, model = families.get("interpreter"), tiny(functions=6)
    x = torch.randn(32, 8, 8)
    mass = model.measure_mass(x)
    assert mass.shape == (6,) and float(mass.sum()) == pytest.approx(model.n_tokens, rel=1e-3)
    order = family.ranking(model, x)
    assert torch.equal(order, torch.argsort(mass, descending=True, stable=True))
    assert sorted(order.tolist()) == list(range(6))
    # without data: the running mean training keeps, updated by full-width training batches only
    model.train()
    before = model.mass.clone()
    model(x, keep=torch.tensor([0, 1]))
    assert torch.equal(model.mass, before)
    model(x)
    assert not torch.equal(model.mass, before)
    assert torch.equal(family.ranking(model), torch.argsort(model.mass, descending=True, stable=True))


def test_training_samples_iterations_and_evaluation_runs_all():
    family, model = families.get("interpreter"), tiny(functions=4, iterations=4)
    x = torch.randn(2, 8, 8)
    torch.testing.assert_close(family.forward(model, x, None), model(x, None, 4))
    model.train()
    torch.manual_seed(1)
    outs = {tuple(family.forward(model, x, None).detach().flatten().tolist()) for _ in range(12)}
    assert len(outs) > 1  # different iteration counts drawn


def test_the_family_refuses_a_foreign_model():
    with pytest.raises(TypeError, match="not an Interpreter"):
        families.get("interpreter").units(torch.nn.Linear(2, 2))
