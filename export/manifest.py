"""The bundle manifest: the contract between export (writes it) and service (reads it).

Importable without torch or onnx: the server validates bundles with this same code.
A bundle is a directory: manifest.json, one ONNX file per level, tradeoff.png.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION: Final = 1
MANIFEST_FILE = "manifest.json"


class BundleError(ValueError):
    """A bundle that cannot be used: missing file, bad manifest, checksum mismatch."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """(x - mean) / std per input element, applied inside every level's graph: callers send raw values."""

    applied: Literal["in_graph"] = "in_graph"
    mean: list[float]
    std: list[float]


class TensorSpec(_Strict):
    name: str
    datatype: Literal["FP32"] = "FP32"
    shape: list[int] = Field(description="-1 marks the dynamic batch axis")


class InputSpec(TensorSpec):
    normalization: Normalization


class LatencyStat(_Strict):
    batch_size: int = Field(gt=0)
    median_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)


class Level(_Strict):
    name: str = Field(description='the level\'s name, e.g. "full", "1/2"')
    keep_fraction: float = Field(gt=0, le=1)
    modules: int = Field(gt=0, description="processor modules kept in this graph")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    accuracy: float = Field(ge=0, le=1, description="measured on the held-out test split")
    latency: list[LatencyStat] = Field(description="onnxruntime CPU latency per batch size")
    params: int = Field(ge=0)
    flops: int = Field(ge=0, description="multiply-adds x2 per example")

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        if Path(v).name != v or v in {".", ".."}:
            raise ValueError(f"level file must be a plain file name inside the bundle, got {v!r}")
        return v


class Profile(_Strict):
    provider: str
    intra_op_threads: int
    repeats: int
    machine: str


class Provenance(_Strict):
    dataset: str
    seed: int
    train_config: dict[str, object]
    code_version: str
    created: str
    ranking: Literal["outdegree", "random"]


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = "1"
    input: InputSpec
    outputs: list[TensorSpec]
    labels: list[str]
    levels: list[Level] = Field(min_length=1)
    profile: Profile
    provenance: Provenance

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate level names: {names}")
        fractions = [lv.keep_fraction for lv in self.levels]
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"duplicate keep fractions: {fractions}")
        size = 1
        for d in self.input.shape[1:]:
            size *= d
        if len(self.input.normalization.mean) != size or len(self.input.normalization.std) != size:
            raise ValueError("normalization mean/std must have one value per input element")
        for out in self.outputs:
            if out.shape[-1] != len(self.labels):
                raise ValueError(
                    f"output {out.name} has {out.shape[-1]} classes, labels has {len(self.labels)}"
                )
        return self

    def sorted_levels(self) -> list[Level]:
        """Levels from the largest keep fraction (most accurate, slowest) down."""
        return sorted(self.levels, key=lambda lv: -lv.keep_fraction)


def level_name(fraction: Fraction) -> str:
    return "full" if fraction == 1 else f"{fraction.numerator}/{fraction.denominator}"


def level_file(fraction: Fraction) -> str:
    return "level-full.onnx" if fraction == 1 else f"level-{fraction.numerator}_{fraction.denominator}.onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: Path) -> Manifest:
    path = Path(bundle) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_FILE}; is this a bundle written by `circuitserve export`?")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{path}: invalid manifest: {exc}") from exc


def load_bundle(bundle: Path) -> Manifest:
    """Read the manifest and verify every level file against its checksum."""
    manifest = read_manifest(bundle)
    for level in manifest.levels:
        path = Path(bundle) / level.file
        if not path.is_file():
            raise BundleError(f"{bundle}: level {level.name!r} file {level.file} is missing")
        actual = sha256_file(path)
        if actual != level.sha256:
            raise BundleError(
                f"{bundle}: level {level.name!r} file {level.file} fails its checksum "
                f"(manifest {level.sha256[:12]}..., file {actual[:12]}...): the file changed after export"
            )
    return manifest
