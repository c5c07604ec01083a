"""The accuracy/latency trade-off of a bundle as a PNG; accuracies carry their 95% intervals, so
a difference between levels smaller than the bars reads as what it is: noise."""

from __future__ import annotations

from pathlib import Path

from export.manifest import Level, Manifest


def error_bars(levels: list[Level]) -> tuple[list[float], list[float]]:
    """(below, above) in accuracy points: each level's 95% Wilson interval as asymmetric error bars.
    A schema-1 bundle recorded none: zero-length bars."""
    below, above = [], []
    for lv in levels:
        iv = lv.accuracy_interval
        below.append(100 * (lv.accuracy - iv.low) if iv else 0.0)
        above.append(100 * (iv.high - lv.accuracy) if iv else 0.0)
    return below, above


def plot_tradeoff(manifest: Manifest, path: Path, batch_size: int = 128) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = manifest.sorted_levels(("fp32",))  # FP16 twins are listed by `circuitserve inspect`
    provider = manifest.profile.provider
    lat = [next(s.median_ms for s in lv.latency_on(provider) if s.batch_size == batch_size) for lv in levels]
    full = lat[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    acc = [100 * lv.accuracy for lv in levels]
    ax1.errorbar(lat, acc, yerr=error_bars(levels), fmt="o-", capsize=4, label="accuracy, 95% interval")
    for lv, x in zip(levels, lat, strict=True):
        ax1.annotate(
            f"{lv.name} ({lv.units})", (x, 100 * lv.accuracy), textcoords="offset points", xytext=(4, 4)
        )
    ax1.set_xscale("log")
    ax1.set_xlabel(f"onnxruntime CPU latency, batch {batch_size}, median (ms)")
    n = levels[0].test_size
    ax1.set_ylabel(f"test accuracy (%), bars: 95% Wilson interval{f', n={n}' if n else ''}")
    ax1.set_title(f"{manifest.name}: accuracy against latency")
    fractions = [lv.keep_fraction for lv in levels]
    ax2.plot(fractions, [full / x for x in lat], "o-", label="measured")
    ax2.plot(fractions, [1 / f for f in fractions], "--", color="grey", label="ideal 1/f")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("keep fraction")
    ax2.set_ylabel("speedup over full")
    ax2.set_title(f"speedup at batch {batch_size} ({manifest.profile.intra_op_threads} threads)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
