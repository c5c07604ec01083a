"""Human-readable view of a bundle's manifest (`circuitserve inspect`)."""

from __future__ import annotations

from export.manifest import Manifest


def format_levels(manifest: Manifest) -> str:
    batches = [s.batch_size for s in manifest.levels[0].latency]
    head = f"{'level':>6} {'keep':>6} {'modules':>7} {'accuracy':>8} {'params':>8} {'MFLOPs':>7}"
    head += "".join(f" {'b' + str(b) + ' ms':>9}" for b in batches)
    rows = [
        f"model {manifest.name} v{manifest.version}: input {manifest.input.name} {manifest.input.shape} "
        f"{manifest.input.datatype}, {len(manifest.labels)} classes, dataset {manifest.provenance.dataset}",
        f"latency: onnxruntime median, {manifest.profile.provider}, "
        f"{manifest.profile.intra_op_threads} threads, {manifest.profile.machine}",
        head,
    ]
    for lv in manifest.sorted_levels():
        row = f"{lv.name:>6} {lv.keep_fraction:6.3f} {lv.modules:7d} {lv.accuracy:8.4f} {lv.params:8d} "
        row += f"{lv.flops / 1e6:7.2f}" + "".join(f" {s.median_ms:9.3f}" for s in lv.latency)
        rows.append(row)
    return "\n".join(rows)
