"""Getting the image bytes out of a multipart part (app/uploads.py)."""

from __future__ import annotations

import io
import sys
from tempfile import SpooledTemporaryFile

from starlette.datastructures import UploadFile

from app.uploads import _part_bytes

PHOTO = bytes(range(256)) * 4096  # 1 MiB


def _spooled(max_size: int) -> SpooledTemporaryFile[bytes]:
    spooled: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(max_size=max_size)
    spooled.write(PHOTO)
    spooled.seek(0)
    return spooled


def test_a_part_kept_in_memory_is_handed_over_without_a_copy() -> None:
    with _spooled(sys.maxsize) as spooled:
        data = _part_bytes(UploadFile(file=spooled))  # type: ignore[arg-type]
        assert data == PHOTO
        assert isinstance(spooled._file, io.BytesIO)
        # BytesIO shares its buffer with the bytes getvalue() returned: the same object comes back again.
        assert data is spooled._file.getvalue()


def test_a_part_on_disk_is_read_from_its_start() -> None:
    with _spooled(1) as spooled:
        spooled.seek(100)
        assert not isinstance(spooled._file, io.BytesIO)
        assert _part_bytes(UploadFile(file=spooled)) == PHOTO  # type: ignore[arg-type]
