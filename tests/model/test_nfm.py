from typing import Any

import pytest
import torch

from model import families
from model.nfm import NFM, PRESETS, NFMConfig, Read, rank_reads, top_k_attention


def tiny(input_shape=(8, 8), kind="image", **kw) -> NFM:
    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(PRESETS["tiny"]) | {"kind": kind} | kw
    return NFM(NFMConfig(input_shape=input_shape, num_classes=5, **cfg)).eval()


def open_reads(model: NFM) -> None:
    """Gates at 0 make every read the identity: open them so reads change the answer."""
    with torch.no_grad():
        for read in model.reads.values():
            assert isinstance(read, Read)
            read.gamma.fill_(1.0)


@pytest.mark.parametrize(
    ("shape", "kind", "strides", "grids"),
    [
        ((8, 8), "image", (1, 2), [(8, 8), (4, 4)]),
        ((3, 7, 9), "image", (1, 2), [(7, 9), (4, 5)]),
        ((40,), "signal", (1, 2, 2), [(40,), (20,), (10,)]),
        ((13,), "features", (1, 2), [(1,), (1,)]),  # features: one position, strides ignored
    ],
)
def test_shapes(shape, kind, strides, grids):
    m = tiny(shape, kind, strides=strides)
    assert m.grids == grids and m.units() == 1 + len(strides)
    x = torch.randn(3, *shape)
    open_reads(m)
    for keep in (None, torch.tensor([0]), torch.tensor([0, 2])):
        assert m(x, keep).shape == (3, 5)


def test_top_k_attention_keeps_k_weights_and_renormalises():
    w = torch.softmax(torch.randn(6, 5), -1)
    for k in (1, 2, 3):
        s = top_k_attention(w, k)
        assert ((s > 0).sum(-1) == k).all()
        torch.testing.assert_close(s.sum(-1), torch.ones(6), atol=1e-4, rtol=0)  # eps: 1e-8
        kept = s > 0  # the kept weights are the k largest, in their original order
        assert torch.equal(kept, w >= torch.topk(w, k, -1).values[..., -1:])
    torch.testing.assert_close(top_k_attention(w, 5), w)  # k >= slots: nothing to drop


def test_a_skipped_read_is_exactly_the_identity_path():
    m = tiny()
    open_reads(m)
    x = torch.randn(4, 8, 8)
    seen: dict[str, torch.Tensor] = {}
    for name in ("0", "1"):
        m.reads[name].register_forward_hook(lambda mod, args, out, n=name: seen.__setitem__(n, out))
    m(x, torch.tensor([0, 2]))  # unit 2: the read of pass-2 layer 1; layer 0's read skipped
    assert set(seen) == {"1"}
    # the skipped layer's output went on unchanged: layer 1 of pass 2 saw layer 0's plain output
    h0 = m.pass2[0](m._as_grid(x))
    torch.testing.assert_close(seen["1"], m.reads["1"](m.pass2[1](h0), _memory(m, x)))


def _memory(m: NFM, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    h, out = m._as_grid(x), []
    for layer, k, v in zip(m.pass1, m.keys, m.values, strict=True):
        h = layer(h)
        out.append((k(h), v(h)))
    return out


def test_reads_matter_once_their_gates_open():
    m = tiny()
    x = torch.randn(4, 8, 8)
    torch.testing.assert_close(m(x, torch.tensor([0, 1, 2])), m(x, torch.tensor([0, 1])))  # γ = 0
    open_reads(m)
    assert not torch.allclose(m(x, torch.tensor([0, 1, 2])), m(x, torch.tensor([0, 1])))


def test_the_pass_1_only_level_never_runs_pass_2():
    m = tiny()
    ran: list[str] = []
    for name, mod in m.named_modules():
        if name.startswith(("pass2.", "reads.", "keys.", "values.", "head2")) and name.count(".") <= 1:
            mod.register_forward_hook(lambda mod, args, out, n=name: ran.append(n))
    x = torch.randn(4, 8, 8)
    m(x, torch.tensor([0]))
    assert ran == []
    small = m.prune(torch.tensor([0]))
    assert small.cfg.passes == 1 and not hasattr(small, "pass2") and len(small.reads) == 0
    torch.testing.assert_close(small(x), m.head1(_pass1(m, x)))
    m(x)
    assert "pass2.0" in ran and "head2" in ran


def _pass1(m: NFM, x: torch.Tensor) -> torch.Tensor:
    h = m._as_grid(x)
    for layer in m.pass1:
        h = layer(h)
    return h


def test_family_levels_match_forward_on_kept_units_and_round_trip():
    family, m = families.get("nfm"), tiny(strides=(1, 2, 1))
    open_reads(m)
    x = torch.randn(4, 8, 8)
    for keep, knobs in (([0], {"passes": 1, "reads": 0}), ([0, 3, 1], {"passes": 2, "reads": 2})):
        small = family.level(m, torch.tensor(keep))
        assert family.knobs(small) == knobs and family.units(small) == len(keep)
        torch.testing.assert_close(family.forward(small, x, None), family.forward(m, x, torch.tensor(keep)))
        assert family.flops(small) < family.flops(m)
        again = family.from_config(family.config(small))
        assert family.config(again) == family.config(small)
        again.load_state_dict(small.state_dict())
    assert family.knobs(m) == {"passes": 2, "reads": 3} and family.unit == "stages"


def test_training_drops_reads_per_batch():
    m = tiny(read_drop=0.5).train()
    ran: list[int] = []
    m.reads["0"].register_forward_hook(lambda *a: ran.append(1))
    for _ in range(40):
        m(torch.randn(2, 8, 8))
    assert 5 < len(ran) < 35  # about half the batches
    m.eval()
    ran.clear()
    m(torch.randn(2, 8, 8))
    assert ran == [1]  # never at eval


def test_ranking_puts_pass_1_first_then_reads_by_their_effect_on_loss():
    m = tiny(strides=(1, 2, 1))
    assert m.ranking().tolist() == [0, 1, 2, 3]  # before it is measured
    with torch.no_grad():  # only the read of layer 2 (unit 3) is open: only it changes the loss
        read = m.reads["2"]
        assert isinstance(read, Read)
        read.gamma.fill_(5.0)
    x, y = torch.randn(64, 8, 8), torch.randint(0, 5, (64,))
    with torch.no_grad():
        base = torch.nn.functional.cross_entropy(m(x), y)
        without = torch.nn.functional.cross_entropy(m(x, torch.tensor([0, 1, 2])), y)
    order = rank_reads(m, x, y).tolist()
    assert order[0] == 0 and sorted(order) == [0, 1, 2, 3]
    assert (order[1] == 3) == bool(without > base)  # it ranks first exactly when skipping it hurts
    assert families.get("nfm").ranking(m).tolist() == order
    assert isinstance(families.get("nfm"), families.RanksOnData)
    assert not isinstance(families.get("nac"), families.RanksOnData)


def test_the_family_refuses_a_foreign_model():
    with pytest.raises(TypeError, match="not an NFM"):
        families.get("nfm").units(torch.nn.Linear(2, 2))
