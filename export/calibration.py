"""How sure each accuracy is, and whether the probabilities mean what they say. Pure numpy.

- Wilson score interval of an accuracy k/n at confidence z (95%: z = 1.96):
      centre = (p + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
  It stays inside [0, 1] and is honest near 100%, where the normal approximation is not.
- Expected calibration error over M equal-width confidence bins B_m (confidence = max probability):
      ECE = Σ_m |B_m|/n * |accuracy(B_m) - mean confidence(B_m)|
- Temperature scaling: probabilities softmax(z / T) with one T > 0 per level, fitted by minimising
  the validation negative log-likelihood. NLL is convex in β = 1/T, so a golden-section search on
  β finds the minimum. The argmax, hence the accuracy, does not change. A validation split that the
  level classifies entirely right (a small model on digits often does) has no minimum: the NLL
  keeps falling as T -> 0, and the search ends at its bound. Such a T says "always certain", which
  the test errors then contradict, so it is not used (T = 1).
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
ECE_BINS = 15
BETA_RANGE = (1e-2, 1e2)  # 1/T searched in here: T from 0.01 to 100


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `correct` successes out of `n` trials."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got {correct}/{n}")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:  # (n, C) -> (n, C)
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of probabilities (n, C) against labels (n,), confidence bins (i/M, (i+1)/M]."""
    conf = probs.max(axis=-1)
    hit = probs.argmax(axis=-1) == labels
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # (n,) bin index
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(float(hit[inside].mean()) - float(conf[inside].mean()))
    return total


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    z = logits.astype(np.float64) / temperature
    m = z.max(axis=-1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T minimising nll(logits, labels, T): golden-section search on β = 1/T in BETA_RANGE."""
    lo, hi = BETA_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, 1 / a), nll(logits, labels, 1 / b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, 1 / b)
    return 2 / (lo + hi)


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> tuple[float, float, float]:
    """(T, validation ECE at T = 1, validation ECE at T): the temperature to fold into a level's
    graph is the fitted one if it lowers the validation ECE, otherwise 1 (no change), as it is when
    the fit runs to the search's bound (a validation split classified entirely right)."""
    t = fit_temperature(val_logits, val_labels)
    if t <= 1.01 / BETA_RANGE[1]:  # the search ran to its bound: T is not identified (module docstring)
        t = 1.0
    before = expected_calibration_error(softmax(val_logits), val_labels)
    after = expected_calibration_error(softmax(val_logits, t), val_labels)
    return (t, before, after) if after < before else (1.0, before, before)
