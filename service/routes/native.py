"""The native JSON API: predict with a budget, and the level table of each model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service import logs
from service.engine import Engine, RequestBudget
from service.errors import BadRequest, error_docs
from service.models import ServedModel
from service.routes.deps import engine, engine_of, timing
from service.schemas import (
    ClassScore,
    LevelInfo,
    ModelInfo,
    Prediction,
    PredictRequest,
    PredictResponse,
    TensorInfo,
)

router = APIRouter(prefix="/v1", tags=["native"])
_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def _rows(model: ServedModel, inputs: list[Any]) -> np.ndarray:
    shape = model.manifest.input.shape[1:]
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused by check_input
            x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BadRequest(f"inputs must be equally shaped lists of numbers: {exc}") from None
    if x.ndim == 2 and x.shape[1] == math.prod(shape) and len(shape) > 1:
        x = x.reshape(len(x), *shape)  # flat rows are accepted too
    return x


def _predictions(model: ServedModel, probs: np.ndarray, top_k: int | None) -> list[Prediction]:
    labels = model.manifest.labels
    out = []
    for row in probs:
        best = int(np.argmax(row))
        if top_k is None:
            out.append(Prediction(label=labels[best], class_index=best, probabilities=row.tolist()))
        else:
            order = np.argsort(-row, kind="stable")[:top_k]
            scores = [
                ClassScore(label=labels[i], class_index=int(i), probability=float(row[i])) for i in order
            ]
            out.append(Prediction(label=labels[best], class_index=best, top_k=scores))
    return out


def _parse(body: bytes) -> PredictRequest:
    """The body, parsed and validated in one pass by pydantic's JSON parser (FastAPI's own body
    handling costs more than the rest of the request on small models)."""
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    responses=error_docs(400, 404, 408, 413, 429, 500, 503, 504),
    openapi_extra=_PREDICT_DOC,
)
async def predict(name: str, request: Request) -> Response:
    """Classify `inputs`; the level is chosen per request from `sparsity_level`, `latency_budget_ms`,
    `min_accuracy`, or the server's default level."""
    eng = engine_of(request)
    with eng.track(name) as rec:  # counts every outcome once, a 400 or a 413 from reading too
        body = _parse(await request.body())
        model = eng.model(name)
        budget = RequestBudget(
            level=body.sparsity_level,
            latency_ms=body.latency_budget_ms,
            min_accuracy=body.min_accuracy,
            priority=body.priority,
            timeout_ms=body.timeout_ms,
        )
        inference = await eng.infer(model, _rows(model, body.inputs), budget, rec)
        probs = inference.result.outputs["probabilities"]
        answer = PredictResponse.model_validate(
            {
                "model": model.name,
                "model_version": model.manifest.version,
                **timing(inference),
                "request_id": logs.current.get(),
                "predictions": _predictions(model, probs, body.top_k),
            }
        )
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


def _info(model: ServedModel) -> ModelInfo:
    m = model.manifest
    return ModelInfo(
        name=m.name,
        version=m.version,
        family=m.family,
        unit=m.unit,
        default_level=model.default_level,
        input=TensorInfo(name=m.input.name, datatype=m.input.datatype, shape=m.input.shape),
        outputs=[TensorInfo(name=o.name, datatype=o.datatype, shape=o.shape) for o in m.outputs],
        labels=m.labels,
        levels=[
            LevelInfo(
                name=lv.name,
                keep_fraction=lv.level.keep_fraction,
                accuracy=lv.level.accuracy,
                units=lv.level.units,
                params=lv.level.params,
                flops=lv.level.flops,
                latency_ms={b: t for b, t in lv.profile.latency_ms},
                correction=lv.correction.ratio,
                provider=lv.runner.provider,
                queue_depth=lv.batcher.queued_samples,
            )
            for lv in model.levels
        ],
    )


@router.get("/models", response_model=list[ModelInfo])
async def list_models(eng: Engine = Depends(engine)) -> list[ModelInfo]:
    return [_info(eng.model(n)) for n in sorted(eng.models)] if eng.ready else []


@router.get("/models/{name}", response_model=ModelInfo, responses=error_docs(404, 503))
async def model_table(name: str, eng: Engine = Depends(engine)) -> ModelInfo:
    """The model's level table: accuracy, profiled latency and live correction per level."""
    return _info(eng.model(name))
