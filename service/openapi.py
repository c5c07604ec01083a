"""The OpenAPI document, made to agree with what the server accepts.

FastAPI's document is generic: any model name, any nested list as input, and a v2 infer body
described by service.v2_schemas. Once the models are loaded, the document served narrows it to this
server: model names, level names and keep fractions, each input's name, datatype and shape, float32's
input limit for values (service.models.INPUT_LIMIT). A body the schema admits is one the server
serves (or refuses only for load: 429, 503, 504), so fuzzers (schemathesis) and clients built from
the schema get real answers.

JSON Schema cannot tie a v2 tensor's `data` length to its `shape`, so the v2 schema lists batch sizes
1..V2_BATCHES; larger batches are served all the same. With several models of different inputs, the
inputs are the union of theirs (a body for one model sent to another is schema-valid and gets 400).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.engine import Engine
from service.models import INPUT_LIMIT, ServedModel
from service.schemas import LEVEL_AND_BUDGET
from service.v2_schemas import V2InferRequest, V2InferResponse

V2_BATCHES = 4
NUMBER = {"type": "number", "exclusiveMinimum": -INPUT_LIMIT, "exclusiveMaximum": INPUT_LIMIT}
_NATIVE = "/v1/models/{name}/predict"
_V2 = "/v2/models/{name}/infer"
Schema = dict[str, Any]


def install_openapi(app: FastAPI, engine: Engine) -> None:
    """Serve the narrowed document once `engine` is ready (the generic one before)."""
    generic: Callable[[], Schema] = app.openapi  # FastAPI's, as edited by service.errors
    narrowed: list[Schema] = []

    def openapi() -> Schema:
        schema = generic()
        if "V2InferRequest" not in schema["components"]["schemas"]:
            add_v2_components(schema)
        if not engine.ready:
            return schema
        if not narrowed:
            narrowed.append(narrow(copy.deepcopy(schema), list(engine.models.values())))
        return narrowed[0]

    app.openapi = openapi  # type: ignore[method-assign]


def add_v2_components(schema: Schema) -> None:
    """The v2 request and response models, as components the infer route refers to."""
    components = schema["components"]["schemas"]
    for model in (V2InferRequest, V2InferResponse):
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc


def narrow(schema: Schema, models: list[ServedModel]) -> Schema:
    names = sorted(m.name for m in models)
    for path in schema["paths"].values():
        for op in path.values():
            for param in op.get("parameters", []):
                if param["name"] == "name" and param["in"] == "path":
                    param["schema"] = {"type": "string", "enum": names}
    native = schema["paths"][_NATIVE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = native["properties"]
    inputs = props.pop("inputs")  # every row alike: all nested or all flat
    props["inputs"] = {
        "description": inputs.get("description", ""),
        "anyOf": [{"type": "array", "items": row, "minItems": 1} for m in models for row in _rows(m)],
    }
    props["sparsity_level"] = _level(models)
    props["latency_budget_ms"] = _budget_ms()
    components = schema["components"]["schemas"]
    components["V2InputTensor"] = {"anyOf": [_v2_tensor(m) for m in models]}
    outputs = sorted({o.name for m in models for o in m.manifest.outputs})
    requested = components["V2RequestedOutput"]
    requested["properties"]["name"] = {"type": "string", "enum": outputs}
    requested["properties"]["parameters"] = {
        "anyOf": [{"$ref": "#/components/schemas/V2OutputParameters"}, {"type": "null"}]
    }
    components["V2OutputParameters"]["not"] = {"required": ["classification"]}  # unsupported: 400
    params = components["V2InferParameters"]
    params["properties"]["sparsity_level"] = _level(models)
    params["properties"]["latency_budget_ms"] = _budget_ms()
    params["not"] = LEVEL_AND_BUDGET
    return schema


def _rows(model: ServedModel) -> list[Schema]:
    """One native input row: nested to the model's shape, or flat."""
    shape = model.manifest.input.shape[1:]
    nested: Schema = NUMBER
    for d in reversed(shape):
        nested = {"type": "array", "items": nested, "minItems": d, "maxItems": d}
    flat = {"type": "array", "items": NUMBER, "minItems": math.prod(shape), "maxItems": math.prod(shape)}
    return [nested] if len(shape) == 1 else [nested, flat]


def _v2_tensor(model: ServedModel) -> Schema:
    spec = model.manifest.input
    size = math.prod(spec.shape[1:])
    batches = [
        {
            "properties": {
                "shape": {"const": [n, *spec.shape[1:]]},
                "data": {"type": "array", "items": NUMBER, "minItems": n * size, "maxItems": n * size},
            }
        }
        for n in range(1, V2_BATCHES + 1)
    ]
    return {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"const": spec.name},
            "datatype": {"const": spec.datatype},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": NUMBER},
            "parameters": {  # binary_data_size: only with the binary extension
                "type": "object",
                "not": {
                    "required": ["binary_data_size"],
                    "properties": {"binary_data_size": {"not": {"type": "null"}}},
                },
            },
        },
        "anyOf": batches,
    }


def _level(models: list[ServedModel]) -> Schema:
    names = sorted({lv.name for m in models for lv in m.levels})
    fractions = sorted({lv.level.keep_fraction for m in models for lv in m.levels})
    return {
        "anyOf": [
            {"type": "string", "enum": names},
            {"type": "number", "enum": fractions},
            {"type": "null"},
        ],
        "description": 'A level\'s name ("full", "1/2") or keep fraction (0.5).',
    }


def _budget_ms() -> Schema:
    return {
        "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 3.6e6}, {"type": "null"}],
        "description": "Run the most accurate level predicted to answer within this time.",
    }
