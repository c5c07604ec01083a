"""Shared route helpers."""

from __future__ import annotations

from fastapi import Request

from service.engine import Engine, Inference


def engine_of(request: Request) -> Engine:
    eng = request.app.state.engine
    assert isinstance(eng, Engine)
    return eng


async def engine(request: Request) -> Engine:
    """The dependency form; async, or FastAPI would hop to its thread pool on every request. The
    inference routes call `engine_of` directly: dependency resolution costs more than it does."""
    return engine_of(request)


def timing(inference: Inference) -> dict[str, object]:
    """What every response says about the level that ran and the time spent (`budget_met` from
    the measured `server_ms`; call `Engine.answered` first)."""
    level, result = inference.level.level, inference.result
    info: dict[str, object] = {
        "sparsity_level": level.name,
        "keep_fraction": level.keep_fraction,
        "expected_accuracy": level.accuracy,
        "policy": inference.decision.policy,
        "predicted_ms": round(inference.decision.predicted_ms, 4),
        "server_ms": round(inference.server_ms, 4),
        "queue_ms": round(result.queue_s * 1000, 4),
        "compute_ms": round(result.compute_s * 1000, 4),
        "batch_size": result.batch_size,
    }
    if inference.budget_met is not None:
        info["budget_met"] = inference.budget_met
    return info
