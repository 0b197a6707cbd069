"""The upload page at `/`: plain HTML/CSS/JS shipped in app/static, no build step, nothing fetched from elsewhere."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

router = APIRouter(tags=["web"], include_in_schema=False)

PAGE_FILE = "index.html"
# The only files served from /static: names from the URL are looked up here and never reach the filesystem.
STATIC_MEDIA_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page may only talk to this service: a stray external URL fails loudly in the browser (and the browser test).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSET_HEADERS = {"X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {**_ASSET_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


@cache
def read_static_file(name: str) -> bytes:
    """The bytes of one file in app/static, read once per process."""
    return files("app").joinpath("static").joinpath(name).read_bytes()


@router.get("/")
async def get_page() -> Response:
    """The upload page."""
    return Response(read_static_file(PAGE_FILE), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get("/static/{name}")
async def get_static_file(name: str) -> Response:
    """The page's stylesheet, script and icon."""
    media_type = STATIC_MEDIA_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file named {name!r}")
    return Response(read_static_file(name), media_type=media_type, headers=_ASSET_HEADERS)
