"""Getting image bytes out of a multipart body (app/uploads.py), however the body is split into chunks."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.types import Message

from app.errors import InvalidParameterError, PayloadTooLargeError, ServiceError
from app.uploads import MAX_FORM_FIELDS, Upload, read_batch_uploads, read_single_upload

BOUNDARY = "test-boundary-7d3c"
# Every byte value, and the delimiter's own pieces inside the data: "\r\n--" and a prefix of the boundary.
PHOTO = bytes(range(256)) * 64 + f"\r\n--{BOUNDARY[:-1]}x\r\n--".encode() + bytes(range(255, -1, -1)) * 64


def file_part(data: bytes, name: str = "file", filename: str = "cat.jpg") -> bytes:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/jpeg'
    return head.encode() + b"\r\n\r\n" + data


def text_part(value: bytes, name: str) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode() + b"\r\n\r\n" + value


def multipart_body(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def request(body: bytes, cuts: list[int] | None = None, content_type: str | None = None) -> Request:
    """A request whose body arrives in pieces, split at `cuts`."""
    edges = [0, *sorted(cut for cut in cuts or [] if 0 < cut < len(body)), len(body)]
    messages: list[Message] = [
        {"type": "http.request", "body": body[start:end], "more_body": end < len(body)}
        for start, end in itertools.pairwise(edges)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    kind = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", kind.encode())]}
    return Request(scope, receive)


def single(body: bytes, cuts: list[int] | None = None, content_type: str | None = None) -> Upload:
    return asyncio.run(read_single_upload(request(body, cuts, content_type)))


def batch(body: bytes, max_files: int) -> list[Upload]:
    return asyncio.run(read_batch_uploads(request(body), max_files))


def refusal(body: bytes, content_type: str | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        single(body, content_type=content_type)
    return raised.value


@pytest.mark.parametrize("chunk", [1, 3, 70, 4096, 1 << 20])
def test_the_file_comes_back_byte_for_byte_in_chunks_of_any_size(chunk: int) -> None:
    body = multipart_body(file_part(PHOTO))
    upload = single(body, list(range(chunk, len(body), chunk)))
    assert upload == Upload(filename="cat.jpg", data=PHOTO)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(multipart_body(file_part(PHOTO))) - 1), max_size=12))
def test_the_file_comes_back_byte_for_byte_wherever_the_chunks_split(cuts: list[int]) -> None:
    assert single(multipart_body(file_part(PHOTO)), cuts).data == PHOTO


def test_other_fields_are_ignored_and_files_keep_their_order() -> None:
    body = multipart_body(
        text_part(b"a note", "note"),
        file_part(b"first", "files", "1.jpg"),
        file_part(b"elsewhere", "other", "x.jpg"),
        file_part(b"second", "files", "../../2.jpg"),
    )
    assert batch(body, max_files=3) == [Upload("1.jpg", b"first"), Upload("2.jpg", b"second")]


def test_an_empty_filename_is_still_a_file() -> None:
    assert single(multipart_body(file_part(PHOTO, filename=""))) == Upload(filename=None, data=PHOTO)


def test_text_in_the_image_field_is_refused() -> None:
    error = refusal(multipart_body(text_part(b"not a file", "file")))
    assert isinstance(error, InvalidParameterError)
    assert error.message == "the multipart field 'file' must be a file, not text"


def test_more_files_than_allowed_is_413() -> None:
    body = multipart_body(*(file_part(b"x", "files", f"{index}.jpg") for index in range(3)))
    with pytest.raises(PayloadTooLargeError, match=r"^at most 2 image\(s\) per request$"):
        batch(body, max_files=2)


def test_more_text_fields_than_allowed_is_refused() -> None:
    error = refusal(multipart_body(*(text_part(b"x", f"field{index}") for index in range(MAX_FORM_FIELDS + 1))))
    assert isinstance(error, InvalidParameterError)
    assert error.message == f"malformed multipart body: more than {MAX_FORM_FIELDS} fields; send only the image"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param(
            multipart_body(file_part(PHOTO)),
            "multipart/form-data",
            "malformed multipart body: the Content-Type has no boundary",
            id="no-boundary",
        ),
        pytest.param(
            multipart_body(b"Content-Disposition: form-data\r\n\r\nx"),
            None,
            "malformed multipart body: a part has no name in its Content-Disposition",
            id="no-name",
        ),
        pytest.param(
            multipart_body(b"X-Padding: " + b"p" * 8192 + b"\r\n" + file_part(PHOTO)),
            None,
            "malformed multipart body: not valid multipart/form-data",
            id="header-line-over-python-multipart's-limit",
        ),
        pytest.param(
            f"--{BOUNDARY}\r\nno colon here\r\n\r\n".encode(),
            None,
            "malformed multipart body: not valid multipart/form-data",
            id="bad-header-line",
        ),
    ],
)
def test_malformed_bodies_are_invalid_parameters(body: bytes, content_type: str | None, message: str) -> None:
    error = refusal(body, content_type)
    assert isinstance(error, InvalidParameterError)
    assert error.message == message


def test_a_part_cut_off_before_its_closing_boundary_is_not_an_upload() -> None:
    body = multipart_body(file_part(PHOTO), close=False)[:-10]
    error = refusal(body)
    assert error.message == "send exactly one image in the multipart field 'file' (got 0)"
