import math
from typing import Any

import pytest
import torch

from model.nac import (
    NAC,
    PRESETS,
    NACConfig,
    flops_per_example,
    kernel,
    merge_heads,
    split_heads,
)


def tiny(input_shape=(8, 8), tokenizer="image", patch=2, **kw) -> NAC:
    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(PRESETS["tiny"]) | {"tokenizer": tokenizer, "patch": patch} | kw
    return NAC(NACConfig(input_shape=input_shape, num_classes=5, **cfg)).eval()


@pytest.mark.parametrize(
    ("shape", "kind", "patch", "tokens"),
    [
        ((8, 8), "image", 2, 16),
        ((8, 8), "image", 4, 16),  # with stride 2 below: overlapping 4x4 patches
        ((3, 7, 9), "image", 2, 20),
        ((40,), "signal", 4, 10),
        ((13,), "features", 4, 4),
    ],
)
def test_tokenizer_shapes(shape, kind, patch, tokens):
    m = tiny(shape, kind, patch, stride=2 if patch == 4 and kind == "image" else 0)
    x = torch.randn(3, *shape)
    assert m.tokenizer(x).shape == (3, tokens, m.cfg.dim)
    assert m(x).shape == (3, 5)


def test_signal_windows_overlap():
    m = tiny((12,), "signal", 4, window=2)
    x = torch.arange(12.0).reshape(1, 12)
    with torch.no_grad():
        m.tokenizer.proj.weight.copy_(torch.eye(16, 8))  # tokens carry their raw samples
        m.tokenizer.proj.bias.zero_()
        m.tokenizer.pos.zero_()
    tokens = m.tokenizer(x)[0, :, :8]
    assert tokens.shape == (3, 8)
    assert tokens[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert tokens[2].tolist() == [8, 9, 10, 11, 0, 0, 0, 0]  # zero padding past the end


def test_overlapping_patches_share_pixels():
    """4x4 patches at stride 2 on 8x8, padded by one pixel: a token holds its patch's raw pixels,
    and neighbouring tokens hold the two columns they share."""
    m = tiny((8, 8), "image", 4, stride=2, dim=16)
    x = torch.arange(64.0).reshape(1, 8, 8)
    with torch.no_grad():
        m.tokenizer.proj.weight.copy_(torch.eye(16))
        m.tokenizer.proj.bias.zero_()
        m.tokenizer.pos.zero_()
    tokens = m.tokenizer(x)[0].reshape(16, 4, 4)  # (N, patch rows, patch cols)
    assert m.tokenizer.n_tokens == 16
    assert tokens[0, 0].tolist() == [0, 0, 0, 0]  # the top padding row
    assert tokens[0, 1].tolist() == [0, 0, 1, 2]  # left padding column, then pixels 0..2
    assert torch.equal(tokens[0, :, 2:], tokens[1, :, :2])  # overlap with the right neighbour
    assert tokens[5, 1:3, 1:3].tolist() == [[18, 19], [26, 27]]  # row 1, col 1: pixels (2..3, 2..3)


def test_pruned_level_equals_full_model_on_kept_set():
    m = tiny(modules=16)
    x = torch.randn(4, 8, 8)
    keep = m.ranking()[:4]
    small = m.prune(keep)
    assert small.cfg.modules == 4 and small.sig.shape[0] == 4 and small.code.shape[0] == 4
    torch.testing.assert_close(small(x), m(x, keep), rtol=0, atol=1e-6)
    # dropping modules changes the answer: the kept set really is a different circuit
    assert not torch.allclose(m(x), m(x, keep), atol=1e-4)


def test_prune_holds_fewer_parameters():
    m = tiny(modules=16)
    small = m.prune(torch.arange(2))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())


def test_ranking_is_by_outdegree():
    m = tiny(modules=12)
    p = kernel(m.sig, m.sig, m.cfg.eps, m.cfg.tau, self_edges=False)
    outdeg = (p * (1 - torch.eye(12))).sum(0)
    ranked = outdeg[m.ranking()]
    assert torch.all(ranked[:-1] >= ranked[1:])
    assert sorted(m.ranking().tolist()) == list(range(12))


def test_kernel_truncation_and_self_edges():
    sig = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    p = kernel(sig, sig, eps=1.0, tau=0.9, self_edges=True)
    assert torch.equal(torch.diag(p), torch.ones(3))
    assert p[0, 1] == 0  # orthogonal: d = 1 > tau
    assert 0.9 < p[0, 2] < 1


def test_read_in_matches_naive_modfc_keys():
    """The read-in never builds per-(module, token) keys; check it against building them."""
    m = tiny(modules=6)
    c = m.generate()
    x = torch.randn(2, 8, 8)
    tokens = m.ln_tokens(m.tokenizer(x))
    state = m.ln_in(c["state0"].expand(2, -1, -1))
    r = m.read_in
    fast = r(state, tokens, c)
    h, u, n, d = r.h, 6, tokens.shape[1], m.cfg.dim
    q = split_heads(r.q(state, c[r.q.key]), h)
    k = r.k.fc(tokens[:, None] * c[r.k.key][None, :, None]).reshape(2, u, n, h, -1).permute(0, 3, 1, 2, 4)
    v = r.v.fc(tokens[:, None] * c[r.v.key][None, :, None]).reshape(2, u, n, h, -1).permute(0, 3, 1, 2, 4)
    att = torch.einsum("bhud,bhund->bhun", q, k) / math.sqrt(d // h)
    naive = r.o(merge_heads(torch.einsum("bhun,bhund->bhud", att.softmax(-1), v)), c[r.o.key])
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_training_mode_samples_edges_per_example():
    m = tiny(modules=8).train()
    x = torch.randn(1, 8, 8).expand(2, -1, -1)
    out = m(x)  # identical inputs, different sampled circuits
    assert not torch.allclose(out[0], out[1])


def test_flops_shrink_with_modules():
    m = tiny(modules=16)
    full = flops_per_example(m.cfg, 16, 4)
    eighth = flops_per_example(m.prune(torch.arange(2)).cfg, 16, 4)
    assert eighth < full / 3
