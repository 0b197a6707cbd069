"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import RuntimeDep
from app.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}})
async def get_metrics(runtime: RuntimeDep) -> Response:
    """Prometheus metrics: requests, stage latencies, batch sizes, queue depth, model info."""
    return Response(runtime.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)
