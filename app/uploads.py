"""Getting image bytes out of a request: a raw body, or multipart fields `file` / `files`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PureWindowsPath

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app.errors import InvalidParameterError, PayloadTooLargeError, UnsupportedMediaTypeError

SINGLE_FIELD = "file"
BATCH_FIELD = "files"
RAW_BODY_TYPES = ("application/octet-stream",)
ACCEPTED_TYPES_HINT = "multipart/form-data, image/*, or application/octet-stream"


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


MAX_FILENAME_LENGTH = 255


def safe_filename(filename: str | None) -> str | None:
    """The client's filename reduced to a plain base name, since it is echoed back in responses."""
    if not filename:
        return None
    # PureWindowsPath splits on both / and \\, so "../../etc/passwd" and "C:\\x\\y.jpg" both lose their folders.
    name = PureWindowsPath(filename).name
    printable = "".join(character for character in name if character.isprintable())
    return printable[:MAX_FILENAME_LENGTH] or None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_raw(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in RAW_BODY_TYPES


async def read_single_upload(request: Request) -> Upload:
    media_type = _media_type(request)
    if _is_raw(media_type):
        return Upload(filename=None, data=await request.body())
    if media_type == "multipart/form-data":
        uploads = await _multipart_files(request, SINGLE_FIELD, max_files=1)
        if len(uploads) != 1:
            raise InvalidParameterError(
                f"send exactly one image in the multipart field {SINGLE_FIELD!r} (got {len(uploads)})"
            )
        return uploads[0]
    raise UnsupportedMediaTypeError(f"unsupported Content-Type {media_type or '(none)'!r}; send {ACCEPTED_TYPES_HINT}")


async def read_batch_uploads(request: Request, max_files: int) -> list[Upload]:
    media_type = _media_type(request)
    if media_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {media_type or '(none)'!r}; send multipart/form-data "
            f"with one or more {BATCH_FIELD!r} fields"
        )
    uploads = await _multipart_files(request, BATCH_FIELD, max_files=max_files)
    if not uploads:
        raise InvalidParameterError(f"send at least one image in the multipart field {BATCH_FIELD!r}")
    return uploads


async def _multipart_files(request: Request, field: str, max_files: int) -> list[Upload]:
    try:
        form = await request.form(max_files=max_files, max_fields=16)
    except HTTPException as error:
        # Starlette reports multipart limits and syntax errors as HTTP 400s; translate them to domain errors.
        if "Too many files" in str(error.detail):
            raise PayloadTooLargeError(f"at most {max_files} image(s) per request") from None
        raise InvalidParameterError(f"malformed multipart body: {error.detail}") from None
    try:
        uploads = []
        for value in form.getlist(field):
            if not isinstance(value, UploadFile):
                raise InvalidParameterError(f"the multipart field {field!r} must be a file, not text")
            uploads.append(Upload(filename=safe_filename(value.filename), data=await value.read()))
        return uploads
    finally:
        # Closes the spooled temporary files on every path, errors included.
        await form.close()
