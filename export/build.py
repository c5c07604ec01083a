"""Checkpoint -> bundle: one ONNX graph per pruning level, checked, parity-tested against torch,
profiled, described by manifest.json. Built in a temporary directory, then renamed into place."""

from __future__ import annotations

import logging
import shutil
import sys
import time
import warnings
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.manifest import (
    MANIFEST_FILE,
    InputSpec,
    Level,
    Manifest,
    Normalization,
    Profile,
    Provenance,
    TensorSpec,
    level_file,
    level_name,
    sha256_file,
)
from export.plot import plot_tradeoff
from export.profile import code_version, cpu_session, machine_description, profile_threads, time_batches
from model.data import load_dataset
from model.nac import Frozen, flops_per_example, level_modules
from model.train import load_checkpoint

PARITY_ATOL = 1e-4  # max |logit_onnx - logit_torch| on the held-out split
INPUT_NAME, OUTPUT_NAMES = "input", ("logits", "probabilities")


class ExportError(RuntimeError):
    """Export refused: bad checkpoint or levels, or a graph that fails its checks."""


def export_level(frozen: Frozen, path: Path) -> None:
    """One level to one self-contained ONNX file: eval mode, dynamic batch axis, full check."""
    frozen.eval()
    example = torch.zeros(2, *frozen.nac.cfg.input_shape)
    # the exporter logs about optional torchvision ops and warns about its own internals: noise here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _export(frozen, example, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _export(frozen: Frozen, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        frozen,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
        external_data=False,
        dynamo=True,
        verbose=False,
    )


def check_parity(frozen: Frozen, path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX graph and the torch level on the same inputs; return the ONNX logits."""
    session = cpu_session(path)
    onnx_logits = np.concatenate(
        [session.run([OUTPUT_NAMES[0]], {INPUT_NAME: x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    )
    with torch.no_grad():
        torch_logits = frozen(torch.from_numpy(x))[0].numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if diff > PARITY_ATOL or not np.array_equal(onnx_logits.argmax(-1), torch_logits.argmax(-1)):
        raise ExportError(
            f"{path.name}: ONNX differs from torch (max |logit diff| {diff:.2e} > {PARITY_ATOL})"
        )
    return onnx_logits


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_bundle(
    checkpoint: Path, out: Path, levels: list[Fraction], name: str | None = None, ranking: str = "outdegree"
) -> Manifest:
    if len(set(levels)) != len(levels):
        raise ExportError(f"duplicate levels: {[str(f) for f in levels]}")
    if any(not 0 < f <= 1 for f in levels):
        raise ExportError(f"keep fractions must be in (0, 1]: {[str(f) for f in levels]}")
    try:
        model, meta = load_checkpoint(checkpoint)
        order = torch.tensor(meta["ranking"][ranking])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{checkpoint}: bad checkpoint ({exc})") from exc
    data = load_dataset(meta["dataset"], meta["seed"])
    mean = torch.tensor(meta["normalization"]["mean"])
    std = torch.tensor(meta["normalization"]["std"])
    x_test = data.test.x
    start = time.monotonic()

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        entries = []
        for f in sorted(levels, reverse=True):
            k = level_modules(model.cfg.modules, float(f))
            frozen = Frozen(model.prune(order[:k]), mean, std)
            path = tmp / level_file(f)
            _log(f"level {level_name(f)}: {k} of {model.cfg.modules} modules: exporting...")
            export_level(frozen, path)
            logits = check_parity(frozen, path, x_test)
            tok = frozen.nac.tokenizer
            entries.append(
                Level(
                    name=level_name(f),
                    keep_fraction=float(f),
                    modules=k,
                    file=path.name,
                    sha256=sha256_file(path),
                    accuracy=round(float((logits.argmax(-1) == data.test.y).mean()), 4),
                    latency=time_batches(cpu_session(path), x_test.shape[1:]),
                    params=sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer),
                    flops=flops_per_example(frozen.nac.cfg, tok.n_tokens, tok.proj.in_features),
                )
            )
            _log(
                f"level {level_name(f)}: accuracy {entries[-1].accuracy:.4f}, "
                f"batch-128 median {entries[-1].latency[-1].median_ms:.2f} ms"
            )
        manifest = Manifest(
            name=name or meta["dataset"].removesuffix(".npz").split("/")[-1],
            input=InputSpec(
                name=INPUT_NAME,
                shape=[-1, *model.cfg.input_shape],
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


def summary(manifest: Manifest) -> dict[str, Any]:
    return {lv.name: {"accuracy": lv.accuracy, "modules": lv.modules} for lv in manifest.levels}
