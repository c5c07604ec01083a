"""Sparsity-aware training: every batch runs on a randomly drawn pruning level, so every level is
trained, not just the full model. Writes a checkpoint directory:
  model.pt         state_dict (tensors only: loads with torch.load(weights_only=True))
  checkpoint.json  family, config, labels, normalisation, unit ranking, training settings, test accuracy
Only the family protocol (model.families) is used, so any registered family trains here.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import families, levels
from model.data import Dataset, Split, load_dataset
from model.families import Family

WEIGHTS, META = "model.pt", "checkpoint.json"


@dataclass
class TrainConfig:
    dataset: str = "digits"
    family: str = families.DEFAULT_FAMILY
    seed: int = 0
    epochs: int | None = None  # None: the preset's
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    sparsity_aware: bool = True  # draw a level per batch; False: train the full model only
    levels: list[float] = field(default_factory=lambda: [float(f) for f in levels.DEFAULT])
    ema: float = 0.995  # evaluate and save an exponential moving average of the weights (0: off)
    augment: bool = False  # random 1-pixel shifts, images only (slows convergence on 8x8 digits)
    preset: str | None = None  # None: the dataset's
    overrides: dict[str, Any] = field(default_factory=dict)  # the family's config fields


EPOCHS = {"digits": 100, "mnist1d": 40, "features": 60, "large": 40, "tiny": 3}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shift_images(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random shift of each image by up to one pixel, zero fill. (B, [C,] H, W)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 3, (x.shape[0],), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    b = torch.arange(x.shape[0])[:, None, None]
    if x.dim() == 4:  # channels: move them last for the gather, then back
        return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)
    return padded[b, rows, cols]


@torch.no_grad()
def evaluate(
    family: Family, model: nn.Module, split: Split, mean: Tensor, std: Tensor, keep: Tensor | None = None
) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split.y), 512):
        x = (torch.from_numpy(split.x[i : i + 512]) - mean) / std
        pred = family.forward(model, x, keep).argmax(-1)
        correct += int((pred == torch.from_numpy(split.y[i : i + 512])).sum())
    return correct / max(1, len(split.y))


def level_accuracies(
    family: Family,
    model: nn.Module,
    split: Split,
    mean: Tensor,
    std: Tensor,
    order: Tensor,
    fractions: list[float],
) -> dict[str, float]:
    """Accuracy per level, keyed by level name ("full", "1/2")."""
    total = family.units(model)
    return {
        levels.canonical(f): evaluate(family, model, split, mean, std, order[: levels.units_kept(total, f)])
        for f in fractions
    }


def build_model(cfg: TrainConfig, data: Dataset) -> nn.Module:
    family = families.get(cfg.family)
    return family.build(data.input_shape, len(data.labels), cfg.preset or data.preset, cfg.overrides)


def _progress(epoch: int, epochs: int, loss: float, acc: float, val: float, start: float) -> None:
    elapsed = time.monotonic() - start
    left = elapsed / (epoch + 1) * (epochs - epoch - 1)
    print(
        f"epoch {epoch + 1:3d}/{epochs}  loss {loss:.3f}  train acc {acc:.3f}  val acc {val:.3f}  "
        f"{elapsed:5.0f}s elapsed, ~{left:.0f}s left",
        flush=True,
        file=sys.stderr,
    )


def train(cfg: TrainConfig, out: Path | None = None, log_every: int = 1) -> tuple[nn.Module, dict[str, Any]]:
    """Train, evaluate every level in ranked and random order, write the checkpoint to `out`."""
    set_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.seed)
    family = families.get(cfg.family)
    model = build_model(cfg, data)
    units = family.units(model)
    epochs = cfg.epochs or EPOCHS[cfg.preset or data.preset]
    mean_np, std_np = data.normalization()
    mean, std = torch.from_numpy(mean_np), torch.from_numpy(std_np)
    x_all, y_all = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = epochs * math.ceil(len(y_all) / cfg.batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    augment = cfg.augment and len(data.input_shape) >= 2 and data.preset != "features"  # images only
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema)
    )
    start = time.monotonic()
    losses: list[float] = []  # mean training loss per epoch
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if augment:
                x = shift_images(x, gen)
            keep = None
            if cfg.sparsity_aware:  # a level per batch, on the current out-degree order
                f = cfg.levels[int(torch.randint(len(cfg.levels), (1,), generator=gen))]
                keep = family.ranking(model)[: levels.units_kept(units, f)]
            logits = family.forward(model, (x - mean) / std, keep)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update_parameters(model)
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
        losses.append(round(total_loss / len(perm), 4))
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            val = evaluate(family, ema.module if cfg.ema else model, data.val, mean, std)
            _progress(epoch, epochs, total_loss / len(perm), correct / len(perm), val, start)

    if cfg.ema:  # the average generalises better than the last step's weights
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    outdegree = family.ranking(model)
    random_order = torch.randperm(units, generator=torch.Generator().manual_seed(cfg.seed + 1))
    results = {
        "outdegree": level_accuracies(family, model, data.test, mean, std, outdegree, cfg.levels),
        "random": level_accuracies(family, model, data.test, mean, std, random_order, cfg.levels),
    }
    meta: dict[str, Any] = {
        "format": 1,
        "family": family.name,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "config": family.config(model),
        "train_config": asdict(cfg) | {"epochs": epochs},
        "labels": data.labels,
        "normalization": {"mean": mean_np.ravel().tolist(), "std": std_np.ravel().tolist()},
        "ranking": {"outdegree": outdegree.tolist(), "random": random_order.tolist()},
        "test_accuracy": results,
        "train_seconds": round(time.monotonic() - start, 1),
        "train_loss": losses,
        "torch": torch.__version__,
    }
    if out is not None:
        save_checkpoint(model, meta, out)
    return model, meta


def save_checkpoint(model: nn.Module, meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS)
    (out / META).write_text(json.dumps(meta, indent=2))


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint directory; only tensors and JSON are read (nothing is unpickled). A checkpoint
    without a `family` predates families and holds a NAC."""
    path = Path(path)
    for name in (WEIGHTS, META):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path}: not a checkpoint (no {name}); write one with `circuitserve train`"
            )
    meta = json.loads((path / META).read_text())
    meta.setdefault("family", "nac")
    model = families.get(meta["family"]).from_config(meta["config"])
    model.load_state_dict(torch.load(path / WEIGHTS, weights_only=True, map_location="cpu"))
    return model.eval(), meta


def format_results(results: dict[str, dict[str, float]]) -> str:
    lines = ["level    out-degree   random"]
    for level, acc in results["outdegree"].items():
        lines.append(f"{level:>6}   {acc:10.4f}   {results['random'][level]:6.4f}")
    return "\n".join(lines)
