"""Typed dependencies: how routes get what the lifespan built."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import UnauthorizedError
from app.runtime import Runtime

RUNTIME_STATE_KEY = "runtime"


# Dependencies are `async def` though they never await: FastAPI runs sync ones on a thread per request.
async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.state, RUNTIME_STATE_KEY, None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app's lifespan did not run; start it with `with TestClient(app)` or uvicorn")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_bearer = HTTPBearer(auto_error=False, description="Required only when ALEXNET_API_KEY is set")


async def require_api_key(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = runtime.settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("missing or wrong API key; send `Authorization: Bearer <ALEXNET_API_KEY>`")
