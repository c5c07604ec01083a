"""Operations: Prometheus metrics and recent-traffic statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from service.engine import Engine
from service.metrics import CONTENT_TYPE
from service.routes.deps import engine

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
async def metrics(eng: Engine = Depends(engine)) -> Response:
    """Prometheus text exposition (circuitserve_* series)."""
    return Response(eng.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/v1/stats")
async def stats(eng: Engine = Depends(engine)) -> dict[str, Any]:
    """Throughput over the last 10 s and 60 s, latency percentiles, level mix, queue depth."""
    return {"ready": eng.ready, **eng.stats.snapshot(eng.queue_depth())}
