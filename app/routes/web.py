"""The single-page demo UI at `/`: plain HTML/CSS/JS shipped in app/static, no build step."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["web"], include_in_schema=False)

PAGE_RESOURCE = "static/index.html"


@router.get("/", response_class=HTMLResponse)
async def get_page() -> HTMLResponse:
    """The upload page."""
    return HTMLResponse(files("app").joinpath(PAGE_RESOURCE).read_text(encoding="utf-8"))
