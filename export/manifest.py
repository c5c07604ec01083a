"""The bundle manifest: the contract between export (writes it) and service (reads it).

Importable without torch or onnx: the server validates bundles with this same code.
A bundle is a directory: manifest.json, one ONNX file per level, tradeoff.png.

Schema 2 names the model family and the unit its levels drop (a NAC drops "modules"); a level
carries its `units` and any other knob of its family, its test-set size with a 95% Wilson
interval beside the accuracy, and its calibration. `version` (a positive integer as text, "1" when
absent) is the model version a server publishes the bundle under; `labels` name the classes.
Schema-1 manifests (NAC only, `modules` per
level) are still read: `_upgrade` turns them into schema 2 with those new figures absent.

Schema 3 keys a level's latency table by execution provider (`{"CPUExecutionProvider": [...]}`)
and marks its `precision`: an FP16 level is a level of its own (`name` "1/2@fp16", same keep
fraction as its FP32 twin), with its own measured accuracy. Schema-1 and -2 tables are one unkeyed
list, measured on CPU: they are read as the CPU table, and their levels are FP32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION: Final = 3
MANIFEST_FILE = "manifest.json"
CPU_PROVIDER: Final = "CPUExecutionProvider"  # the provider an unkeyed (schema 1-2) table was measured on
FP16_SUFFIX: Final = "@fp16"  # an FP16 level's name is its FP32 twin's name + this


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


class Interval(_Strict):
    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    method: Literal["wilson"] = "wilson"


class Calibration(_Strict):
    """Expected calibration error on the test split before and after the temperature, which was
    fitted on the validation split and kept only if it lowered the validation ECE (else 1)."""

    temperature: float = Field(gt=0, description="logits are divided by it in the graph, before softmax")
    ece: float = Field(ge=0, le=1, description="test ECE of the probabilities the graph returns")
    ece_uncalibrated: float = Field(ge=0, le=1, description="test ECE at temperature 1")
    validation_ece: float = Field(ge=0, le=1, description="validation ECE at `temperature`")
    validation_ece_uncalibrated: float = Field(ge=0, le=1, description="validation ECE at temperature 1")
    bins: int = Field(gt=0, description="equal-width confidence bins")


class Level(_Strict):
    name: str = Field(description='the level\'s name, e.g. "full", "1/2"')
    keep_fraction: float = Field(gt=0, le=1)
    units: int = Field(gt=0, description="units (the manifest's `unit`) kept in this graph")
    knobs: dict[str, int] = Field(default_factory=dict, description="the family's other settings")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    accuracy: float = Field(ge=0, le=1, description="measured on the held-out test split")
    test_size: int | None = Field(default=None, gt=0, description="test examples behind `accuracy`")
    accuracy_interval: Interval | None = None
    calibration: Calibration | None = None
    precision: Literal["fp32", "fp16"] = Field(
        default="fp32", description="fp16: FP16 weights and arithmetic inside, FP32 input and outputs"
    )
    latency: dict[str, list[LatencyStat]] = Field(
        description="onnxruntime latency per batch size, per execution provider it was measured on"
    )
    params: int = Field(ge=0)
    flops: int = Field(ge=0, description="multiply-adds x2 per example")

    @field_validator("latency", mode="before")
    @classmethod
    def _keyed(cls, v: object) -> object:
        """A schema 1-2 table (one list) was measured on CPU."""
        return {CPU_PROVIDER: v} if isinstance(v, list) else v

    def latency_on(self, provider: str) -> list[LatencyStat]:
        """The table measured on `provider` (e.g. "CUDAExecutionProvider"); empty if none was."""
        return self.latency.get(provider, [])

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
    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION  # as written; older files are read as schema 3
    family: str = Field(default="nac", description='the model family, e.g. "nac"')
    unit: str = Field(default="modules", description="what a level drops")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(
        default="1",
        pattern=r"^[1-9][0-9]{0,17}$",
        description="the bundle's model version, a positive integer (Triton's); absent in old bundles: 1",
    )
    input: InputSpec
    outputs: list[TensorSpec]
    labels: list[str]
    levels: list[Level] = Field(min_length=1)
    profile: Profile
    provenance: Provenance

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        """Schema 1 (NAC bundles before families): per level `modules` becomes `units`."""
        if not isinstance(data, dict) or data.get("schema_version") != 1:
            return data
        levels = []
        for lv in data.get("levels", []):
            if isinstance(lv, dict):
                if "units" in lv:
                    raise ValueError("a schema-1 level names its processor modules `modules`, not `units`")
                lv = {("units" if k == "modules" else k): v for k, v in lv.items()}
            levels.append(lv)
        return data | {"family": "nac", "unit": "modules", "levels": levels}

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for lv in self.levels:
            iv = lv.accuracy_interval
            if iv is not None and not iv.low <= lv.accuracy <= iv.high:
                raise ValueError(f"level {lv.name!r}: accuracy {lv.accuracy} outside its interval")
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate level names: {names}")
        fractions = [(lv.keep_fraction, lv.precision) for lv in self.levels]
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"duplicate keep fractions (per precision): {fractions}")
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

    def sorted_levels(self, precisions: tuple[str, ...] = ("fp32", "fp16")) -> list[Level]:
        """Levels of those precisions from the largest keep fraction (most accurate, slowest) down,
        an FP32 level before its FP16 twin."""
        chosen = [lv for lv in self.levels if lv.precision in precisions]
        return sorted(chosen, key=lambda lv: (-lv.keep_fraction, lv.precision != "fp32"))


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
