"""The Open Inference Protocol v2 infer request and response as pydantic models, for the OpenAPI
document only: requests are parsed by service.v2_codec's raw path, which is faster and also reads
the binary extension. service.openapi narrows these to the served models once they are loaded.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.budget import MAX_PRIORITY


class V2TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")


class V2InputTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="The model's input name (GET /v2/models/{name} lists it).")
    shape: list[int] = Field(description="[batch, *the model's input shape]; batch >= 1.")
    datatype: str = Field(description="The model's input datatype: FP32.")
    data: list[float] = Field(description="shape's product of numbers, row-major (flat).")
    parameters: V2TensorParameters | None = Field(
        default=None, description="Per tensor; binary_data_size only with the binary extension."
    )


class V2OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(default=None, description="Send this output as raw bytes.")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="One of the model's outputs.")
    parameters: V2OutputParameters | None = None


class V2InferParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    sparsity_level: str | float | None = Field(
        default=None, description='Run this level: its name ("full", "1/2") or keep fraction.'
    )
    latency_budget_ms: float | None = Field(
        default=None, gt=0, le=3.6e6, description="Run the most accurate level predicted to answer in time."
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Run the fastest level at least this accurate."
    )
    priority: int | None = Field(
        default=None, ge=0, le=MAX_PRIORITY, description="Lower runs first; 0 or null = default."
    )
    timeout: float | None = Field(
        default=None, ge=0, description="µs; give up (504) if not started by then. Only lowers the default."
    )
    binary_data_output: bool | None = Field(default=None, description="Send every output as raw bytes.")


class V2InferRequest(BaseModel):
    """JSON body. With the binary tensor data extension the body is this JSON followed by raw
    tensor bytes, its length in the Inference-Header-Content-Length header (not described here)."""

    model_config = ConfigDict(extra="allow")

    id: Any = Field(default=None, description="Echoed in the response (as a string).")
    parameters: V2InferParameters | None = Field(
        default=None,
        description="The budget: sparsity_level, or latency_budget_ms and/or min_accuracy, not both.",
    )
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1, description="The model's one input.")
    outputs: list[V2RequestedOutput] | None = Field(default=None, description="Default: all outputs.")


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = Field(default=None, description="Absent when sent binary.")
    parameters: dict[str, int] | None = Field(default=None, description="binary_data_size when binary.")


class V2ResponseParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    sparsity_level: str = Field(description="The level that ran.")
    keep_fraction: float
    expected_accuracy: float
    policy: str = Field(description="explicit | latency_budget | min_accuracy | default")
    predicted_ms: float | None = None
    queue_ms: float
    compute_ms: float
    batch_size: int
    budget_met: bool | None = None
    request_id: str


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: V2ResponseParameters
    outputs: list[V2OutputTensor]
