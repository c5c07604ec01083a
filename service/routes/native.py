"""The native JSON API: predict with a budget, and the level table of each model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic_core import SchemaValidator, ValidationError, from_json, to_json
from pydantic_core import core_schema as cs
from starlette.datastructures import Headers

from service import budget, logs
from service.engine import Engine
from service.errors import BadRequest, error_docs
from service.models import ServedModel
from service.routes.deps import engine, engine_of, timing
from service.schemas import LevelInfo, ModelInfo, PredictRequest, PredictResponse, TensorInfo
from service.v2_codec import json_numbers

router = APIRouter(prefix="/v1", tags=["native"])
_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
_FIELDS = frozenset(PredictRequest.model_fields)
_FEW_ROWS = 8
_EXACT = 2.0**53  # |v| below it: a JSON integer is exactly its float, and far inside the input bound


@cache
def _request_validator(shape: tuple[int, ...]) -> SchemaValidator | None:
    """The common request in one call of pydantic-core: JSON parsed and checked together, with
    `inputs` as rows nested to `shape` of plain numbers, each finite and below 2**53 in size, and
    only known fields. What it passes, the whole way (`_decode`, `_rows`) passes too, with the same
    float32 rows; what it refuses (flat rows, booleans, a huge or non-finite number, an unknown
    field, bad JSON) takes the whole way, which says what is wrong. Why: at concurrency 1 the whole
    way's several numpy calls, run on caches the last inference evicted, cost the answer ~60 us.
    None where the shape has a dynamic size."""
    if not all(size >= 1 for size in shape):
        return None
    number: cs.CoreSchema = cs.float_schema(strict=True, allow_inf_nan=False, gt=-_EXACT, lt=_EXACT)
    for size in reversed(shape):
        number = cs.list_schema(number, min_length=size, max_length=size, fail_fast=True)
    fields = {f: cs.typed_dict_field(cs.any_schema(), required=False) for f in _FIELDS - {"inputs"}}
    fields["inputs"] = cs.typed_dict_field(cs.list_schema(number, min_length=1, fail_fast=True))
    return SchemaValidator(cs.typed_dict_schema(fields, extra_behavior="forbid"))


def _request(eng: Engine, name: str, raw: bytes) -> tuple[ServedModel, dict[str, Any], np.ndarray]:
    """The model, the body's fields and its rows (float32, checked as rows_of_numbers checks)."""
    served = eng.models.get(name)
    validator = _request_validator(served.row_shape) if served is not None else None
    if validator is not None:
        try:
            doc = validator.validate_json(raw)
        except ValidationError:
            pass
        else:
            return eng.model(name), _top_k(doc), np.array(doc["inputs"], dtype=np.float32)
    doc = _decode(raw)  # the body's own errors before the model's (404, 503)
    model = eng.model(name)
    return model, doc, _rows(model, doc["inputs"], b"true" in raw or b"false" in raw)


def _decode(body: bytes) -> dict[str, Any]:
    """The body as a JSON object with only known fields (PredictRequest documents them; pydantic
    _core's parser without a model costs a fraction of one on the path of every request)."""
    try:
        doc = from_json(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5000-digit int, deep nesting
        raise BadRequest(f"invalid request: the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid request: the body must be a JSON object")
    unknown = sorted(doc.keys() - _FIELDS)
    if unknown:
        raise BadRequest(f"invalid request: unknown fields {unknown}; known: {sorted(_FIELDS)}")
    if not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("invalid request: 'inputs' must be a non-empty list (one entry per example)")
    return _top_k(doc)


def _top_k(doc: dict[str, Any]) -> dict[str, Any]:
    top_k = doc.get("top_k")
    if top_k is not None:
        k = budget.integer(top_k)
        if k is None or k < 1:
            raise BadRequest(f"invalid request: 'top_k' must be an integer >= 1, got {top_k!r}")
        doc["top_k"] = k
    return doc


def _rows(model: ServedModel, inputs: list[Any], maybe_bools: bool) -> np.ndarray:
    x = json_numbers(inputs, "'inputs'", maybe_bools)
    shape = model.manifest.input.shape[1:]
    if x.ndim == 2 and x.shape[1] == math.prod(shape) and len(shape) > 1:
        x = x.reshape(len(x), *shape)  # flat rows are accepted too
    return model.rows_of_numbers(x)


def _predictions(model: ServedModel, probs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    labels = model.manifest.labels
    if top_k is None:
        rows = probs.tolist()
        # a few rows: the best class found in the lists, not by a numpy call, which after a run (its
        # caches evicted) costs the answer ~10 us at concurrency 1; many rows: numpy's argmax
        best = [r.index(max(r)) for r in rows] if len(rows) <= _FEW_ROWS else probs.argmax(axis=1).tolist()
        return [
            {"label": labels[b], "class_index": b, "probabilities": row}
            for b, row in zip(best, rows, strict=True)
        ]
    best = probs.argmax(axis=1).tolist()
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k].tolist()
    return [
        {
            "label": labels[b],
            "class_index": b,
            "top_k": [{"label": labels[i], "class_index": i, "probability": row[i]} for i in idx],
        }
        for b, idx, row in zip(best, order, probs.tolist(), strict=True)
    ]


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    responses=error_docs(400, 404, 408, 413, 429, 500, 503, 504),
    openapi_extra=_PREDICT_DOC,
)
async def predict(name: str, request: Request) -> Response:
    """Classify `inputs`; the level is chosen per request from `sparsity_level`, `latency_budget_ms`,
    `min_accuracy`, or the server's default level."""
    body, headers = await answer(engine_of(request), name, None, request.headers, await request.body())
    return Response(body, headers=dict(headers))


_JSON = {"Content-Type": "application/json"}


async def answer(
    eng: Engine, name: str, version: str | None, headers: Headers, raw: bytes
) -> tuple[bytes, Mapping[str, str]]:
    """The predict route's work, also called directly by service.guard: decode, budget, run, encode."""
    with eng.track(name) as rec:  # counts every outcome once, a 400 or a 413 from reading too
        model, doc, rows = _request(eng, name, raw)
        ask = budget.parse(doc, timeout_key="timeout_ms", timeout_per_ms=1.0)
        inference = eng.answered(model, await eng.infer(model, rows, ask, rec), rec)
        answer = {
            "model": model.name,
            "model_version": model.manifest.version,
            **timing(inference),
            "request_id": logs.current.get(),
            "predictions": _predictions(model, inference.result.outputs["probabilities"], doc.get("top_k")),
        }
        return to_json(answer), _JSON


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
                knobs=dict(lv.level.knobs),
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
