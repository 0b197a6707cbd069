"""Getting image bytes out of a request: a raw body, or multipart fields `file` / `files`."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import PureWindowsPath
from tempfile import SpooledTemporaryFile

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.errors import InvalidParameterError, PayloadTooLargeError, UnsupportedMediaTypeError

SINGLE_FIELD = "file"
BATCH_FIELD = "files"
RAW_BODY_TYPES = ("application/octet-stream",)
MAX_FORM_FIELDS = 16
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


async def _parsed_form(request: Request, max_files: int) -> FormData:
    async with contextlib.aclosing(request.stream()) as stream:
        parser = MultiPartParser(request.headers, stream, max_files=max_files, max_fields=MAX_FORM_FIELDS)
        # Parts stay in memory, never spooled to disk: the memory budget has counted the body (twice, for
        # this), while four stalled uploads spooled to the pod's 64 MiB /tmp would get it evicted. The body-size
        # limit bounds each part.
        parser.spool_max_size = sys.maxsize
        return await parser.parse()


def _part_bytes(upload: UploadFile) -> bytes:
    """A file part's bytes. Parts stay in memory (`_parsed_form`), in the BytesIO inside Starlette's spooled file:
    its `getvalue()` hands over that buffer, where `read()` would copy it (about 2 ms for a 3 MB photo, most of it
    faulting in fresh pages)."""
    buffer = upload.file._file if isinstance(upload.file, SpooledTemporaryFile) else None
    if isinstance(buffer, io.BytesIO):
        return buffer.getvalue()
    upload.file.seek(0)
    return upload.file.read()


async def _multipart_files(request: Request, field: str, max_files: int) -> list[Upload]:
    try:
        form = await _parsed_form(request, max_files)
    except MultiPartException as error:
        # Starlette's multipart limits and syntax errors, as domain errors.
        if "Too many files" in error.message:
            raise PayloadTooLargeError(f"at most {max_files} image(s) per request") from None
        raise InvalidParameterError(f"malformed multipart body: {error.message}") from None
    try:
        uploads = []
        for value in form.getlist(field):
            if not isinstance(value, UploadFile):
                raise InvalidParameterError(f"the multipart field {field!r} must be a file, not text")
            uploads.append(Upload(filename=safe_filename(value.filename), data=_part_bytes(value)))
        return uploads
    finally:
        # Closes the spooled temporary files on every path, errors included.
        await form.close()
