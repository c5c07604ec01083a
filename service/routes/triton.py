"""Triton's model configuration and statistics extensions, and the served-model list kserve's
client reads. Included before routes.v2, so `/v2/models/stats` is not read as a model named
"stats". Per-level figures live under Triton-shaped keys: `parameters` in the config,
`sparsity_levels` in each statistics entry."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends

from service.budget import MAX_PRIORITY
from service.engine import Engine
from service.errors import error_docs
from service.model_stats import model_stats
from service.models import ServedModel
from service.routes.deps import engine

router = APIRouter(tags=["Triton extensions"])
_MODEL = "/v2/models/{name}"
_VERSIONED = "/v2/models/{name}/versions/{version}"

_LIST_EXAMPLE = {"models": ["digits"]}
_STATS_EXAMPLE = {
    "model_stats": [
        {
            "name": "digits",
            "version": "1",
            "last_inference": 1764632000000,
            "inference_count": 12,
            "execution_count": 9,
            "inference_stats": {"success": {"count": 10, "ns": 4200000}, "fail": {"count": 0, "ns": 0}},
            "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 8, "ns": 800000}}],
            "sparsity_levels": {"full": {"inference_count": 12, "execution_count": 9}},
        }
    ]
}
_CONFIG_EXAMPLE = {
    "name": "digits",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 64,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [8, 8]}],
    "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}],
    "dynamic_batching": {"max_queue_delay_microseconds": 0, "priority_levels": MAX_PRIORITY},
    "parameters": {"sparsity_levels": {"string_value": "full,1/2,1/4,1/8"}},
}


def _example(body: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": body}}}, **error_docs(*errors)}


@router.get("/v2/models", responses=_example(_LIST_EXAMPLE))
async def list_models(eng: Engine = Depends(engine)) -> dict[str, list[str]]:
    """The served model names (what kserve's client lists); none while loading."""
    return {"models": sorted(eng.models)}


@router.get("/v2/models/stats", responses=_example(_STATS_EXAMPLE, 503))
async def all_stats(eng: Engine = Depends(engine)) -> dict[str, Any]:
    """Triton's statistics of every served model version since it was loaded."""
    return {"model_stats": [_stats(m) for name in sorted(eng.versions) for m in _versions(eng, name)]}


@router.get(_MODEL + "/stats", responses=_example(_STATS_EXAMPLE, 404, 503))
@router.get(_VERSIONED + "/stats", include_in_schema=False)
async def stats(name: str, version: str | None = None, eng: Engine = Depends(engine)) -> dict[str, Any]:
    """Statistics of every version of the model, or of the one version named; per level under
    `sparsity_levels`. compute_input and compute_output are 0 ns: onnxruntime's run does both."""
    if version is not None:
        return {"model_stats": [_stats(eng.model_version(name, version))]}
    eng.model(name)
    return {"model_stats": [_stats(m) for m in _versions(eng, name)]}


@router.get(_MODEL + "/config", responses=_example(_CONFIG_EXAMPLE, 404, 503))
@router.get(_VERSIONED + "/config", include_in_schema=False)
async def config(name: str, version: str | None = None, eng: Engine = Depends(engine)) -> dict[str, Any]:
    """A Triton model configuration of the model version (default: the latest). Our levels, their
    profiles and the default level are under `parameters`, as Triton's `string_value`s (JSON text)."""
    model = eng.model_version(name, version)
    m, s = model.manifest, eng.settings
    levels = {
        f"level/{lv.name}": {
            "string_value": json.dumps(
                {
                    "keep_fraction": lv.level.keep_fraction,
                    "accuracy": lv.level.accuracy,
                    "file": lv.level.file,
                    "latency_ms": dict(lv.profile.latency_ms),
                    "provider": lv.runner.provider,
                }
            )
        }
        for lv in model.levels
    }
    gpu = any(lv.runner.provider.startswith("CUDA") for lv in model.levels)
    return {
        "name": m.name,
        "version": m.version,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": s.max_batch_size,
        "input": [{"name": m.input.name, "data_type": "TYPE_FP32", "dims": m.input.shape[1:]}],
        "output": [{"name": o.name, "data_type": "TYPE_FP32", "dims": o.shape[1:]} for o in m.outputs],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(s.max_queue_delay_ms * 1000),
            "preserve_ordering": False,
            "priority_levels": MAX_PRIORITY,
            "default_priority_level": s.default_priority,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(s.request_timeout_ms * 1000),
                "allow_timeout_override": True,
                "max_queue_size": s.max_queue_size,
            },
        },
        "instance_group": [{"name": m.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}],
        "parameters": {
            "sparsity_levels": {"string_value": ",".join(lv.name for lv in model.levels)},
            "default_level": {"string_value": model.default_level},
            "labels": {"string_value": json.dumps(m.labels)},
            **levels,
        },
    }


def _versions(eng: Engine, name: str) -> list[ServedModel]:
    served = eng.versions.get(name, {})
    return [served[v] for v in sorted(served, key=int)]


def _stats(model: ServedModel) -> dict[str, Any]:
    return model_stats(model.name, model.manifest.version, [(lv.name, lv.stats) for lv in model.levels])
