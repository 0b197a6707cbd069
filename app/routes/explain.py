"""Explanation route: occlusion sensitivity for one image, as JSON or as an overlay PNG."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response

from app.config import DEFAULT_EXPLAIN_GRID, MAX_EXPLAIN_GRID, MIN_EXPLAIN_GRID
from app.deps import RuntimeDep, require_api_key
from app.explain import BASELINES, DEFAULT_BASELINE
from app.request_context import LOG_FIELDS_KEY
from app.routes.predict import ERROR_RESPONSES, SINGLE_IMAGE_BODY
from app.schemas import Baseline, ExplainResponse
from app.uploads import read_single_upload
from model.metadata import NUM_CLASSES

router = APIRouter(prefix="/v1", tags=["explain"], dependencies=[Depends(require_api_key)])

PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"
# With a PNG answer these carry what the JSON would: the text alternative (percent-encoded UTF-8) and the region.
TEXT_HEADER = "X-Explanation-Text"
REGION_HEADER = "X-Explanation-Region"

Target = Annotated[
    int | None, Query(ge=0, le=NUM_CLASSES - 1, description="Class index to explain; the top-1 class when omitted")
]
Grid = Annotated[
    int, Query(ge=MIN_EXPLAIN_GRID, le=MAX_EXPLAIN_GRID, description="Occlusion cells per side (grid² model runs)")
]
BaselineQuery = Annotated[
    Baseline, Query(description=f"What replaces a hidden cell: {' or '.join(BASELINES)} (the model card's mean)")
]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": f"The explanation as JSON, or with `Accept: {PNG_MEDIA_TYPE}` the crop the model saw with "
        f"the heatmap and a legend (text alternative in `{TEXT_HEADER}`, percent-encoded)",
        "content": {PNG_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
}


def wants_png(accept: str) -> bool:
    """Whether the Accept header prefers the overlay PNG to JSON (the first of the two listed wins)."""
    media_types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    if PNG_MEDIA_TYPE not in media_types:
        return False
    return JSON_MEDIA_TYPE not in media_types or media_types.index(PNG_MEDIA_TYPE) < media_types.index(JSON_MEDIA_TYPE)


@router.post("/explain", response_model=ExplainResponse, responses=_RESPONSES, openapi_extra=SINGLE_IMAGE_BODY)
async def explain_image(
    request: Request,
    runtime: RuntimeDep,
    target: Target = None,
    grid: Grid = DEFAULT_EXPLAIN_GRID,
    baseline: BaselineQuery = DEFAULT_BASELINE,
) -> ExplainResponse | Response:
    """Which parts of the image drove the prediction: occlusion sensitivity over a grid of cells."""
    upload = await read_single_upload(request)
    png = wants_png(request.headers.get("accept", ""))
    explained = await runtime.explain(upload.data, target=target, grid=grid, baseline=baseline, overlay=png)
    result = explained.response
    setattr(
        request.state,
        LOG_FIELDS_KEY,
        {
            "image_bytes": len(upload.data),
            "explain_rows": result.timing_ms.rows,
            "timing_ms": result.timing_ms.model_dump(),
        },
    )
    if explained.overlay_png is None:
        return result
    headers = {TEXT_HEADER: quote(result.text), REGION_HEADER: result.region or "none"}
    return Response(explained.overlay_png, media_type=PNG_MEDIA_TYPE, headers=headers)
