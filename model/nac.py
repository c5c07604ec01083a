"""A Neural Attentive Circuit (Rahaman et al., NeurIPS 2022) whose processor modules can be dropped.

Two systems, as in the paper:
- the circuit *generator* turns learned signatures and codes into a circuit: the attention kernel
  between modules, the modules' initial states and every ModFC's per-module modulation. It depends
  on no input, so at export it runs once and its outputs are stored as constants;
- the circuit *executor* runs a circuit on a batch: tokenizer -> read-in -> L propagator layers
  (kernel-masked attention among modules) -> read-out -> logits.

Pruning is explicit: `forward(x, keep=idx)` runs on a subset of processor modules, and
`prune(idx)` builds a smaller NAC that holds only those modules' parameters. Shapes in comments:
B batch, N tokens, U processor modules, O output modules, D width, H heads, S signature width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import levels

Circuit = dict[str, Tensor]
TokenizerKind = Literal["image", "signal", "features"]


@dataclass(frozen=True)
class NACConfig:
    input_shape: tuple[int, ...]  # one example, e.g. (8, 8) image, (40,) signal, (F,) features
    num_classes: int
    tokenizer: TokenizerKind = "image"
    patch: int = 2  # image patch side / signal chunk length / features per token
    stride: int = 0  # image: patch stride (0: the patch side, patches do not overlap)
    window: int = 1  # signal/features: a token sees this many consecutive chunks (overlapping)
    modules: int = 64  # processor modules U (the ones pruning drops)
    outputs: int = 4  # read-out modules O (never dropped)
    dim: int = 64  # D: state, code and token width
    sig_dim: int = 32  # S
    layers: int = 2  # propagator layers L
    heads: int = 4
    ffn_mult: int = 2
    eps: float = 1.0  # kernel bandwidth: P = exp(-d / eps)
    tau: float = 0.9  # truncation: no edge where d = 1 - cos > tau
    temperature: float = 0.5  # relaxed-Bernoulli temperature for sampled edges in training
    dropout: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> NACConfig:
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]


PRESETS: dict[str, dict[str, object]] = {
    # digits: 8x8 images, 4x4 patches at stride 2 (overlapping by half, one pixel of zero padding) -> 16
    # tokens, each seeing a quarter of the glyph, at the cost of 2x2 patches (the token count decides
    # it). Full-level test accuracy over seeds 0-2 (torch, 100 epochs): 2x2 patches ~97%; these
    # patches 97.6%; these patches and warps (model/train.py RECIPES) 98.9%, every level 98.6-99.1%
    "digits": dict(tokenizer="image", patch=4, stride=2, modules=64, dim=64, layers=2, dropout=0.2),
    # MNIST-1D: 40-sample signals, chunks of 2 -> 20 tokens, each seeing four chunks (8 samples,
    # overlapping by 6: features that straddle a chunk border). Seed 0's full level, with the
    # recipe's shifts: 97.1%; with chunks of 4 seeing two (10 tokens) instead: 95.6%. Seeds 0-2
    # (torch, 40 epochs): full 97.2%, every level 97.0-97.3%
    "mnist1d": dict(tokenizer="signal", patch=2, window=4, modules=64, dim=64, layers=2, dropout=0.1),
    # flat feature vectors (user .npz): 4 features per token
    "features": dict(tokenizer="features", patch=4, modules=64, dim=64, layers=2),
    # a compute-bound model for overload benchmarks (dropout as digits: without it, 256 modules
    # overfit digits' ~1,260 training images: 98.6% train against 90.6% validation accuracy)
    "large": dict(tokenizer="image", patch=2, modules=256, dim=96, layers=3, dropout=0.2),
    # the overload showcase (bench/plan.py): MNIST-1D's tokens with twice the modules, so compute
    # (read-in and propagator attention, which grows with the square of the modules kept) dominates
    # a request's cost at the full level and the 1/8 level is several times cheaper. Trained plain and
    # short (RECIPES): about 100 s an epoch on one contended thread
    "mnist1d-wide": dict(tokenizer="signal", patch=2, window=4, modules=128, dim=64, layers=2, dropout=0.1),
    "tiny": dict(modules=8, outputs=2, dim=16, sig_dim=8, layers=1, heads=2),  # tests
}


# ---------------------------------------------------------------------------------------------
# building blocks


class ModFC(nn.Module):
    """ModFC(x; c_u) = W (x * (1 + alpha * LN(W_c c_u))) + b: one weight shared by all modules,
    modulated per module by its code. The modulation depends on the code only, so the generator
    computes it (`modulation`) and the executor applies it (`forward`)."""

    def __init__(self, din: int, dout: int, code_dim: int, role: Literal["proc", "out"]) -> None:
        super().__init__()
        self.fc = nn.Linear(din, dout)
        self.to_mod = nn.Linear(code_dim, din, bias=False)
        self.alpha = nn.Parameter(torch.tensor(0.1))
        self.role = role  # whose codes modulate it: processor or output modules
        self.key = ""  # its name in the circuit dict, set by NAC.__init__

    def modulation(self, codes: Tensor) -> Tensor:  # (U, C) -> (U, din)
        m = self.to_mod(codes)
        return 1 + self.alpha * F.layer_norm(m, m.shape[-1:])

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:  # (B, U, din), (U, din) -> (B, U, dout)
        return self.fc(x * mod)


def kernel(sig_q: Tensor, sig_k: Tensor, eps: float, tau: float, self_edges: bool) -> Tensor:
    """Connectivity P_ij = exp(-(1 - cos(s_i, s_j)) / eps), zero where the distance exceeds tau.
    (Uq, S), (Uk, S) -> (Uq, Uk). With self_edges each module always hears itself (P_ii = 1)."""
    d = 1 - F.normalize(sig_q, dim=-1) @ F.normalize(sig_k, dim=-1).T
    p = torch.exp(-d / eps) * (d <= tau)
    if self_edges:
        p = torch.where(torch.eye(p.shape[0], dtype=torch.bool, device=p.device), 1.0, p)
    return p


def sample_edges(p: Tensor, batch: int, temperature: float) -> Tensor:
    """Training: K_ij ~ RelaxedBernoulli(P_ij) per example, so edges are near-binary and the
    signatures still get gradients. Truncated edges stay 0, certain ones stay 1. -> (B, Uq, Uk)"""
    u = torch.rand(batch, *p.shape, device=p.device).clamp(1e-6, 1 - 1e-6)
    logits = torch.logit(p.clamp(1e-6, 1 - 1e-6)) + torch.log(u) - torch.log1p(-u)
    k = torch.sigmoid(logits / temperature)
    return torch.where(p <= 0, 0.0, torch.where(p >= 1, 1.0, k))


def log_kernel(k: Tensor) -> Tensor:
    # Floor instead of -inf: an output module whose every edge is truncated (possible once modules
    # are dropped) then attends uniformly instead of producing NaN; a floored edge weighs ~1e-9.
    return torch.log(k.clamp_min(1e-9))


class Tokenizer(nn.Module):
    """Raw example -> N tokens of width D, plus a learned positional embedding.

    Image patches may overlap (stride < patch): a patch's pixels straddle its neighbours' borders, as
    a convolution's do. The projection is one Linear over a patch's C*p*p pixels, applied as a
    convolution with that weight, so non-overlapping checkpoints load unchanged."""

    def __init__(self, cfg: NACConfig) -> None:
        super().__init__()
        self.kind, self.p, self.shape = cfg.tokenizer, cfg.patch, cfg.input_shape
        if self.kind == "image":
            c, h, w = self.shape if len(self.shape) == 3 else (1, *self.shape)
            self.stride = cfg.stride or self.p
            self.grid = (math.ceil(h / self.stride), math.ceil(w / self.stride))
            # zero padding that gives the grid: split evenly, the odd pixel at the bottom/right
            ph, pw = ((g - 1) * self.stride + self.p - n for g, n in zip(self.grid, (h, w), strict=True))
            self.padding = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            n, width = self.grid[0] * self.grid[1], c * self.p * self.p
        else:  # signal or features: a flat vector cut into chunks of p; token i sees chunks i..i+w-1
            self.window = cfg.window
            n, width = math.ceil(math.prod(self.shape) / self.p), self.p * cfg.window
        self.n_tokens = n
        self.proj = nn.Linear(width, cfg.dim)
        self.pos = nn.Parameter(torch.randn(n, cfg.dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # (B, *input_shape) -> (B, N, D)
        b = x.shape[0]
        if self.kind == "image":
            x = F.pad(x.reshape(b, -1, *x.shape[-2:]), self.padding)  # (B, C, H', W')
            weight = self.proj.weight.reshape(-1, x.shape[1], self.p, self.p)  # (D, C, p, p)
            tokens = F.conv2d(x, weight, self.proj.bias, stride=self.stride)  # (B, D, gh, gw)
            return tokens.flatten(2).transpose(1, 2) + self.pos
        x = x.reshape(b, -1)
        x = F.pad(x, (0, (self.n_tokens + self.window - 1) * self.p - x.shape[1]))
        chunks = x.reshape(b, -1, self.p)  # (B, N + w - 1, p)
        tokens = torch.cat([chunks[:, i : i + self.n_tokens] for i in range(self.window)], dim=-1)
        return self.proj(tokens) + self.pos


def split_heads(x: Tensor, h: int) -> Tensor:  # (B, U, D) -> (B, H, U, D/H)
    return x.reshape(*x.shape[:2], h, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:  # (B, H, U, D/H) -> (B, U, D)
    return x.transpose(1, 2).flatten(2)


class KernelAttention(nn.Module):
    """SKMDPA: attention from receivers to senders, logits plus log K. The receiver's code makes
    q (and the output projection); the sender's code makes k and v."""

    def __init__(self, cfg: NACConfig, receiver: Literal["proc", "out"]) -> None:
        super().__init__()
        d, self.h = cfg.dim, cfg.heads
        self.q = ModFC(d, d, d, receiver)
        self.k = ModFC(d, d, d, "proc")
        self.v = ModFC(d, d, d, "proc")
        self.o = ModFC(d, d, d, receiver)

    def forward(self, xq: Tensor, xkv: Tensor, c: Circuit, log_k: Tensor) -> Tensor:
        # xq (B, Uq, D), xkv (B, Uk, D), log_k (Uq, Uk) or (B, Uq, Uk) -> (B, Uq, D)
        q = split_heads(self.q(xq, c[self.q.key]), self.h)
        k = split_heads(self.k(xkv, c[self.k.key]), self.h)
        v = split_heads(self.v(xkv, c[self.v.key]), self.h)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Uq, Uk)
        logits = logits + (log_k.unsqueeze(-3) if log_k.dim() == 3 else log_k)
        out = merge_heads(torch.softmax(logits, dim=-1) @ v)
        return self.o(out, c[self.o.key])


class FeedForward(nn.Module):
    def __init__(self, cfg: NACConfig, role: Literal["proc", "out"]) -> None:
        super().__init__()
        hidden = cfg.dim * cfg.ffn_mult
        self.up = ModFC(cfg.dim, hidden, cfg.dim, role)
        self.down = ModFC(hidden, cfg.dim, cfg.dim, role)

    def forward(self, x: Tensor, c: Circuit) -> Tensor:
        return self.down(F.gelu(self.up(x, c[self.up.key])), c[self.down.key])


class ReadIn(nn.Module):
    """Each module's state queries the tokens; keys and values are ModFCs of the tokens
    conditioned on the *module's* code, i.e. a (B, U, N, D) tensor if built naively. Because
    ModFC is linear in the token, we never build it:
        q . W_h(t * m_u) = ((W_h^T q) * m_u) . t        (k's bias is constant over tokens: drops)
        sum_n a_n W_h(t_n * m_u) + b = W_h((sum_n a_n t_n) * m_u) + b     (weights sum to 1)
    so the cost is O(U N D) instead of O(U N D^2)."""

    def __init__(self, cfg: NACConfig) -> None:
        super().__init__()
        d, self.h = cfg.dim, cfg.heads
        self.q = ModFC(d, d, d, "proc")
        self.k = ModFC(d, d, d, "proc")
        self.v = ModFC(d, d, d, "proc")
        self.o = ModFC(d, d, d, "proc")

    def forward(self, state: Tensor, tokens: Tensor, c: Circuit) -> Tensor:
        # state (B, U, D), tokens (B, N, D) -> (B, U, D)
        h, dh = self.h, state.shape[-1] // self.h
        q = self.q(state, c[self.q.key]).reshape(*state.shape[:2], h, dh)  # (B, U, H, dh)
        wk = self.k.fc.weight.reshape(h, dh, -1)  # (H, dh, D)
        qk = torch.einsum("buhe,hed->buhd", q, wk) * c[self.k.key][:, None, :]  # (B, U, H, D)
        att = torch.einsum("buhd,bnd->buhn", qk, tokens) / math.sqrt(dh)
        agg = torch.einsum("buhn,bnd->buhd", torch.softmax(att, dim=-1), tokens)  # (B, U, H, D)
        wv = self.v.fc.weight.reshape(h, dh, -1)
        v = torch.einsum("buhd,hed->buhe", agg * c[self.v.key][:, None, :], wv)
        v = v + self.v.fc.bias.reshape(h, dh)
        return self.o(v.flatten(2), c[self.o.key])


class Propagator(nn.Module):
    """Pre-LN kernel attention among modules + ModFC feed-forward, both residual."""

    def __init__(self, cfg: NACConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = KernelAttention(cfg, receiver="proc")
        self.ffn = FeedForward(cfg, "proc")
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, c: Circuit, log_k: Tensor) -> Tensor:  # (B, U, D)
        y = self.ln1(x)
        x = x + self.drop(self.attn(y, y, c, log_k))
        return x + self.drop(self.ffn(self.ln2(x), c))


# ---------------------------------------------------------------------------------------------
# the circuit


class NAC(nn.Module):
    def __init__(self, cfg: NACConfig) -> None:
        super().__init__()
        self.cfg = cfg
        u, o, d, s = cfg.modules, cfg.outputs, cfg.dim, cfg.sig_dim
        # processor modules: signature (where it sits), code (what it computes)
        self.sig = nn.Parameter(torch.randn(u, s))
        self.code = nn.Parameter(torch.randn(u, d) * 0.5)
        self.out_sig = nn.Parameter(torch.randn(o, s))
        self.out_code = nn.Parameter(torch.randn(o, d) * 0.5)
        self.init_state = nn.Linear(d, d)  # x_u = Linear(c_u)

        self.tokenizer = Tokenizer(cfg)
        self.ln_tokens = nn.LayerNorm(d)
        self.ln_in = nn.LayerNorm(d)
        self.read_in = ReadIn(cfg)
        self.ffn_in = FeedForward(cfg, "proc")
        self.ln_ffn_in = nn.LayerNorm(d)
        self.propagators = nn.ModuleList(Propagator(cfg) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(d)
        self.read_out = KernelAttention(cfg, receiver="out")
        self.ffn_out = FeedForward(cfg, "out")
        self.ln_ffn_out = nn.LayerNorm(d)
        self.ln_head = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_classes)

        # every ModFC learns its key in the circuit dict; the generator fills that key
        self.modfcs = [m for m in self.modules() if isinstance(m, ModFC)]
        for name, m in self.named_modules():
            if isinstance(m, ModFC):
                m.key = "mod." + name

    # --- generator: everything that depends on signatures and codes, not on the input ---------

    def generate(self, keep: Tensor | None = None) -> Circuit:
        sig, code = (self.sig, self.code) if keep is None else (self.sig[keep], self.code[keep])
        cfg = self.cfg
        c: Circuit = {
            "kernel": kernel(sig, sig, cfg.eps, cfg.tau, self_edges=True),  # (U, U)
            "out_kernel": kernel(self.out_sig, sig, cfg.eps, cfg.tau, self_edges=False),  # (O, U)
            "state0": self.init_state(code),  # (U, D)
            "out_state0": self.init_state(self.out_code),  # (O, D)
        }
        for m in self.modfcs:
            c[m.key] = m.modulation(code if m.role == "proc" else self.out_code)
        return c

    def ranking(self) -> Tensor:
        """Processor modules by out-degree on the eval kernel, most listened-to first:
        out_j = sum_{i != j} P_ij, how much the rest of the circuit listens to module j."""
        with torch.no_grad():
            p = kernel(self.sig, self.sig, self.cfg.eps, self.cfg.tau, self_edges=False)
            p = p * (1 - torch.eye(p.shape[0]))
            return torch.argsort(p.sum(0), descending=True, stable=True)

    # --- executor -----------------------------------------------------------------------------

    def execute(self, x: Tensor, c: Circuit) -> Tensor:  # (B, *input_shape) -> logits (B, classes)
        b = x.shape[0]
        tokens = self.ln_tokens(self.tokenizer(x))  # (B, N, D)
        if self.training:  # sampled edges per example
            log_k = log_kernel(sample_edges(c["kernel"], b, self.cfg.temperature))  # (B, U, U)
            log_ko = log_kernel(sample_edges(c["out_kernel"], b, self.cfg.temperature))  # (B, O, U)
        else:  # the kernel itself
            log_k, log_ko = log_kernel(c["kernel"]), log_kernel(c["out_kernel"])
        state = c["state0"].expand(b, -1, -1)  # (B, U, D)
        state = state + self.read_in(self.ln_in(state), tokens, c)
        state = state + self.ffn_in(self.ln_ffn_in(state), c)
        for layer in self.propagators:
            state = layer(state, c, log_k)
        out = c["out_state0"].expand(b, -1, -1)  # (B, O, D)
        out = out + self.read_out(out, self.ln_out(state), c, log_ko)
        out = out + self.ffn_out(self.ln_ffn_out(out), c)
        return self.head(self.ln_head(out.mean(dim=1)))  # pool over output modules

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.execute(x, self.generate(keep))

    # --- pruning ------------------------------------------------------------------------------

    def prune(self, keep: Tensor) -> NAC:
        """A new, smaller NAC holding only the kept processor modules (in `keep`'s order)."""
        small = NAC(replace(self.cfg, modules=len(keep)))
        state = self.state_dict()
        state["sig"], state["code"] = state["sig"][keep], state["code"][keep]
        small.load_state_dict(state)
        return small.train(self.training)


def flops_per_example(cfg: NACConfig, n_tokens: int, token_width: int) -> int:
    """Multiply-adds x2 of one example through the executor (the generator's work is constant)."""
    u, o, d, h = cfg.modules, cfg.outputs, cfg.dim, cfg.heads
    f = d * cfg.ffn_mult
    macs = n_tokens * token_width * d  # tokenizer
    macs += 4 * u * d * d + 2 * u * h * n_tokens * d + 2 * u * d * f  # read-in + its feed-forward
    macs += cfg.layers * (4 * u * d * d + 2 * u * u * d + 2 * u * d * f)  # propagators
    macs += 2 * o * d * d + 2 * u * d * d + 2 * o * u * d + 2 * o * d * f  # read-out
    macs += d * cfg.num_classes  # head
    return 2 * macs


class Frozen(nn.Module):
    """One level ready for export: the generator has run once and its outputs are buffers
    (constants in the graph); input normalisation sits in front, probabilities beside logits."""

    def __init__(self, nac: NAC, mean: Tensor, std: Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.nac = nac.eval()
        self.temperature = float(temperature)  # calibration, folded in before the softmax
        with torch.no_grad():
            circuit = nac.generate()
        self.keys = list(circuit)
        for i, key in enumerate(self.keys):
            self.register_buffer(f"circuit_{i}", circuit[key])
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean.reshape(1, *nac.cfg.input_shape))
        self.register_buffer("std", std.reshape(1, *nac.cfg.input_shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # raw (B, *input_shape)
        circuit = {key: getattr(self, f"circuit_{i}") for i, key in enumerate(self.keys)}
        logits = self.nac.execute((x - self.mean) / self.std, circuit)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# the family interface (model.families.Family): what training and export call


class NACFamily:
    """The NAC as a prunable family: units are processor modules, ranked by out-degree."""

    name = "nac"
    unit = "modules"
    leading_units = 0
    presets = PRESETS

    def build(
        self, input_shape: tuple[int, ...], num_classes: int, preset: str, overrides: Mapping[str, Any]
    ) -> nn.Module:
        fields = dict(PRESETS[preset]) | dict(overrides)
        return NAC(NACConfig(input_shape=input_shape, num_classes=num_classes, **fields))  # type: ignore[arg-type]

    def config(self, model: nn.Module) -> dict[str, Any]:
        return _nac(model).cfg.to_dict()

    def from_config(self, config: Mapping[str, Any]) -> nn.Module:
        return NAC(NACConfig.from_dict(dict(config)))

    def input_shape(self, model: nn.Module) -> tuple[int, ...]:
        return _nac(model).cfg.input_shape

    def units(self, model: nn.Module) -> int:
        return _nac(model).cfg.modules

    def ranking(self, model: nn.Module, x: Tensor | None = None) -> Tensor:
        return _nac(model).ranking()  # out-degree: signatures alone, no data

    def settings(self, model: nn.Module, fraction: Fraction) -> tuple[int, dict[str, int]]:
        return levels.units_kept(_nac(model).cfg.modules, fraction), {}

    def forward(self, model: nn.Module, x: Tensor, keep: Tensor | None) -> Tensor:
        return _nac(model)(x, keep)

    def level(self, model: nn.Module, keep: Tensor, knobs: Mapping[str, int] | None = None) -> nn.Module:
        if knobs:
            raise ValueError(f"a NAC level has no knobs besides its modules, got {dict(knobs)}")
        return _nac(model).prune(keep)

    def knobs(self, model: nn.Module) -> dict[str, int]:
        return {}  # a NAC level is its module count alone

    def flops(self, model: nn.Module) -> int:
        nac = _nac(model)
        return flops_per_example(nac.cfg, nac.tokenizer.n_tokens, nac.tokenizer.proj.in_features)

    def export_module(self, model: nn.Module, mean: Tensor, std: Tensor, temperature: float) -> nn.Module:
        return Frozen(_nac(model), mean, std, temperature)


def _nac(model: nn.Module) -> NAC:
    if not isinstance(model, NAC):
        raise TypeError(f"the nac family got a {type(model).__name__}, not a NAC")
    return model


NAC_FAMILY = NACFamily()
