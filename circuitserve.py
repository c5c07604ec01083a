"""The `circuitserve` command: the one module that composes model (train), export, service (serve)
and bench. It sits above all four, so none of them imports another's command line (the import
contracts in pyproject.toml hold service/ below model/ and bench/). Heavy imports (torch, onnx,
bench) happen inside the subcommands that need them, so `serve` and `inspect` run on the base
install, where neither torch nor bench/ exists."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer

from model import levels as lv

app = typer.Typer(
    help="Train, export and serve a Neural Attentive Circuit with per-request compute.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_CHECKPOINT = Path("runs/digits")
DEFAULT_BUNDLE = Path("bundles/digits")


def parse_levels(text: str) -> list[Fraction]:
    """'1,1/2,0.25' -> [1, 1/2, 1/4] (model.levels.parse_list), as a usage error if unreadable."""
    try:
        return lv.parse_list(text)
    except lv.LevelError as exc:
        raise typer.BadParameter(str(exc)) from exc


@contextmanager
def user_errors(*errors: type[Exception], prefix: str = "error") -> Iterator[None]:
    """Expected failures (bad data, bad bundle, bad settings) end the command with one clear line
    and exit status 2, not a traceback."""
    try:
        yield
    except errors as exc:
        typer.echo(f"{prefix}: {exc}", err=True)
        raise typer.Exit(2) from exc


def _need_train_extra() -> None:
    needs = "this command needs the train extra (pip install 'circuitserve[train]')"
    with user_errors(ImportError, prefix=needs):
        import onnx  # noqa: F401
        import torch  # noqa: F401


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="checkpoint directory to write")] = DEFAULT_CHECKPOINT,
    dataset: Annotated[
        str, typer.Option(help="digits, mnist1d or PATH.npz (arrays x, y[, label_names])")
    ] = "digits",
    seed: int = 0,
    epochs: Annotated[int | None, typer.Option(help="default: the preset's")] = None,
    preset: Annotated[str | None, typer.Option(help="model size preset (default: the dataset's)")] = None,
    sparsity_aware: Annotated[bool, typer.Option(help="train every level, not only the full model")] = True,
    levels: Annotated[str, typer.Option(help="keep fractions drawn during training")] = lv.DEFAULT_TEXT,
    family: Annotated[str, typer.Option(help="model family (model/families.py)")] = "nac",
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (default: the cores the load leaves idle)")
    ] = None,
) -> None:
    """Train a NAC and print test accuracy per level, in out-degree and in random order."""
    _need_train_extra()
    from model import families
    from model.data import DatasetError
    from model.train import TrainConfig, format_results
    from model.train import train as run_training

    cfg = TrainConfig(
        dataset=dataset,
        family=family,
        seed=seed,
        epochs=epochs,
        preset=preset,
        sparsity_aware=sparsity_aware,
        levels=[float(f) for f in parse_levels(levels)],
    )
    with user_errors(ValueError):  # an unknown family
        families.get(family)
    with user_errors(DatasetError):
        _, meta = run_training(cfg, out, threads=threads)
    typer.echo(f"checkpoint written to {out} ({meta['train_seconds']} s on {meta['train_threads']} threads)")
    typer.echo(format_results(meta["test_accuracy"]))


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="directory written by `circuitserve train --out`")],
    out: Annotated[Path, typer.Option(help="bundle directory to write")] = DEFAULT_BUNDLE,
    levels: Annotated[str, typer.Option(help="keep fractions, one ONNX graph each")] = lv.DEFAULT_TEXT,
    name: Annotated[str | None, typer.Option(help="model name (default: the dataset's)")] = None,
    ranking: Annotated[
        str, typer.Option(help="module order: outdegree or random (the control)")
    ] = "outdegree",
    version: Annotated[int, typer.Option(min=1, help="the model version servers publish it under")] = 1,
    fp16: Annotated[
        bool,
        typer.Option(help="also export each level in FP16 (served on CUDA), kept if it loses <= 0.2 points"),
    ] = False,
) -> None:
    """Export one ONNX graph per level with a measured profile into a bundle directory."""
    _need_train_extra()
    from export.build import ExportError, export_bundle
    from export.inspect import format_levels

    with user_errors(ExportError, FileNotFoundError):
        manifest = export_bundle(
            checkpoint, out, parse_levels(levels), name=name, ranking=ranking, version=str(version), fp16=fp16
        )

    typer.echo(f"bundle written to {out}")
    typer.echo(format_levels(manifest))


@app.command()
def inspect(bundle: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Print a bundle's level table (checksums verified)."""
    from export.inspect import format_levels
    from export.manifest import BundleError, load_bundle

    with user_errors(BundleError):
        typer.echo(format_levels(load_bundle(bundle)))


def ensure_default_bundle() -> Path:
    """The default digits bundle, trained and exported on first use."""
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    typer.echo(
        f"no bundle at {DEFAULT_BUNDLE}: training the default digits model "
        "(about two minutes on 2 idle cores), then exporting it...",
        err=True,
    )
    _need_train_extra()
    if not (DEFAULT_CHECKPOINT / "checkpoint.json").is_file():
        train(out=DEFAULT_CHECKPOINT)
    export(DEFAULT_CHECKPOINT, out=DEFAULT_BUNDLE)
    return DEFAULT_BUNDLE


@app.command()
def serve(
    bundles: Annotated[list[Path] | None, typer.Argument(help="bundle directories (default: digits)")] = None,
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1, or CIRCUITSERVE_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000, or CIRCUITSERVE_PORT")] = None,
    repository: Annotated[
        Path | None, typer.Option(help="serve every bundle under DIR; load/unload by name at run time")
    ] = None,
    workers: Annotated[
        str | None, typer.Option(help="processes sharing the port: N or auto (one per core); default 1")
    ] = None,
) -> None:
    """Serve bundles over HTTP (native JSON API and Open Inference Protocol v2)."""
    from service.app import serve as run_server
    from service.loader import StartupError
    from service.settings import SettingsError, load

    given = {"host": host, "port": port, "repository": repository, "workers": workers}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if bundles:
        overrides["bundles"] = bundles
    with user_errors(SettingsError, prefix="error: invalid settings"):
        settings = load(**overrides)
    if not settings.bundles and settings.repository is None:
        settings = settings.model_copy(update={"bundles": [ensure_default_bundle()]})
    with user_errors(StartupError, prefix="error: cannot serve"):
        if settings.worker_count() > 1:
            from service.workers import serve_workers

            serve_workers(settings)
        else:
            run_server(settings)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="small, fast run (used by the test suite)")] = False,
    out: Annotated[Path, typer.Option(help="where report.json and REPORT.md go")] = Path("bench"),
    only: Annotated[
        str | None,
        typer.Option(help="comma-separated sections to rerun, merged into the report in OUT (e.g. peers)"),
    ] = None,
    families: Annotated[
        str | None,
        typer.Option(help="with --only families: comma-separated families to rerun, the others kept"),
    ] = None,
) -> None:
    """Measure levels, serving overhead, peers and overload; write bench/report.json and REPORT.md."""
    from bench.run import UsageError, run_all

    with user_errors(UsageError):  # an unknown section, or --only with no report to merge into
        run_all(
            out=out,
            quick=quick,
            only=None if only is None else [s for s in only.split(",") if s],
            families=None if families is None else [f for f in families.split(",") if f],
        )


if __name__ == "__main__":
    app()
