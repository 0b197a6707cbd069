"""Liveness, readiness and a health summary; never behind auth, so probes always reach them."""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter

from app import __version__
from app.deps import RuntimeDep
from app.errors import ModelNotReadyError, ModelStuckError
from app.schemas import ErrorResponse, HealthResponse, InferencePlanInfo, LiveResponse, ReadyResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=LiveResponse, responses={503: {"model": ErrorResponse}})
async def get_liveness(runtime: RuntimeDep) -> LiveResponse:
    """The process is up and serving HTTP; 503 (restart it) if the model is stuck or failed to warm up."""
    problem = runtime.liveness_problem()
    if problem is not None:
        raise ModelStuckError(problem)
    return LiveResponse()


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def get_readiness(runtime: RuntimeDep) -> ReadyResponse:
    """The model is loaded and warmed up; 503 before that and while draining."""
    if not runtime.ready:
        raise ModelNotReadyError("the model is loading, warming up or the server is draining")
    return ReadyResponse()


@router.get("", response_model=HealthResponse)
async def get_health(runtime: RuntimeDep) -> HealthResponse:
    """Status, active execution providers, model summary, inference plan, uptime and version."""
    model = runtime.model
    return HealthResponse(
        status="ready" if runtime.ready else "starting",
        version=__version__,
        uptime_s=round(time.monotonic() - runtime.started_at, 3),
        providers=model.providers.active,
        requested_providers=model.providers.requested,
        model=runtime.model_summary(),
        inference=InferencePlanInfo(**dataclasses.asdict(runtime.plan)),
        warnings=model.warnings,
    )
