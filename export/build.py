"""Checkpoint -> bundle: one ONNX graph per pruning level, checked, parity-tested against torch,
calibrated, profiled, described by manifest.json. Built in a temporary directory, then renamed
into place. Any registered model family exports here: only the family protocol is called.

Per level: the family builds the level's smaller model; a temperature is fitted on the validation
split and kept if it lowers the validation ECE; the family wraps the model for export (input
normalisation, logits / T, softmax in the graph); export.onnx writes and checks it; the test split
gives accuracy, its Wilson interval and the ECE before and after the temperature.

With `fp16`, each level is also exported in FP16 as a level of its own ("1/2@fp16"): its FP32 graph
converted by export.fp16 (FP16 weights and arithmetic, cast from and to FP32 at the graph's edges:
input and outputs stay FP32, so clients and the manifest's tensors do not change), checked against
the FP32 module within FP16_ATOL. Its accuracy is measured on the test
split from its own graph (onnxruntime CPU, which runs FP16 nodes through inserted casts where it
lacks FP16 kernels), and it is kept only if it loses at most FP16_MAX_LOSS against its FP32 twin.
"""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.calibration import ECE_BINS, calibrate, expected_calibration_error, softmax, wilson_interval
from export.fp16 import Fp16Error, to_fp16
from export.manifest import (
    CPU_PROVIDER,
    FP16_SUFFIX,
    MANIFEST_FILE,
    Calibration,
    InputSpec,
    Interval,
    Level,
    Manifest,
    Normalization,
    Profile,
    Provenance,
    TensorSpec,
    sha256_file,
)
from export.onnx import FP16_ATOL, PARITY_ATOL, ExportError, check_parity, onnx_export
from export.plot import plot_tradeoff
from export.profile import code_version, cpu_session, machine_description, profile_threads, time_batches
from model import levels
from model.data import Split, load_dataset
from model.families import Family, get
from model.train import load_checkpoint

__all__ = ["PARITY_ATOL", "ExportError", "export_bundle"]
INPUT_NAME, OUTPUT_NAMES = "input", ("logits", "probabilities")
FP16_MAX_LOSS = 0.002  # an FP16 level is kept if its test accuracy is at most 0.2 points below FP32's


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def _logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of an export module (raw input in) on every row: (n, *input_shape) -> (n, C)."""
    module.eval()
    return np.concatenate(
        [module(torch.from_numpy(x[i : i + 512]))[0].numpy() for i in range(0, len(x), 512)]
    )


def export_level(
    family: Family,
    model: nn.Module,
    fraction: Fraction,
    order: torch.Tensor,
    norm: tuple[torch.Tensor, torch.Tensor],
    val: Split,
    test: Split,
    directory: Path,
    fp16: bool = False,
) -> list[Level]:
    """One level: prune, calibrate, export, check, measure; with `fp16`, its FP16 twin too if kept."""
    total = family.units(model)
    kept, knobs = family.settings(model, fraction)
    small = family.level(model, order[:kept], knobs)
    name, path = levels.name(fraction), directory / levels.file_name(fraction)
    extra = "".join(f", {k} {v}" for k, v in knobs.items())
    _log(f"level {name}: {kept} of {total} {family.unit}{extra}: exporting...")
    temperature, val_before, val_after = calibrate(
        _logits(family.export_module(small, *norm, 1.0), val.x), val.y
    )
    module = family.export_module(small, *norm, temperature)
    # parity within PARITY_ATOL on the logits before the temperature: dividing by a T < 1 (down to
    # 0.01 for a near-perfect model trained with label smoothing) scales float32 rounding by 1/T
    logits, probs = onnx_export(
        module,
        path,
        family.input_shape(small),
        INPUT_NAME,
        OUTPUT_NAMES,
        test.x,
        PARITY_ATOL / min(1.0, temperature),
    )
    level = _measured(
        name, fraction, kept, family, small, path, logits, probs, temperature, val_before, val_after, test
    )
    levels_out = [level]
    if fp16:
        half = export_fp16(family, small, module, fraction, kept, path, level, temperature, test)
        if half is not None:
            levels_out.append(half)
    return levels_out


def export_fp16(
    family: Family,
    small: nn.Module,
    module: nn.Module,
    fraction: Fraction,
    kept: int,
    fp32_path: Path,
    fp32: Level,
    temperature: float,
    test: Split,
) -> Level | None:
    """The FP16 twin of an exported level, or None (and why, logged) if it loses too much accuracy
    or its graph fails its checks (outputs not finite, or farther than FP16_ATOL from FP32).
    Parity is checked against the FP32 module within FP16_ATOL; a row whose class flips there is
    counted by the accuracy, which is what decides. The temperature and the validation ECE figures
    are the FP32 twin's (fitted on its logits); the test ECE is the FP16 graph's own."""
    name = fp32.name + FP16_SUFFIX
    path = fp32_path.with_name(fp32_path.name.replace(".onnx", "-fp16.onnx"))
    try:
        graph = to_fp16(onnx.load(str(fp32_path)))
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(path))
        logits, probs = check_parity(
            module, path, INPUT_NAME, OUTPUT_NAMES, test.x, FP16_ATOL, same_argmax=False
        )
    except (ExportError, Fp16Error, onnx.checker.ValidationError) as exc:
        _log(f"level {name}: dropped, its FP16 graph fails its checks: {exc}")
        path.unlink(missing_ok=True)
        return None
    cal = fp32.calibration
    assert cal is not None
    level = _measured(
        name,
        fraction,
        kept,
        family,
        small,
        path,
        logits,
        probs,
        temperature,
        cal.validation_ece_uncalibrated,
        cal.validation_ece,
        test,
        precision="fp16",
    )
    loss = fp32.accuracy - level.accuracy
    if loss > FP16_MAX_LOSS:
        _log(f"level {name}: dropped, {100 * loss:.2f} points below FP32 (at most {100 * FP16_MAX_LOSS:.1f})")
        path.unlink()
        return None
    _log(f"level {name}: kept, {100 * loss:+.2f} points against FP32")
    return level


def _measured(
    name: str,
    fraction: Fraction,
    kept: int,
    family: Family,
    small: nn.Module,
    path: Path,
    logits: np.ndarray,
    probs: np.ndarray,
    temperature: float,
    val_before: float,
    val_after: float,
    test: Split,
    precision: str = "fp32",
) -> Level:
    """A level's manifest entry from its graph's outputs on the test split, timed on CPU."""
    correct, n = int((logits.argmax(-1) == test.y).sum()), len(test.y)
    low, high = wilson_interval(correct, n)
    level = Level(
        name=name,
        precision=precision,  # type: ignore[arg-type]
        keep_fraction=float(fraction),
        units=kept,
        knobs=family.knobs(small),
        file=path.name,
        sha256=sha256_file(path),
        accuracy=round(correct / n, 4),
        test_size=n,
        accuracy_interval=Interval(low=round(low, 4), high=round(high, 4)),
        calibration=Calibration(
            temperature=round(temperature, 4),
            ece=round(expected_calibration_error(probs, test.y), 4),
            ece_uncalibrated=round(expected_calibration_error(softmax(logits * temperature), test.y), 4),
            validation_ece=round(val_after, 4),
            validation_ece_uncalibrated=round(val_before, 4),
            bins=ECE_BINS,
        ),
        # an FP16 level is served on CUDA only: not timed on CPU (where inserted casts make it slow);
        # the server measures it at warm-up
        latency={}
        if precision == "fp16"
        else {CPU_PROVIDER: time_batches(cpu_session(path), test.x.shape[1:])},
        params=sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer),
        flops=family.flops(small),
    )
    cal = level.calibration
    assert cal is not None
    _log(
        f"level {name}: accuracy {level.accuracy:.4f} [{low:.4f}, {high:.4f}] of {n}, "
        f"ECE {cal.ece_uncalibrated:.4f} -> {cal.ece:.4f} (T {cal.temperature:.3f})"
        + (f", batch-128 median {t[-1].median_ms:.2f} ms" if (t := level.latency_on(CPU_PROVIDER)) else "")
    )
    return level


def export_bundle(
    checkpoint: Path,
    out: Path,
    fractions: list[Fraction],
    name: str | None = None,
    ranking: str = "outdegree",
    version: str = "1",
    fp16: bool = False,
) -> Manifest:
    try:
        levels.validate(fractions)
    except levels.LevelError as exc:
        raise ExportError(str(exc)) from exc
    try:
        model, meta = load_checkpoint(checkpoint)
        family = get(meta["family"])
        order = torch.tensor(meta["ranking"][ranking])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{checkpoint}: bad checkpoint ({exc})") from exc
    data = load_dataset(meta["dataset"], meta["seed"])
    norm = (torch.tensor(meta["normalization"]["mean"]), torch.tensor(meta["normalization"]["std"]))
    start = time.monotonic()

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries = [
            entry
            for f in sorted(fractions, reverse=True)
            for entry in export_level(family, model, f, order, norm, data.val, data.test, tmp, fp16)
        ]
        manifest = Manifest(
            family=family.name,
            unit=family.unit,
            name=name or meta["dataset"].removesuffix(".npz").split("/")[-1],
            version=version,
            input=InputSpec(
                name=INPUT_NAME,
                shape=[-1, *family.input_shape(model)],
                normalization=Normalization(
                    mean=meta["normalization"]["mean"], std=meta["normalization"]["std"]
                ),
            ),
            outputs=[TensorSpec(name=n, shape=[-1, len(meta["labels"])]) for n in OUTPUT_NAMES],
            labels=meta["labels"],
            levels=entries,
            profile=Profile(
                provider="CPUExecutionProvider",
                intra_op_threads=profile_threads(),
                repeats=10,
                machine=machine_description(),
            ),
            provenance=Provenance(
                dataset=meta["dataset"],
                seed=meta["seed"],
                train_config=meta["train_config"] | {"model": meta["config"]},
                code_version=code_version(),
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                ranking=ranking,  # type: ignore[arg-type]
            ),
        )
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        plot_tradeoff(manifest, tmp / "tradeoff.png")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"export done in {time.monotonic() - start:.1f} s")
    return manifest


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished bundle into place; an existing bundle is swapped out, never mixed in."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
