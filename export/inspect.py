"""Human-readable view of a bundle's manifest (`circuitserve inspect`)."""

from __future__ import annotations

from export.manifest import Level, Manifest


def _interval(lv: Level) -> str:
    """'[0.9512, 0.9821] n=359', or '-' for a schema-1 bundle that did not record it."""
    iv = lv.accuracy_interval
    return f"[{iv.low:.4f}, {iv.high:.4f}] n={lv.test_size}" if iv is not None else "-"


def _calibration(lv: Level) -> str:
    cal = lv.calibration
    return f"{cal.ece_uncalibrated:.4f}->{cal.ece:.4f} T={cal.temperature:.2f}" if cal is not None else "-"


def format_levels(manifest: Manifest) -> str:
    provider = manifest.profile.provider  # the export's table; a level lacking it shows "-"
    batches = sorted({s.batch_size for lv in manifest.levels for s in lv.latency_on(provider)})
    unit = manifest.unit[:8]
    head = f"{'level':>10} {'keep':>6} {unit:>8} {'accuracy':>8} {'95% interval (Wilson)':>26} "
    head += f"{'ECE (before->after, T)':>24} {'params':>8} {'MFLOPs':>7}"
    head += "".join(f" {'b' + str(b) + ' ms':>9}" for b in batches)
    rows = [
        f"model {manifest.name} v{manifest.version} ({manifest.family}): input {manifest.input.name} "
        f"{manifest.input.shape} {manifest.input.datatype}, {len(manifest.labels)} classes, "
        f"dataset {manifest.provenance.dataset}",
        f"latency: onnxruntime median, {manifest.profile.provider}, "
        f"{manifest.profile.intra_op_threads} threads, {manifest.profile.machine}",
        head,
    ]
    for lv in manifest.sorted_levels():
        row = f"{lv.name:>10} {lv.keep_fraction:6.3f} {lv.units:8d} {lv.accuracy:8.4f} {_interval(lv):>26} "
        row += f"{_calibration(lv):>24} {lv.params:8d} {lv.flops / 1e6:7.2f}"
        table = {s.batch_size: s.median_ms for s in lv.latency_on(provider)}
        row += "".join(f" {table[b]:9.3f}" if b in table else f" {'-':>9}" for b in batches)
        others = sorted(set(lv.latency) - {provider})
        rows.append(row + (f"  (also measured on {', '.join(others)})" if others else ""))
    return "\n".join(rows)
