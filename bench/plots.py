"""The report's plots: small PNGs written next to REPORT.md, drawn from report.json's figures only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

DPI = 80


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def _concurrency_rows(section: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return [(int(k[1:]), v) for k, v in section.items() if k.startswith("c") and k[1:].isdigit()]


def levels(r: dict[str, Any], out: Path) -> str:
    tables = r["levels"]
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.2), squeeze=False)
    for ax, (ds, table) in zip(axes[0], tables.items(), strict=True):
        speed = [lv["speedup_b128"] for lv in table.values()]
        for key, label, style in (
            ("accuracy", "out-degree order", "o-"),
            ("accuracy_random_order", "random order", "s--"),
            ("accuracy_plain_training", "plain training", "^:"),
        ):
            acc = [lv[key] for lv in table.values()]
            if all(a is not None for a in acc):
                ax.plot(speed, acc, style, label=label)
        for name, lv in table.items():
            ax.annotate(
                name,
                (lv["speedup_b128"], lv["accuracy"]),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
            )
        ax.set_title(ds)
        ax.set_xlabel("speedup over full (batch 128)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out, "levels.png")


def overhead(r: dict[str, Any], out: Path) -> str:
    sections = r["overhead"]
    fig, axes = plt.subplots(1, len(sections), figsize=(4.2 * len(sections), 3.2), squeeze=False)
    for ax, (name, o) in zip(axes[0], sections.items(), strict=True):
        rows = _concurrency_rows(o)
        xs = range(len(rows))
        ax.bar(
            [x - 0.2 for x in xs], [c["server"]["throughput_rps"] for _, c in rows], 0.4, label="circuitserve"
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [c["raw_onnxruntime"]["throughput_rps"] for _, c in rows],
            0.4,
            label="raw onnxruntime",
        )
        ax.set_xticks(list(xs), [f"c{c}" for c, _ in rows])
        ax.set_yscale("log")
        ax.set_ylabel("samples/s")
        ax.set_title(f"{name}: {o['model']}")
        ax.legend(fontsize=7)
    return _save(fig, out, "overhead.png")


def peers(r: dict[str, Any], out: Path) -> str | None:
    p = r["peers"]
    ok = {k: v for k, v in p.items() if isinstance(v, dict) and v.get("status") == "ok"}
    if not ok:
        return None
    first = next(iter(ok.values()))
    conc = [c for c, _ in _concurrency_rows(first)]
    series = {"circuitserve": [first[f"c{c}"]["circuitserve_throughput_rps"] for c in conc]}
    p99 = {"circuitserve": [first[f"c{c}"]["circuitserve_p99_ms"] for c in conc]}
    for name, entry in ok.items():
        series[name] = [entry[f"c{c}"]["throughput_rps"] for c in conc]
        p99[name] = [entry[f"c{c}"]["p99_ms"] for c in conc]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(conc))]
        ax1.bar(xs, series[name], width, label=name)
        ax2.bar(xs, p99[name], width, label=name)
    for ax, label in ((ax1, "requests/s"), (ax2, "p99 latency, ms")):
        ax.set_xticks(range(len(conc)), [f"c{c}" for c in conc])
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    ax2.set_yscale("log")
    return _save(fig, out, "peers.png")


def overload(r: dict[str, Any], out: Path) -> str:
    o = r["overload"]
    phases = [(k, v) for k, v in o.items() if k.startswith("x") and isinstance(v, dict)]
    labels = [k for k, _ in phases]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for mode, style in (("adaptive", "o-"), ("full_only", "s--")):
        ax1.plot(labels, [v[mode]["within_budget"] for _, v in phases], style, label=mode)
        ax2.plot(labels, [v[mode]["effective_accuracy"] for _, v in phases], style, label=mode)
    ax1.set_ylabel(f"answered within {o['budget_ms']:.0f} ms")
    ax2.set_ylabel("effective accuracy")
    for ax in (ax1, ax2):
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("offered load / full-level capacity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out, "overload.png")


def draw(r: dict[str, Any], out: Path) -> dict[str, str]:
    """Every plot; {section: file name relative to `out`}."""
    images = {"levels": levels(r, out), "overhead": overhead(r, out), "overload": overload(r, out)}
    peer_plot = peers(r, out)
    if peer_plot:
        images["peers"] = peer_plot
    return images
