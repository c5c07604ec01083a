"""Embedded datasets (no downloads): scikit-learn's digits, MNIST-1D generated offline, user .npz."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is the train extra's; only augmentation needs it
    import torch


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message says what is missing or malformed."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, *input_shape) float32, raw (not normalised)
    y: np.ndarray  # (n,) int64


@dataclass(frozen=True)
class Dataset:
    name: str
    preset: str  # the model preset that suits it (model.nac.PRESETS)
    train: Split
    val: Split
    test: Split
    labels: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the training split, one per input element. Feature vectors get their own
        per feature; images and signals share one over all elements, since a per-pixel std near zero
        (a border pixel) would blow up a digit that a shift moves onto it."""
        x = self.train.x
        if self.preset == "features":
            mean, std = x.mean(axis=0), x.std(axis=0)
        else:
            mean, std = np.full(x.shape[1:], x.mean()), np.full(x.shape[1:], x.std())
        return mean.astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32)


def shift_images(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Training augmentation for small images: each image moves by up to `max_shift` pixels in each
    direction, zero fill (no flips: a mirrored 2 is not a 2). (B, [C,] H, W) -> same shape."""
    import torch
    import torch.nn.functional as F

    s, (h, w) = max_shift, x.shape[-2:]
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (x.shape[0],), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    b = torch.arange(x.shape[0])[:, None, None]
    if x.dim() == 4:  # channels: move them last for the gather, then back
        return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)
    return padded[b, rows, cols]


def shift_signals(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Training augmentation for 1-D signals: each one moves by up to `max_shift` samples either way,
    zero fill. (B, L) -> (B, L)."""
    import torch
    import torch.nn.functional as F

    s, n = max_shift, x.shape[-1]
    padded = F.pad(x, (s, s))
    start = torch.randint(0, 2 * s + 1, (x.shape[0],), generator=gen)
    cols = start[:, None] + torch.arange(n)  # (B, L)
    return padded.gather(1, cols)


def warp_images(
    x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0, scale: float = 0.1, shift: float = 0.5
) -> torch.Tensor:
    """Training augmentation for small images: a random affine warp per image, bilinear and zero
    filled: rotation up to `degrees`, zoom within 1 +- `scale`, shift up to `shift` pixels each way.
    Sub-pixel moves suit 8x8 digits, where one whole pixel is an eighth of the glyph. No flips.
    (B, [C,] H, W) -> same shape."""
    import math

    import torch
    import torch.nn.functional as F

    b, (h, w) = x.shape[0], x.shape[-2:]

    def u() -> torch.Tensor:  # (B,) uniform in [-1, 1]
        return torch.rand(b, generator=gen) * 2 - 1

    angle, zoom = u() * math.radians(degrees), 1 + u() * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    tx, ty = u() * shift * 2 / w, u() * shift * 2 / h  # pixels -> grid units ([-1, 1] spans the image)
    theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)  # (B, 2, 3)
    img = x.reshape(b, -1, h, w)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    warped = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.reshape(x.shape)


def _split(x: np.ndarray, y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[Split]:
    """Seeded, stratified split: each class is shuffled and cut in the given fractions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        bounds = np.round(np.cumsum((0, *fractions)) * len(idx)).astype(int)
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i] : bounds[i + 1]])
    out = []
    for p in parts:
        idx = rng.permutation(np.concatenate(p))
        out.append(Split(x[idx].astype(np.float32), y[idx].astype(np.int64)))
    return out


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    train, val, test = _split(d.images, d.target, (0.7, 0.1, 0.2), seed)
    return Dataset("digits", "digits", train, val, test, [str(i) for i in range(10)])


def _mnist1d(seed: int) -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset

    # generated offline from the published arguments: 4000 train / 1000 test, as published
    d = make_dataset(get_dataset_args())
    x, y = np.asarray(d["x"], np.float32), np.asarray(d["y"])
    train, val = _split(x, y, (0.9, 0.1), seed)
    test = Split(np.asarray(d["x_test"], np.float32), np.asarray(d["y_test"], np.int64))
    return Dataset("mnist1d", "mnist1d", train, val, test, [str(i) for i in range(10)])


def _npz(path: Path, seed: int) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile/format errors come in many types
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing array(s) {missing}; expected x (n, ...) and y (n,)")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise DatasetError(f"{path}: x must be numeric with shape (n, ...), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: y must be integer with shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if not np.isfinite(x).all():
        raise DatasetError(f"{path}: x contains NaN or Inf")
    classes = int(y.max()) + 1 if len(y) else 0
    if y.min(initial=0) < 0 or classes < 2:
        raise DatasetError(f"{path}: y must hold class indices 0..C-1 with at least 2 classes")
    labels = [str(i) for i in range(classes)]
    if "label_names" in arrays:
        labels = [str(s) for s in arrays["label_names"].tolist()]
        if len(labels) != classes:
            raise DatasetError(f"{path}: label_names has {len(labels)} names, y has {classes} classes")
    if np.bincount(y, minlength=classes).min() < 5:
        raise DatasetError(f"{path}: every class needs at least 5 examples to split")
    train, val, test = _split(x.astype(np.float32), y, (0.7, 0.1, 0.2), seed)
    preset = "digits" if x.ndim == 3 else "features"
    return Dataset(path.stem, preset, train, val, test, labels)


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """`digits`, `mnist1d`, or a path to an .npz file with arrays x, y and optional label_names."""
    if spec == "digits":
        return _digits(seed)
    if spec == "mnist1d":
        return _mnist1d(seed)
    if spec.endswith(".npz"):
        return _npz(Path(spec), seed)
    raise DatasetError(f"unknown dataset {spec!r}: use digits, mnist1d or a path to an .npz file")
