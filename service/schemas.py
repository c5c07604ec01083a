"""Request and response bodies of the native JSON API (and the level table)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.budget import MAX_PRIORITY

_EXAMPLE_ROW: Any = [[0.0] * 8 for _ in range(8)]
_GIVEN: Any = {"not": {"type": "null"}}
# JSON Schema of a body that names a level and states a budget: the server refuses it (400).
LEVEL_AND_BUDGET: dict[str, Any] = {
    "anyOf": [
        {"required": ["sparsity_level", b], "properties": {"sparsity_level": _GIVEN, b: _GIVEN}}
        for b in ("latency_budget_ms", "min_accuracy")
    ]
}


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": [_EXAMPLE_ROW], "latency_budget_ms": 5.0},
                {"inputs": [_EXAMPLE_ROW, _EXAMPLE_ROW], "sparsity_level": "1/2", "top_k": 3},
                {"inputs": [_EXAMPLE_ROW], "min_accuracy": 0.85, "priority": 1, "timeout_ms": 200},
            ],
            "not": LEVEL_AND_BUDGET,
        },
    )

    inputs: list[Any] = Field(
        min_length=1,
        description="One entry per example: raw values (normalisation is done by the model), "
        "nested to the model's input shape or flat.",
    )
    sparsity_level: str | float | None = Field(
        default=None, description='Run this level: its name ("full", "1/2") or keep fraction (0.5).'
    )
    latency_budget_ms: float | None = Field(
        default=None, gt=0, description="Run the most accurate level predicted to answer within this time."
    )
    min_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Run the fastest level whose measured accuracy is at least this.",
    )
    top_k: int | None = Field(
        default=None, ge=1, description="Return the k most likely classes, not all probabilities."
    )
    priority: int | None = Field(
        None, ge=0, le=MAX_PRIORITY, description="Queue priority: lower runs first; 0 or null = default."
    )
    timeout_ms: float | None = Field(
        default=None,
        ge=0,
        description="Give up (504) if not started by then; only lowers the server's default.",
    )


class ClassScore(BaseModel):
    label: str
    class_index: int
    probability: float


class Prediction(BaseModel):
    label: str
    class_index: int
    probabilities: list[float] | None = Field(default=None, description="All classes, in label order.")
    top_k: list[ClassScore] | None = Field(default=None, description="With top_k: the k most likely classes.")


class PredictResponse(BaseModel):
    model: str
    model_version: str
    sparsity_level: str = Field(description="The level that ran.")
    keep_fraction: float
    expected_accuracy: float = Field(description="The level's accuracy measured at export.")
    policy: str = Field(description="explicit | latency_budget | min_accuracy | default")
    budget_met: bool | None = Field(
        default=None,
        description="Whether server_ms met the latency budget (and the level the accuracy floor); "
        "absent without a budget.",
    )
    predicted_ms: float = Field(description="The policy's prediction of server_ms.")
    server_ms: float = Field(description="Measured time from the request's arrival to its answer.")
    queue_ms: float
    compute_ms: float
    batch_size: int = Field(description="Samples in the batch this request ran in.")
    request_id: str = Field(description="As in the X-Request-ID header and the server's log lines.")
    predictions: list[Prediction]


class LevelInfo(BaseModel):
    name: str
    keep_fraction: float
    accuracy: float
    units: int = Field(description="Units of the model's family kept at this level (ModelInfo.unit).")
    knobs: dict[str, int] = Field(
        default_factory=dict,
        description='The family\'s other settings at this level, e.g. {"iterations": 2} or {"passes": 1}.',
    )
    params: int
    flops: int
    latency_ms: dict[int, float] = Field(description="Profiled median compute per batch size.")
    correction: float = Field(description="Observed / profiled compute time on this server (EWMA).")
    provider: str
    queue_depth: int


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelInfo(BaseModel):
    name: str
    version: str
    family: str = Field(description='The prunable model family, e.g. "nac".')
    unit: str = Field(description='What a level drops, e.g. "modules".')
    default_level: str
    input: TensorInfo
    outputs: list[TensorInfo]
    labels: list[str]
    levels: list[LevelInfo]
