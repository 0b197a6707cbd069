"""Builds the app: lifespan, middleware, routers, error handlers. Nothing runs at import time."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.budget import MemoryBudget
from app.config import Settings, get_settings
from app.deps import RUNTIME_STATE_KEY
from app.errors import install_error_handlers
from app.inference import OnnxModel, load_model
from app.limits import RequestBodyLimitsMiddleware
from app.metrics import Metrics
from app.request_context import RequestContextMiddleware, UnexpectedErrorMiddleware
from app.routes import explain, health, metrics, models, predict, v2, web
from app.runtime import Runtime

logger = logging.getLogger(__name__)

# Said at startup, so an open API is never a surprise.
AUTHENTICATION_LOG = {
    "on": "API key authentication is on: predictions need `Authorization: Bearer <ALEXNET_API_KEY>`",
    "off": "API key authentication is off: anyone who can reach the server can call the API (set ALEXNET_API_KEY)",
}

DESCRIPTION = (
    "ImageNet-1k classification with AlexNet (BVLC release, or torchvision's variant) on onnxruntime. "
    "POST an image to /v1/predict; check /v1/model for what is being served."
)


def create_app(
    settings: Settings | None = None,
    drain: threading.Event | None = None,
    model: OnnxModel | None = None,
    fatal: threading.Event | None = None,
) -> FastAPI:
    """The ASGI app. `uvicorn --factory app.main:create_app` calls this with settings from the environment.

    `python -m app` passes a `model` it has already loaded, so a model that cannot be served stops the
    process with one clear line before the server starts; otherwise the lifespan loads it.
    """
    settings = settings or get_settings()
    app_metrics = Metrics()
    # One budget for the process: the middleware reserves bodies in it, the runtime charges decoding images.
    budget = MemoryBudget(settings.memory_budget_bytes)
    app_metrics.track_memory(budget.limit_bytes, lambda: budget.in_flight_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        logger.info(AUTHENTICATION_LOG["on" if settings.api_key is not None else "off"])
        # A model that cannot be served (missing, corrupt, REQUIRE_* not met) fails startup here.
        served = model if model is not None else await anyio.to_thread.run_sync(load_model, settings)
        runtime = Runtime(settings, served, app_metrics, drain, fatal, budget=budget)
        await runtime.start()
        try:
            yield {RUNTIME_STATE_KEY: runtime}
        finally:
            await runtime.stop()
            logger.info("shutdown complete")

    app = FastAPI(
        title="alexnet-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    # Added first = innermost: an unexpected error's 500 then passes through all the others (CORS, request ID).
    app.add_middleware(UnexpectedErrorMiddleware)
    # Added last = outermost: request IDs and metrics cover every response, 413s, 503s and 408s included.
    app.add_middleware(
        RequestBodyLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        budget=budget,
        read_timeout_s=settings.body_read_timeout_s,
        metrics=app_metrics,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Inference-Header-Content-Length"],
            expose_headers=[
                "X-Request-ID",
                "Server-Timing",
                "Retry-After",
                "Inference-Header-Content-Length",
                explain.TEXT_HEADER,
                explain.REGION_HEADER,
            ],
        )
    app.add_middleware(RequestContextMiddleware, metrics=app_metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(explain.router)
    app.include_router(metrics.router)
    app.include_router(v2.router)
    app.include_router(web.router)
    return app
