"""Neural Function Modules (Lamb, Goyal, Słowik, Mozer, Beaudoin, Bengio, AISTATS 2021) whose pass-2
reads, and whole second pass, can be dropped.

Two passes over the same input, with separate weights:
- pass 1 (bottom-up): a small stack of layers (convolutions over images and signals, 1x1 "MLP"
  layers over feature vectors). Each layer writes a key and a value at every position; a head on
  its last state answers on its own (the "pass 1 only" level);
- pass 2 (top-down): the same stack shape, wider. After each layer, that layer *reads*: its query,
  at every position and head, attends over every pass-1 state (resized to its own resolution,
  so higher layers' states reach lower ones) plus an all-zero null slot; the attention keeps its
  top-k weights; the read enters through a gated residual h + γ·f(read), γ initialised at 0. The
  answer comes from pass 2's head.

Units, the things a level keeps: unit 0 is pass 1 with its head (always run: pass 2 reads its
states), unit r >= 1 is the r-th reading layer of pass 2. A level keeping no read never runs pass 2
and answers from the pass-1 head; a skipped read is exactly the identity path of its residual.
Shapes in comments: B batch, C channels, P positions, S stored states, H heads, E key width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import levels

Kind = Literal["image", "signal", "features"]


@dataclass(frozen=True)
class NFMConfig:
    input_shape: tuple[int, ...]  # one example, e.g. (8, 8) image, (40,) signal, (F,) features
    num_classes: int
    kind: Kind = "image"
    width1: int = 32  # pass-1 channels: narrow, so the pass-1-only level is cheap
    width2: int = 64  # pass-2 channels
    strides: tuple[int, ...] = (1, 2, 1)  # one layer per stride, in each pass
    kernel: int = 3  # features: always 1 (one position)
    heads: int = 2
    key_dim: int = 16  # E, per head; values have the same width
    top_k: int = 2  # attention weights kept per query, of S + 1 slots
    read_drop: float = 0.25  # training: each kept read is skipped with this chance (LayerDrop)
    dropout: float = 0.0  # before each head
    passes: int = 2  # a level's model: 1 holds pass 1 only (no pass-2 weights at all)
    reads: tuple[int, ...] | None = None  # pass-2 layers that read (None: every layer)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NFMConfig:
        d = dict(d)
        for key in ("input_shape", "strides", "reads"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def read_layers(self) -> tuple[int, ...]:
        if self.passes == 1:
            return ()
        return tuple(range(len(self.strides))) if self.reads is None else self.reads


PRESETS: dict[str, dict[str, object]] = {
    # digits: 8x8 -> 8x8 -> 4x4 -> 4x4; recipe (model/train.py RECIPES): 100 epochs with warps
    "digits": dict(kind="image", width1=32, width2=64, strides=(1, 2, 1), kernel=3),
    # MNIST-1D: 40 -> 40 -> 20 -> 10 samples; wide kernels, as the signal's features span samples
    "mnist1d": dict(kind="signal", width1=32, width2=64, strides=(1, 2, 2), kernel=5),
    "features": dict(kind="features", width1=64, width2=128, strides=(1, 1, 1), kernel=1),
    "large": dict(kind="image", width1=64, width2=128, strides=(1, 2, 1, 1), kernel=3),
    "tiny": dict(width1=8, width2=8, strides=(1, 2), heads=2, key_dim=4),  # tests
}


# ---------------------------------------------------------------------------------------------
# building blocks


def _conv(cfg: NFMConfig, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if cfg.kind == "image" else nn.Conv1d
    return conv(cin, cout, kernel, stride=stride, padding=kernel // 2)


class Layer(nn.Module):
    """conv -> per-example norm -> GELU. GroupNorm(1) rather than BatchNorm: levels change what
    later layers see, and running statistics shared by all levels would fit none of them."""

    def __init__(self, cfg: NFMConfig, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = _conv(cfg, cin, cout, cfg.kernel, stride)
        self.norm = nn.GroupNorm(1, cout)

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, *grid) -> (B, Cout, *grid')
        return F.gelu(self.norm(self.conv(x)))


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """A stored state at another layer's resolution: average-pooled down by whole factors (the
    presets' strides), nearest-neighbour otherwise.
    (B, C, *grid) -> (B, C, *size)"""
    grid = tuple(x.shape[2:])
    if grid == tuple(size):
        return x
    if all(g % s == 0 for g, s in zip(grid, size, strict=True)):  # down by whole factors
        factor = tuple(g // s for g, s in zip(grid, size, strict=True))
        return F.avg_pool2d(x, factor, factor) if x.dim() == 4 else F.avg_pool1d(x, factor, factor)
    return F.interpolate(x, size=tuple(size), mode="nearest")  # up, or down by an uneven factor


def top_k_attention(w: Tensor, k: int) -> Tensor:
    """Sparse attention on softmax weights: subtract the (k+1)-th largest, clamp at 0, renormalise,
    so at most k weights stay positive and they sum to 1. (..., S) -> (..., S)"""
    if w.shape[-1] <= k:
        return w
    delta = torch.topk(w, k + 1, dim=-1).values[..., -1:]
    w = (w - delta).clamp_min(0)
    return w / (w.sum(-1, keepdim=True) + 1e-8)  # eps: ties at the threshold leave all zeros


class Read(nn.Module):
    """One pass-2 layer's read of the pass-1 memory, as a gated residual: h + γ·f(attention)."""

    def __init__(self, cfg: NFMConfig) -> None:
        super().__init__()
        self.heads, self.key_dim, self.top_k = cfg.heads, cfg.key_dim, cfg.top_k
        self.query = _conv(cfg, cfg.width2, cfg.heads * cfg.key_dim, 1)
        self.out = _conv(cfg, cfg.heads * cfg.key_dim, cfg.width2, cfg.kernel)  # f
        self.gamma = nn.Parameter(torch.zeros(()))  # 0: the read starts as the identity path

    def forward(self, h: Tensor, memory: list[tuple[Tensor, Tensor]]) -> Tensor:
        # h (B, C2, *grid); memory: per pass-1 layer, key and value (B, H*E, *grid_j)
        b, grid, nh, e = h.shape[0], h.shape[2:], self.heads, self.key_dim
        q = self.query(h).reshape(b, nh, e, -1)  # (B, H, E, P)
        keys = torch.stack([resize(k, grid).reshape(b, nh, e, -1) for k, _ in memory], -1)  # (B,H,E,P,S)
        values = torch.stack([resize(v, grid).reshape(b, nh, e, -1) for _, v in memory], -1)
        scores = torch.einsum("bhep,bheps->bhps", q, keys) / math.sqrt(e)  # (B, H, P, S)
        null = torch.zeros_like(scores[..., :1])  # the null slot: key 0 (score 0), value 0
        w = top_k_attention(torch.softmax(torch.cat([scores, null], -1), -1), self.top_k)
        read = torch.einsum("bhps,bheps->bhep", w[..., :-1], values)  # the null's value adds nothing
        f: Tensor = self.out(read.reshape(b, nh * e, *grid))
        return h + self.gamma * f


class Head(nn.Module):
    """Flatten the last state (position matters: MNIST-1D digits are templates at offsets) -> logits."""

    def __init__(self, cfg: NFMConfig, width: int, positions: int) -> None:
        super().__init__()
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(width * positions, cfg.num_classes)

    def forward(self, h: Tensor) -> Tensor:  # (B, C, *grid) -> (B, classes)
        logits: Tensor = self.fc(self.drop(h.flatten(1)))
        return logits


# ---------------------------------------------------------------------------------------------
# the network


class NFM(nn.Module):
    def __init__(self, cfg: NFMConfig) -> None:
        super().__init__()
        if cfg.kind == "features":  # one position: every layer is an MLP block, no stride
            cfg = replace(cfg, kernel=1, strides=tuple(1 for _ in cfg.strides))
        self.cfg = cfg
        cin, grid = self._input_grid(cfg)
        grids = []  # each layer's output resolution
        for s in cfg.strides:
            grid = tuple((g - 1) // s + 1 for g in grid)  # padding k // 2: ceil(g / s)
            grids.append(grid)
        self.grids = grids
        positions = math.prod(grids[-1])

        def stack(width: int) -> nn.ModuleList:
            return nn.ModuleList(
                Layer(cfg, cin if i == 0 else width, width, s) for i, s in enumerate(cfg.strides)
            )

        self.pass1 = stack(cfg.width1)
        self.head1 = Head(cfg, cfg.width1, positions)
        self.reads = nn.ModuleDict()  # key: the pass-2 layer index that reads
        if cfg.passes == 2:
            kv = cfg.heads * cfg.key_dim
            # writes: a key and a value of every pass-1 state (1x1: they commute with resizing)
            self.keys = nn.ModuleList(_conv(cfg, cfg.width1, kv, 1) for _ in cfg.strides)
            self.values = nn.ModuleList(_conv(cfg, cfg.width1, kv, 1) for _ in cfg.strides)
            self.pass2 = stack(cfg.width2)
            self.head2 = Head(cfg, cfg.width2, positions)
            for i in cfg.read_layers:
                self.reads[str(i)] = Read(cfg)
        # the units in importance order (unit 0, pass 1, first); measured after training (rank_reads)
        self.order: Tensor
        self.register_buffer("order", torch.arange(1 + len(cfg.read_layers)))

    @staticmethod
    def _input_grid(cfg: NFMConfig) -> tuple[int, tuple[int, ...]]:
        """Input channels and resolution as the first layer sees them."""
        shape = cfg.input_shape
        if cfg.kind == "image":
            return (1, shape) if len(shape) == 2 else (shape[0], shape[1:])
        if cfg.kind == "signal":
            return 1, (math.prod(shape),)
        return math.prod(shape), (1,)

    def _as_grid(self, x: Tensor) -> Tensor:  # (B, *input_shape) -> (B, C, *grid)
        cin, grid = self._input_grid(self.cfg)
        return x.reshape(x.shape[0], cin, *grid)

    def units(self) -> int:
        return 1 + len(self.cfg.read_layers)

    def kept_reads(self, keep: Tensor | None) -> list[int]:
        """The pass-2 layers whose reads a unit set keeps (unit r >= 1 is the r-th reading layer)."""
        layers = self.cfg.read_layers
        if keep is None:
            return list(layers)
        return sorted(layers[u - 1] for u in keep.tolist() if u >= 1)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # -> logits (B, classes)
        x = self._as_grid(x)
        reads = self.kept_reads(keep)
        if self.training and self.cfg.read_drop > 0:  # LayerDrop: every level sees reads missing
            reads = [i for i in reads if float(torch.rand(())) >= self.cfg.read_drop]
        states, h = [], x
        for layer in self.pass1:  # pass 1, bottom-up
            h = layer(h)
            states.append(h)
        if not reads:  # the pass-1-only level: pass 2 never runs
            answer1: Tensor = self.head1(h)
            return answer1
        memory = [(k(s), v(s)) for k, v, s in zip(self.keys, self.values, states, strict=True)]
        h = x
        for i, layer in enumerate(self.pass2):  # pass 2, reading pass 1's memory
            h = layer(h)
            if i in reads:
                h = self.reads[str(i)](h, memory)
        answer2: Tensor = self.head2(h)
        return answer2

    # --- levels -----------------------------------------------------------------------------

    def ranking(self) -> Tensor:
        return self.order.clone()

    def prune(self, keep: Tensor) -> NFM:
        """A new, smaller NFM: pass 2 with only the kept reads, or pass 1 alone if none is kept."""
        reads = tuple(self.kept_reads(keep))
        small = NFM(replace(self.cfg, passes=2 if reads else 1, reads=reads or None))
        state = {k: v for k, v in self.state_dict().items() if k != "order"}
        wanted = small.state_dict()
        small.load_state_dict({k: state[k] for k in wanted if k != "order"} | {"order": wanted["order"]})
        return small.train(self.training)


@torch.no_grad()
def rank_reads(model: NFM, x: Tensor, y: Tensor) -> Tensor:
    """Order the units by measured effect: each read's rise in validation loss when it alone is
    skipped from the full model, largest first; pass 1 (unit 0) always first. Stored in the model
    (`order`, saved with its weights), so `ranking()` answers it. x normalised (B, *input_shape)."""
    was_training = model.training
    model.eval()

    def loss(keep: Tensor | None) -> float:
        logits = torch.cat([model(x[i : i + 512], keep) for i in range(0, len(x), 512)])
        return float(F.cross_entropy(logits, y))

    units = torch.arange(model.units())
    rise = torch.tensor([loss(units[units != u]) for u in units[1:].tolist()])
    order = torch.cat([units[:1], 1 + torch.argsort(rise, descending=True, stable=True)])
    model.order.copy_(order)
    model.train(was_training)
    return order


def flops_per_example(model: NFM) -> int:
    """Multiply-adds x2 of one example through the network at its level."""
    cfg = model.cfg
    cin, _ = model._input_grid(cfg)
    k = cfg.kernel ** (2 if cfg.kind == "image" else 1)
    kv, s = cfg.heads * cfg.key_dim, len(cfg.strides)

    def stack(width: int) -> int:
        return sum(math.prod(g) * k * (cin if i == 0 else width) * width for i, g in enumerate(model.grids))

    positions = math.prod(model.grids[-1])
    macs = stack(cfg.width1)
    if cfg.passes == 1:
        return 2 * (macs + positions * cfg.width1 * cfg.num_classes)
    macs += sum(math.prod(g) * cfg.width1 * 2 * kv for g in model.grids)  # writes
    macs += stack(cfg.width2) + positions * cfg.width2 * cfg.num_classes
    for i in cfg.read_layers:  # query, scores and weighted values over S + 1 slots, f
        p = math.prod(model.grids[i])
        macs += p * (cfg.width2 * kv + 2 * kv * (s + 1) + k * kv * cfg.width2)
    return 2 * macs


class Exported(nn.Module):
    """One level ready for export: normalisation in front, logits / T and probabilities out."""

    def __init__(self, model: NFM, mean: Tensor, std: Tensor, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model.eval()
        self.temperature = float(temperature)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean.reshape(1, *model.cfg.input_shape))
        self.register_buffer("std", std.reshape(1, *model.cfg.input_shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # raw (B, *input_shape)
        logits: Tensor = self.model((x - self.mean) / self.std)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# the family interface (model.families.Family): what training and export call


class NFMFamily:
    """Neural Function Modules as a prunable family: units are pass 1 (unit 0) and pass 2's reads,
    ranked by each read's measured effect on validation loss (`rank_on`, run by model.train)."""

    name = "nfm"
    unit = "stages"
    leading_units = 1  # pass 1: unit 0, always first (pass 2 reads its memory)
    presets = PRESETS

    def build(
        self, input_shape: tuple[int, ...], num_classes: int, preset: str, overrides: Mapping[str, Any]
    ) -> nn.Module:
        fields = dict(PRESETS[preset]) | dict(overrides)
        return NFM(NFMConfig.from_dict({"input_shape": input_shape, "num_classes": num_classes} | fields))

    def config(self, model: nn.Module) -> dict[str, Any]:
        return _nfm(model).cfg.to_dict()

    def from_config(self, config: Mapping[str, Any]) -> nn.Module:
        return NFM(NFMConfig.from_dict(config))

    def input_shape(self, model: nn.Module) -> tuple[int, ...]:
        return _nfm(model).cfg.input_shape

    def units(self, model: nn.Module) -> int:
        return _nfm(model).units()

    def ranking(self, model: nn.Module, x: Tensor | None = None) -> Tensor:
        return _nfm(model).ranking()  # the order rank_on stored (measured on data once, after training)

    def settings(self, model: nn.Module, fraction: Fraction) -> tuple[int, dict[str, int]]:
        return levels.units_kept(self.units(model), fraction), {}  # passes follow from the reads kept

    def rank_on(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return rank_reads(_nfm(model), x, y)

    def forward(self, model: nn.Module, x: Tensor, keep: Tensor | None) -> Tensor:
        logits: Tensor = _nfm(model)(x, keep)
        return logits

    def level(self, model: nn.Module, keep: Tensor, knobs: Mapping[str, int] | None = None) -> nn.Module:
        if knobs:
            raise ValueError(f"an NFM level is the stages it keeps, with no other knobs, got {dict(knobs)}")
        return _nfm(model).prune(keep)

    def knobs(self, model: nn.Module) -> dict[str, int]:
        cfg = _nfm(model).cfg
        return {"passes": cfg.passes, "reads": len(cfg.read_layers)}

    def flops(self, model: nn.Module) -> int:
        return flops_per_example(_nfm(model))

    def export_module(self, model: nn.Module, mean: Tensor, std: Tensor, temperature: float) -> nn.Module:
        return Exported(_nfm(model), mean, std, temperature)


def _nfm(model: nn.Module) -> NFM:
    if not isinstance(model, NFM):
        raise TypeError(f"the nfm family got a {type(model).__name__}, not an NFM")
    return model


NFM_FAMILY = NFMFamily()
