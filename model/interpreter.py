"""A Neural Interpreter (Rahaman et al., NeurIPS 2021, arXiv 2110.06399) whose functions can be
dropped and whose script can stop early.

The pieces, in the paper's words:
- tokens: patches or chunks of the input (model.nac's tokenizer, optionally after a small
  convolution, the `stem`) with learned CLS tokens in front;
- functions: U of them, each with a fixed random signature s_u and a learned code c_u;
- type matching: a type-inference MLP gives each token a type t_i; token i reaches function u in
  proportion to exp(-(1 - cos(s_u, t_i)) / sigma), cut to zero past a distance tau, normalised
  over the functions;
- a line of code (LOC) runs one stream per function: ModAttn then ModMLP, every projection a
  ModLin conditioned on the function's code, every residual weighted by the token's routing;
- a script applies the same LOCs `iterations` times (shared weights); the head reads the CLS token.

Two knobs, both explicit: `forward(x, keep=idx, iterations=n)` runs only some functions for only
some iterations, and `prune(idx, iterations)` builds the smaller model a level's graph comes from.
Shapes in comments: B batch, N tokens (CLS included), U functions, D width, H heads, S type width.
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
from model.nac import NACConfig, Tokenizer

ROUTE_EPS = 1e-6  # in C = C~ / (sum_u C~ + eps): a token no kept function accepts gets C = 0


@dataclass(frozen=True)
class InterpreterConfig:
    input_shape: tuple[int, ...]  # one example, e.g. (8, 8) image, (40,) signal, (F,) features
    num_classes: int
    tokenizer: Literal["image", "signal", "features"] = "image"
    patch: int = 4  # image patch side / signal chunk length / features per token (as the NAC's)
    stride: int = 2  # image: patch stride (0: the patch side)
    window: int = 1  # signal/features: a token sees this many consecutive chunks
    stem: int = 0  # images, signals: channels of a small convolution in front of the tokenizer (0: none)
    cls_tokens: int = 1
    functions: int = 8  # U (the units a level drops)
    iterations: int = 4  # n: how often the script applies the function pod (the second knob)
    locs: int = 1  # lines of code per iteration (distinct weights, shared across iterations)
    dim: int = 64  # D: token width
    code_dim: int = 32
    type_dim: int = 16  # S: signature and type width
    heads: int = 4
    mlp_mult: int = 2
    tau: float = 1.4  # truncation: token i never reaches function u where 1 - cos(s_u, t_i) > tau
    sigma: float = 1.0  # initial kernel bandwidth (learned)
    dropout: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> InterpreterConfig:
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])  # type: ignore[arg-type]
        return cls(**d)  # type: ignore[arg-type]


PRESETS: dict[str, dict[str, object]] = {
    # digits: the NAC's tokens (4x4 patches at stride 2 -> 16 tokens, each a quarter of the glyph),
    # read through a 16-channel 3x3 stem. Seed 0, 100 epochs with warps: full level 99.7% without
    # the stem, 100% with it (every level 100%; 30 epochs without it: 97.2%)
    "digits": dict(
        tokenizer="image", patch=4, stride=2, stem=16, functions=8, iterations=4, dim=32, code_dim=16
    ),
    # MNIST-1D: the NAC's tokens (chunks of 2, each token seeing 4 chunks -> 20 tokens) read through
    # a 16-channel 5-tap stem. Seed 0, 40 epochs with shifts: full level 96.2% with linear tokens,
    # 97.6% with the stem (its 1/8 level 97.5%). The stem costs ~1% of full's FLOPs
    "mnist1d": dict(
        tokenizer="signal", patch=2, window=4, stem=16, functions=8, iterations=4, dim=32, code_dim=16
    ),
    "features": dict(tokenizer="features", patch=4, functions=8, iterations=4, dim=32, code_dim=16),
    "tiny": dict(functions=4, iterations=2, dim=16, code_dim=8, type_dim=8, heads=2, stem=4),  # tests
}


# ---------------------------------------------------------------------------------------------
# building blocks


class ModLin(nn.Module):
    """ModLin(x; c_u) = W (x * LN(W_c c_u)) + b: one weight for all functions, modulated per
    function by its code (no "1 +", unlike the NAC's ModFC). The modulation depends on the code
    only, so `modulation` runs once per forward (at export: once, a constant)."""

    def __init__(self, din: int, dout: int, code_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(din, dout)
        self.to_mod = nn.Linear(code_dim, din, bias=False)

    def modulation(self, codes: Tensor) -> Tensor:  # (U, C) -> (U, 1, din)
        m = self.to_mod(codes)
        return F.layer_norm(m, m.shape[-1:]).unsqueeze(1)

    def forward(self, x: Tensor, codes: Tensor) -> Tensor:  # (B, 1 or U, N, din) -> (B, U, N, dout)
        y: Tensor = self.fc(x * self.modulation(codes))
        return y


def compatibility(types: Tensor, sig: Tensor, sigma: Tensor, tau: float, straight_through: bool) -> Tensor:
    """C_ui: how much token i goes to function u. (B, N, S), (U, S) -> (B, U, N).
    C~ = exp(-d / sigma) with d = 1 - cos, zero past tau; normalised over the functions given, so
    dropping functions renormalises over the kept ones. In training the cut passes gradients as
    if it were not there (straight-through), so a token can learn its way back into range."""
    d = 1 - torch.einsum("bns,us->bun", F.normalize(types, dim=-1), F.normalize(sig, dim=-1))
    soft = torch.exp(-d / sigma)
    cut = soft * (d <= tau)
    routed = cut / (cut.sum(dim=1, keepdim=True) + ROUTE_EPS)
    if not straight_through:
        return routed
    # the gradient of the uncut, normalised kernel (cutting before normalising would divide by
    # the eps alone for a token cut from every function: a gradient of 1/eps)
    smooth = soft / (soft.sum(dim=1, keepdim=True) + ROUTE_EPS)
    return smooth + (routed - smooth).detach()


class Stem(nn.Module):
    """Optional: a convolution (3x3 on images, 5 taps on signals) and a GELU in front of the
    NAC's linear tokenizer, so a token is a nonlinear feature of its patch, not a linear map of its
    pixels. Its output is laid out for that tokenizer: images (B, C, H, W); signals (B, L * C),
    sample-major, so a chunk of p samples is p * C values (`per_sample` scales the patch)."""

    def __init__(self, cfg: InterpreterConfig) -> None:
        super().__init__()
        c, self.kind = cfg.stem, cfg.tokenizer
        self.per_sample = c if c and self.kind == "signal" else 1
        self.conv: nn.Module | None = None
        self.out_shape: tuple[int, ...] = cfg.input_shape
        self.macs = 0  # per example
        if not c:
            return
        if self.kind == "image":
            if len(cfg.input_shape) != 2:
                raise ValueError(f"a stem needs single-channel (H, W) images, got {cfg.input_shape}")
            self.conv = nn.Conv2d(1, c, 3, padding=1)
            self.out_shape = (c, *cfg.input_shape)
            self.macs = math.prod(cfg.input_shape) * c * 9
        elif self.kind == "signal":
            self.conv = nn.Conv1d(1, c, 5, padding=2)
            self.out_shape = (math.prod(cfg.input_shape) * c,)
            self.macs = math.prod(cfg.input_shape) * c * 5
        else:
            raise ValueError("a stem is for images and signals, not feature vectors")

    def forward(self, x: Tensor) -> Tensor:  # (B, *input_shape) -> (B, *out_shape)
        if self.conv is None:
            return x
        b = x.shape[0]
        y = F.gelu(self.conv(x.reshape(b, 1, *x.shape[1:])))  # (B, C, H, W) or (B, C, L)
        return y if self.kind == "image" else y.transpose(1, 2).reshape(b, -1)


class LOC(nn.Module):
    """One line of code: a stream per function, each token weighted by its routing C_ui.
        a_ui = x_i + C_ui ModAttn_u(LN x)_i,  y_ui = a_ui + C_ui ModMLP_u(LN a_ui)
    and the interpreter's output y_i = x_i + sum_u C_ui (y_ui - x_i). With routings summing to 1
    that is the paper's sum_u C_ui y_ui; written as a residual, a token that no kept function
    accepts (all C_ui = 0) passes through unchanged instead of becoming zeros."""

    def __init__(self, cfg: InterpreterConfig) -> None:
        super().__init__()
        d, c, self.h = cfg.dim, cfg.code_dim, cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (ModLin(d, d, c) for _ in range(4))
        self.up = ModLin(d, d * cfg.mlp_mult, c)
        self.down = ModLin(d * cfg.mlp_mult, d, c)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, route: Tensor, codes: Tensor) -> Tensor:
        # x (B, N, D), route (B, U, N), codes (U, C) -> (B, N, D)
        b, n, _ = x.shape
        r = route.unsqueeze(-1)  # (B, U, N, 1)
        y = self.ln1(x).unsqueeze(1)  # (B, 1, N, D): every function reads the same tokens

        def heads(t: Tensor) -> Tensor:  # (B, U, N, D) -> (B, U, H, N, D/H)
            return t.reshape(b, -1, n, self.h, t.shape[-1] // self.h).transpose(2, 3)

        q, k, v = heads(self.q(y, codes)), heads(self.k(y, codes)), heads(self.v(y, codes))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, U, H, N, N)
        # weights times C_ui C_uj, renormalised over j: a function attends among its own tokens
        pair = (route.unsqueeze(-1) * route.unsqueeze(-2)).unsqueeze(2)  # (B, U, 1, N, N)
        att = att * pair
        att = att / (att.sum(dim=-1, keepdim=True) + ROUTE_EPS)
        out = (att @ v).transpose(2, 3).reshape(b, -1, n, x.shape[-1])  # (B, U, N, D)
        a: Tensor = x.unsqueeze(1) + r * self.drop(self.o(out, codes))  # (B, U, N, D)
        mlp: Tensor = self.down(F.gelu(self.up(self.ln2(a), codes)), codes)
        delta: Tensor = a + r * self.drop(mlp) - x.unsqueeze(1)  # y_ui - x_i
        return x + (r * delta).sum(dim=1)


# ---------------------------------------------------------------------------------------------
# the interpreter


class Interpreter(nn.Module):
    def __init__(self, cfg: InterpreterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        u, d, s = cfg.functions, cfg.dim, cfg.type_dim
        # Signatures stay at their random initial values (the official preset): a buffer, so a
        # level slices it like a code. Codes are what a function learns.
        self.sig: Tensor
        self.register_buffer("sig", torch.randn(u, s))
        self.code = nn.Parameter(torch.randn(u, cfg.code_dim))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(cfg.sigma)))
        # Routed mass per function, a running mean over training batches run with every function:
        # the ranking used while training (the final one is measured on the validation split).
        self.mass: Tensor
        self.register_buffer("mass", torch.full((u,), 1.0 / u))

        self.stem = Stem(cfg)
        tok_cfg = NACConfig(
            input_shape=self.stem.out_shape,
            num_classes=cfg.num_classes,
            tokenizer=cfg.tokenizer,
            patch=cfg.patch * self.stem.per_sample,
            stride=cfg.stride,
            window=cfg.window,
            dim=d,
        )
        self.tokenizer = Tokenizer(tok_cfg)
        self.cls = nn.Parameter(torch.randn(cfg.cls_tokens, d) * 0.02)
        self.type_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, s))
        self.locs = nn.ModuleList(LOC(cfg) for _ in range(cfg.locs))
        self.ln_head = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_classes)

    @property
    def n_tokens(self) -> int:
        return self.tokenizer.n_tokens + self.cfg.cls_tokens

    def route(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # (B, N, D) -> (B, U', N)
        sig = self.sig if keep is None else self.sig[keep]
        return compatibility(self.type_mlp(x), sig, self.log_sigma.exp(), self.cfg.tau, self.training)

    def forward(
        self, x: Tensor, keep: Tensor | None = None, iterations: int | None = None, mass: bool = False
    ) -> Tensor:
        """Logits (B, classes) running the kept functions for `iterations` (None: the config's).
        With mass=True, the routed mass instead: (B, U') sum_i C_ui, averaged over iterations."""
        n = self.cfg.iterations if iterations is None else iterations
        codes = self.code if keep is None else self.code[keep]
        b = x.shape[0]
        h = torch.cat([self.cls.expand(b, -1, -1), self.tokenizer(self.stem(x))], dim=1)  # (B, N, D)
        routed = torch.zeros(b, codes.shape[0])
        for _ in range(n):
            r = self.route(h, keep)  # types follow the tokens: matched afresh every iteration
            routed = routed + r.sum(-1) / n
            for loc in self.locs:
                h = loc(h, r, codes)
        if self.training and keep is None and not mass:
            with torch.no_grad():
                self.mass.lerp_(routed.mean(0), 0.05)
        if mass:
            return routed
        logits: Tensor = self.head(self.ln_head(h[:, : self.cfg.cls_tokens].mean(1)))
        return logits

    def ranking(self) -> Tensor:
        """Functions by routed mass, most first (the running mean kept by training)."""
        return torch.argsort(self.mass, descending=True, stable=True)

    @torch.no_grad()
    def measure_mass(self, x: Tensor) -> Tensor:
        """(U,) mean routed mass sum_i C_ui over the examples x (normalised), every function kept."""
        was = self.training
        self.eval()
        total = torch.zeros(self.cfg.functions)
        for i in range(0, len(x), 512):
            total += self(x[i : i + 512], mass=True).sum(0)
        self.train(was)
        return total / max(1, len(x))

    def prune(self, keep: Tensor, iterations: int | None = None) -> Interpreter:
        """A new, smaller interpreter holding only the kept functions (in `keep`'s order)."""
        n = self.cfg.iterations if iterations is None else iterations
        if not 1 <= n <= self.cfg.iterations:
            raise ValueError(f"iterations must be in 1..{self.cfg.iterations}, got {n}")
        small = Interpreter(replace(self.cfg, functions=len(keep), iterations=n))
        state = self.state_dict()
        for key in ("sig", "code", "mass"):
            state[key] = state[key][keep]
        small.load_state_dict(state)
        return small.train(self.training)


def flops_per_example(model: Interpreter) -> int:
    """Multiply-adds x2 of one example (the code modulations are constant per graph: not counted).
    Every function's stream is dense over the tokens, so the cost is linear in U and in n."""
    cfg, n = model.cfg, model.n_tokens
    d, s, f, u = cfg.dim, cfg.type_dim, cfg.dim * cfg.mlp_mult, cfg.functions
    macs = model.stem.macs + model.tokenizer.n_tokens * model.tokenizer.proj.in_features * d  # tokenizer
    per_loc = u * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)  # q, k, v, o; attention; MLP
    per_iter = n * (d * d + d * s) + n * u * s + cfg.locs * per_loc  # type inference + matching
    macs += cfg.iterations * per_iter + d * cfg.num_classes
    return 2 * macs


class Frozen(nn.Module):
    """One level ready for export: input normalisation in front, probabilities beside logits.
    The code modulations depend on no input: the exporter folds them into constants."""

    def __init__(self, model: Interpreter, mean: Tensor, std: Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.temperature = float(temperature)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean.reshape(1, *model.cfg.input_shape))
        self.register_buffer("std", std.reshape(1, *model.cfg.input_shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # raw (B, *input_shape)
        logits = self.model((x - self.mean) / self.std)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# the family interface (model.families.Family)


def split_cost(fraction: Fraction, functions: int, iterations: int) -> tuple[int, int]:
    """A level's cost fraction of full spent on the two knobs: (functions kept, iterations).
    levels.split_evenly halves each knob in turn; a fraction it cannot reach exactly keeps every
    iteration and rounds the function count, as a NAC level rounds its modules."""
    split = levels.split_evenly(fraction, (functions, iterations))
    if split is None:
        return levels.units_kept(functions, fraction), iterations
    return split[0], split[1]


class InterpreterFamily:
    """Neural Interpreters as a prunable family: units are functions, ranked by routed mass; a
    level also runs fewer iterations (its `iterations` knob)."""

    name = "interpreter"
    unit = "functions"
    leading_units = 0
    presets = PRESETS

    def build(
        self, input_shape: tuple[int, ...], num_classes: int, preset: str, overrides: Mapping[str, Any]
    ) -> nn.Module:
        fields = dict(PRESETS[preset]) | dict(overrides)
        return Interpreter(InterpreterConfig(input_shape=input_shape, num_classes=num_classes, **fields))  # type: ignore[arg-type]

    def config(self, model: nn.Module) -> dict[str, Any]:
        return _ni(model).cfg.to_dict()

    def from_config(self, config: Mapping[str, Any]) -> nn.Module:
        return Interpreter(InterpreterConfig.from_dict(dict(config)))

    def input_shape(self, model: nn.Module) -> tuple[int, ...]:
        return _ni(model).cfg.input_shape

    def units(self, model: nn.Module) -> int:
        return _ni(model).cfg.functions

    def ranking(self, model: nn.Module, x: Tensor | None = None) -> Tensor:
        ni = _ni(model)
        if x is None:
            return ni.ranking()
        return torch.argsort(ni.measure_mass(x), descending=True, stable=True)

    def settings(self, model: nn.Module, fraction: Fraction) -> tuple[int, dict[str, int]]:
        cfg = _ni(model).cfg
        kept, n = split_cost(fraction, cfg.functions, cfg.iterations)
        return kept, {"iterations": n}

    def forward(self, model: nn.Module, x: Tensor, keep: Tensor | None) -> Tensor:
        ni = _ni(model)
        # Training samples the second knob per batch (as LayerDrop does depth): every prefix of
        # the script learns to answer. Evaluation runs the model's own iterations.
        n = int(torch.randint(1, ni.cfg.iterations + 1, ())) if ni.training else None
        return ni(x, keep, n)  # type: ignore[no-any-return]

    def level(self, model: nn.Module, keep: Tensor, knobs: Mapping[str, int] | None = None) -> nn.Module:
        return _ni(model).prune(keep, (knobs or {}).get("iterations"))

    def knobs(self, model: nn.Module) -> dict[str, int]:
        return {"iterations": _ni(model).cfg.iterations}

    def flops(self, model: nn.Module) -> int:
        return flops_per_example(_ni(model))

    def export_module(self, model: nn.Module, mean: Tensor, std: Tensor, temperature: float) -> nn.Module:
        return Frozen(_ni(model), mean, std, temperature)


def _ni(model: nn.Module) -> Interpreter:
    if not isinstance(model, Interpreter):
        raise TypeError(f"the interpreter family got a {type(model).__name__}, not an Interpreter")
    return model


INTERPRETER_FAMILY = InterpreterFamily()
