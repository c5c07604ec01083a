"""Open Inference Protocol v2 (KServe / Triton HTTP), with the binary tensor data extension.

The budget travels in the request `parameters`: `sparsity_level`, `latency_budget_ms`,
`min_accuracy`, beside Triton's `priority` and `timeout` (µs). The body is parsed by hand:
tritonclient sends no Content-Type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from service import __version__, budget, logs
from service.engine import Engine
from service.errors import BadRequest, error_docs
from service.models import ServedModel
from service.routes.deps import engine, engine_of, timing
from service.v2_codec import HEADER_LENGTH, classified, encode_response, parse_request

router = APIRouter(tags=["Open Inference Protocol v2"])
# Triton's names; model versions, GET /v2/models and gzip/deflate bodies are there too (README)
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics"]
_MODEL = "/v2/models/{name}"
_VERSIONED = "/v2/models/{name}/versions/{version}"

_INFER_EXAMPLE = {
    "id": "42",
    "parameters": {"latency_budget_ms": 5.0},
    "inputs": [{"name": "x", "shape": [1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
    "outputs": [{"name": "probabilities"}],
}
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/V2InferRequest"},
                "example": _INFER_EXAMPLE,
            },
        },
    },
    "responses": {
        "200": {
            "description": "The outputs; application/octet-stream when any is sent binary",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
}


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready",
    responses={503: {"description": "Loading, failed to load, draining, or every in-flight slot taken"}},
)
async def ready(eng: Engine = Depends(engine)) -> JSONResponse:
    """200 while this server takes inference; 503 while it cannot, so a load balancer sends elsewhere:
    still loading, failed, draining, or all `max_inflight_requests` slots busy (new requests get 429)."""
    saturated = eng.in_flight >= eng.settings.max_inflight_requests
    ok = eng.ready and not saturated
    body: dict[str, object] = {"ready": ok}
    if eng.ready and saturated:
        body["reason"] = f"all {eng.settings.max_inflight_requests} in-flight slots taken"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "circuitserve", "version": __version__, "extensions": EXTENSIONS}


def _model(eng: Engine, name: str, version: str | None) -> ServedModel:
    """The model named in the path: its latest version, or the one `/versions/{version}` names."""
    return eng.model_version(name, version)


@router.get(_MODEL, responses=error_docs(404, 503))
@router.get(_VERSIONED, include_in_schema=False)
async def model_metadata(name: str, request: Request, eng: Engine = Depends(engine)) -> dict[str, Any]:
    m = _model(eng, name, request.path_params.get("version")).manifest
    return {
        "name": m.name,
        "versions": sorted(eng.versions.get(m.name, {m.version: None}), key=int),
        "platform": "onnx_onnxv1",
        "inputs": [{"name": m.input.name, "datatype": m.input.datatype, "shape": m.input.shape}],
        "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape} for o in m.outputs],
    }


@router.get(_MODEL + "/ready", responses=error_docs(404, 503))
@router.get(_VERSIONED + "/ready", include_in_schema=False)
async def model_ready(name: str, request: Request, eng: Engine = Depends(engine)) -> dict[str, Any]:
    return {"name": _model(eng, name, request.path_params.get("version")).name, "ready": True}


@router.post(
    _MODEL + "/infer", openapi_extra=_INFER_DOC, responses=error_docs(400, 404, 408, 413, 429, 500, 503, 504)
)
@router.post(_VERSIONED + "/infer", include_in_schema=False)
async def infer(name: str, request: Request) -> Response:
    """Infer; the budget goes in `parameters` (`sparsity_level`, `latency_budget_ms`, `min_accuracy`).

    Binary tensor data extension: the JSON header, then raw tensor bytes; the header's length in
    `Inference-Header-Content-Length`, each binary input's size in `parameters.binary_data_size`
    (the schema describes the JSON form)."""
    version = request.path_params.get("version")
    body, headers = await answer(engine_of(request), name, version, request.headers, await request.body())
    return Response(body, headers=dict(headers))


async def answer(
    eng: Engine, name: str, version: str | None, headers: Headers, raw: bytes
) -> tuple[bytes, Mapping[str, str]]:
    """The infer route's work, also called directly by service.guard: decode, budget, run, encode."""
    with eng.track(name) as rec:
        model = _model(eng, name, version)
        req = parse_request(raw, headers.get(HEADER_LENGTH))
        spec = model.manifest.input
        if len(req.inputs) != 1 or req.inputs[0].name != spec.name:
            raise BadRequest(
                f"model {name!r} takes one input named {spec.name!r}, got {[t.name for t in req.inputs]}"
            )
        if req.inputs[0].datatype != spec.datatype:
            raise BadRequest(f"input {spec.name!r} must be {spec.datatype}, got {req.inputs[0].datatype}")
        names = model.output_names
        wanted = req.outputs if req.outputs is not None else dict.fromkeys(names, req.binary_output)
        if req.outputs is not None:
            unknown = sorted(set(wanted) - set(names))
            if unknown:
                raise BadRequest(f"model {name!r} has no outputs {unknown}; outputs: {names}")
        ask = budget.parse(req.parameters, timeout_key="timeout", timeout_per_ms=1000.0, where="parameter ")
        rows = model.check_input(req.inputs[0].array)
        inference = eng.answered(model, await eng.infer(model, rows, ask, rec), rec)
        params = {
            k: v for k, v in timing(inference).items() if not (isinstance(v, float) and not math.isfinite(v))
        }
        params["request_id"] = logs.current.get()
        header: dict[str, Any] = {"model_name": model.name, "model_version": model.manifest.version}
        if req.id is not None:
            header["id"] = req.id
        header["parameters"] = params
        outputs = [(n, inference.result.outputs[n], wanted[n]) for n in names if n in wanted]
        if req.classification:
            outputs = classified(outputs, req.classification, model.manifest.labels)
        return encode_response(header, outputs)
