"""A corpus of hostile and odd inputs against the real server: each gets its expected status and code, never a 5xx.

Image bodies go both as the raw body and as the multipart field `file` (whose part claims image/jpeg whatever the
bytes are: the server must judge by magic bytes). Request shapes (Content-Types, multipart layouts, batches,
parameters) have their own table. After every request the server must still be alive and ready.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.app.live_server import LiveServer
from tests.app.sample_images import encode, png_header_only, scene
from tests.reliability.hostile_inputs import (
    animated_gif,
    avif_header,
    cmyk_jpeg,
    elf_header,
    exif_rotated_jpeg,
    float_tiff,
    gif_javascript_polyglot,
    html,
    icon,
    jpeg_claiming_size,
    jpeg_with_metadata,
    jpeg_with_trailing_garbage,
    multi_page_tiff,
    one_bit_png,
    palette_transparent_png,
    pdf,
    pe_header,
    plain_png,
    png_bomb,
    png_html_polyglot,
    png_with_bad_crc,
    png_zip_polyglot,
    random_bytes,
    sixteen_bit_png,
    small_jpeg,
    small_png,
    svg,
    truncated,
)
from tests.reliability.server_support import AUTH_HEADERS, assert_healthy

pytestmark = pytest.mark.slow

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_BATCH_IMAGES = 32
BODY_LIMIT_MARGIN = 4096
TOP5 = 5
# What a response must never reveal: tracebacks, source paths, object reprs with heap addresses.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|/usr/|site-packages| object at 0x[0-9a-f]+")

OK = 200
INVALID_IMAGE = (400, "invalid_image")
UNSUPPORTED = (415, "unsupported_media_type")
IMAGE_TOO_LARGE = (413, "image_too_large")
PAYLOAD_TOO_LARGE = (413, "payload_too_large")
INVALID_PARAMETER = (422, "invalid_parameter")
UNAUTHORIZED = (401, "unauthorized")


@dataclass(frozen=True)
class ImageCase:
    """Bytes sent as an image, and what the server must answer: 200 with a prediction, or (status, code)."""

    name: str
    build: Callable[[], bytes]
    expected: int | tuple[int, str]


def _webp() -> bytes:
    return encode(scene(64, 64), "WEBP")


def _bmp() -> bytes:
    return encode(scene(64, 64), "BMP")


def _tiff() -> bytes:
    return encode(scene(64, 64), "TIFF")


IMAGE_CASES = [
    # Not images at all: empty, noise, documents, executables, formats outside the allowlist.
    ImageCase("zero bytes", lambda: b"", INVALID_IMAGE),
    ImageCase("random bytes", random_bytes, UNSUPPORTED),
    ImageCase("plain text", lambda: b"hello, this is not an image\n" * 8, UNSUPPORTED),
    ImageCase("html", html, UNSUPPORTED),
    ImageCase("svg with a script", svg, UNSUPPORTED),
    ImageCase("pdf", pdf, UNSUPPORTED),
    ImageCase("elf executable header", elf_header, UNSUPPORTED),
    ImageCase("windows pe header", pe_header, UNSUPPORTED),
    ImageCase("ico (pillow reads it, the allowlist does not)", icon, UNSUPPORTED),
    ImageCase("avif header", avif_header, UNSUPPORTED),
    # An accepted signature with nothing, or nonsense, behind it.
    ImageCase("jpeg signature alone", lambda: b"\xff\xd8\xff", INVALID_IMAGE),
    ImageCase("text starting with BM", lambda: b"BMW is a car, not a bitmap", INVALID_IMAGE),
    # Truncated and corrupt files: refused, never padded.
    ImageCase("truncated jpeg", lambda: truncated(small_jpeg()), INVALID_IMAGE),
    ImageCase("truncated png", lambda: truncated(small_png()), INVALID_IMAGE),
    ImageCase("truncated gif", lambda: truncated(animated_gif(), 0.3), INVALID_IMAGE),
    ImageCase("truncated webp", lambda: truncated(_webp()), INVALID_IMAGE),
    ImageCase("truncated bmp", lambda: truncated(_bmp()), INVALID_IMAGE),
    ImageCase("truncated tiff", lambda: truncated(_tiff()), INVALID_IMAGE),
    ImageCase("png header without pixel data", lambda: png_header_only(64, 64), INVALID_IMAGE),
    ImageCase("png with a corrupted ihdr crc", png_with_bad_crc, INVALID_IMAGE),
    # Bombs and oversized headers: refused from the header, before any pixel is decoded.
    ImageCase("png bomb 100000x100000", png_bomb, IMAGE_TOO_LARGE),
    ImageCase("png header 10000x10000", lambda: png_bomb(10_000, 10_000), IMAGE_TOO_LARGE),
    ImageCase("png header one row over the pixel limit", lambda: png_bomb(8000, 5001), IMAGE_TOO_LARGE),
    ImageCase("jpeg header claiming 65000x65000", lambda: jpeg_claiming_size(65_000, 65_000), IMAGE_TOO_LARGE),
    ImageCase("jpeg header one row over the pixel limit", lambda: jpeg_claiming_size(8000, 5001), IMAGE_TOO_LARGE),
    # Odd but valid: every mode and format the service promises to handle.
    ImageCase("cmyk jpeg", cmyk_jpeg, OK),
    ImageCase("16-bit greyscale png", sixteen_bit_png, OK),
    ImageCase("1-bit png", one_bit_png, OK),
    ImageCase("palette png with transparency", palette_transparent_png, OK),
    ImageCase("animated gif", animated_gif, OK),
    ImageCase("exif-rotated jpeg", exif_rotated_jpeg, OK),
    ImageCase("progressive jpeg", lambda: small_jpeg(progressive=True), OK),
    ImageCase("webp", _webp, OK),
    ImageCase("bmp", _bmp, OK),
    ImageCase("tiff", _tiff, OK),
    ImageCase("multi-page tiff", multi_page_tiff, OK),
    ImageCase("32-bit float tiff", float_tiff, OK),
    ImageCase("1x1 png", lambda: plain_png(1, 1), OK),
    ImageCase("20000x1 png", lambda: plain_png(20_000, 1), OK),
    ImageCase("1x20000 png", lambda: plain_png(1, 20_000), OK),
    ImageCase("jpeg with garbage after the end-of-image marker", jpeg_with_trailing_garbage, OK),
    # Polyglots: valid images that are also something else; the image part is what counts.
    ImageCase("png followed by a zip archive", png_zip_polyglot, OK),
    ImageCase("png followed by html", png_html_polyglot, OK),
    ImageCase("gif that is also javascript", gif_javascript_polyglot, OK),
    # Metadata blocks that make the body huge: under the body limit it is just a JPEG, over it a 413.
    ImageCase(
        "jpeg with huge metadata, just under the body limit",
        lambda: jpeg_with_metadata(DEFAULT_MAX_BODY_BYTES - BODY_LIMIT_MARGIN),
        OK,
    ),
    ImageCase(
        "jpeg with huge metadata, just over the body limit",
        lambda: jpeg_with_metadata(DEFAULT_MAX_BODY_BYTES + BODY_LIMIT_MARGIN),
        PAYLOAD_TOO_LARGE,
    ),
]


def _raw(data: bytes) -> dict[str, Any]:
    return {"content": data, "headers": {"Content-Type": "application/octet-stream"}}


def _multipart(data: bytes) -> dict[str, Any]:
    # The part claims to be a JPEG whatever it holds: the server must not believe it.
    return {"files": {"file": ("upload.jpg", data, "image/jpeg")}}


TRANSPORTS: dict[str, Callable[[bytes], dict[str, Any]]] = {"raw body": _raw, "multipart": _multipart}


def authorized(request: dict[str, Any]) -> dict[str, Any]:
    """The request with the shared server's bearer token added to its headers."""
    return request | {"headers": AUTH_HEADERS | request.get("headers", {})}


@pytest.fixture(scope="module")
def client(shared_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.url, timeout=60) as http:
        yield http


def assert_safe_error(response: httpx.Response, status: int, code: str) -> None:
    """The standard error body with `code`, and a message that tells the user something but leaks nothing."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert sorted(body["error"]) == ["code", "message"], body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message.strip(), body
    assert not LEAKS.search(message), f"the message leaks internals: {message!r}"


def assert_prediction(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["top5"]) == TOP5
    assert len(body["predictions"]) == TOP5
    assert body["top1"] == body["top5"][0]


def assert_answer(response: httpx.Response, expected: int | tuple[int, str]) -> None:
    assert response.headers.get("x-request-id"), "every response carries a request ID"
    if isinstance(expected, tuple):
        assert_safe_error(response, *expected)
    else:
        assert_prediction(response)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_hostile_image_gets_its_expected_answer(
    shared_server: LiveServer, client: httpx.Client, case: ImageCase, transport: str
) -> None:
    response = client.post("/v1/predict", **authorized(TRANSPORTS[transport](case.build())))
    assert_answer(response, case.expected)
    assert_healthy(shared_server)


@dataclass(frozen=True)
class RequestCase:
    """A whole request (route and httpx keyword arguments) and what the server must answer."""

    name: str
    path: str
    request: Callable[[], dict[str, Any]]
    expected: int | tuple[int, str]
    method: str = "POST"
    with_token: bool = True


def _jpeg_as(content_type: str | None) -> dict[str, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return {"content": small_jpeg(), "headers": headers}


REQUEST_CASES = [
    # The client's Content-Type never decides the format; it only says raw body or multipart.
    RequestCase(
        "png bytes labelled image/jpeg",
        "/v1/predict",
        lambda: {"content": small_png(), "headers": {"Content-Type": "image/jpeg"}},
        OK,
    ),
    RequestCase("jpeg bytes labelled image/gif", "/v1/predict", lambda: _jpeg_as("image/gif"), OK),
    RequestCase("jpeg bytes labelled text/plain", "/v1/predict", lambda: _jpeg_as("text/plain"), UNSUPPORTED),
    RequestCase(
        "jpeg bytes labelled application/json", "/v1/predict", lambda: _jpeg_as("application/json"), UNSUPPORTED
    ),
    RequestCase("jpeg bytes without a Content-Type", "/v1/predict", lambda: _jpeg_as(None), UNSUPPORTED),
    RequestCase(
        "jpeg bytes labelled multipart",
        "/v1/predict",
        lambda: _jpeg_as("multipart/form-data; boundary=xyz"),
        INVALID_PARAMETER,
    ),
    RequestCase(
        "svg labelled image/svg+xml",
        "/v1/predict",
        lambda: {"content": svg(), "headers": {"Content-Type": "image/svg+xml"}},
        UNSUPPORTED,
    ),
    RequestCase(
        "html labelled image/png",
        "/v1/predict",
        lambda: {"content": html(), "headers": {"Content-Type": "image/png"}},
        UNSUPPORTED,
    ),
    # Multipart bodies of the wrong shape.
    RequestCase("multipart with no file", "/v1/predict", lambda: {"files": {"note": (None, b"hi")}}, INVALID_PARAMETER),
    RequestCase(
        "multipart with the image in another field",
        "/v1/predict",
        lambda: {"files": {"image": ("a.jpg", small_jpeg(), "image/jpeg")}},
        INVALID_PARAMETER,
    ),
    RequestCase(
        "multipart whose file field is text",
        "/v1/predict",
        lambda: {"files": {"file": (None, b"not a file")}},
        INVALID_PARAMETER,
    ),
    RequestCase(
        "multipart with two files",
        "/v1/predict",
        lambda: {
            "files": [("file", ("a.jpg", small_jpeg(), "image/jpeg")), ("file", ("b.png", small_png(), "image/png"))]
        },
        PAYLOAD_TOO_LARGE,
    ),
    RequestCase(
        "multipart without a boundary",
        "/v1/predict",
        lambda: {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
        INVALID_PARAMETER,
    ),
    RequestCase(
        "multipart that is garbage",
        "/v1/predict",
        lambda: {"content": random_bytes(512), "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}},
        INVALID_PARAMETER,
    ),
    RequestCase(
        "multipart with too many fields",
        "/v1/predict",
        lambda: {"files": [(f"field{index}", (None, b"x")) for index in range(40)]},
        INVALID_PARAMETER,
    ),
    # Batches.
    RequestCase("batch as a raw body", "/v1/predict/batch", lambda: _jpeg_as("image/jpeg"), UNSUPPORTED),
    RequestCase(
        "batch with no file",
        "/v1/predict/batch",
        lambda: {"files": {"note": (None, b"hi")}},
        INVALID_PARAMETER,
    ),
    RequestCase(
        "batch with one image too many",
        "/v1/predict/batch",
        lambda: {
            "files": [
                ("files", (f"{index}.jpg", small_jpeg(8, 8), "image/jpeg"))
                for index in range(DEFAULT_MAX_BATCH_IMAGES + 1)
            ]
        },
        PAYLOAD_TOO_LARGE,
    ),
    # Parameters, routes and methods.
    RequestCase("top_k 0", "/v1/predict?top_k=0", lambda: _jpeg_as("image/jpeg"), INVALID_PARAMETER),
    RequestCase("top_k 1001", "/v1/predict?top_k=1001", lambda: _jpeg_as("image/jpeg"), INVALID_PARAMETER),
    RequestCase("top_k not a number", "/v1/predict?top_k=five", lambda: _jpeg_as("image/jpeg"), INVALID_PARAMETER),
    RequestCase("unknown route", "/v1/../../etc/passwd", lambda: _jpeg_as("image/jpeg"), (404, "not_found")),
    RequestCase("GET on the prediction route", "/v1/predict", dict, (405, "method_not_allowed"), method="GET"),
    # Authentication: the prediction routes need the bearer token.
    RequestCase("no bearer token", "/v1/predict", lambda: _jpeg_as("image/jpeg"), UNAUTHORIZED, with_token=False),
    RequestCase(
        "wrong bearer token",
        "/v1/predict",
        lambda: {"content": small_jpeg(), "headers": {"Content-Type": "image/jpeg", "Authorization": "Bearer nope"}},
        UNAUTHORIZED,
        with_token=False,
    ),
    RequestCase(
        "basic auth instead of a bearer token",
        "/v1/predict/batch",
        lambda: {"files": {"files": ("a.jpg", small_jpeg(), "image/jpeg")}, "auth": ("user", "password")},
        UNAUTHORIZED,
        with_token=False,
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[case.name for case in REQUEST_CASES])
def test_odd_request_gets_its_expected_answer(
    shared_server: LiveServer, client: httpx.Client, case: RequestCase
) -> None:
    request = authorized(case.request()) if case.with_token else case.request()
    response = client.request(case.method, case.path, **request)
    assert_answer(response, case.expected)
    assert_healthy(shared_server)


def test_batch_echoes_only_base_names_and_fails_only_the_bad_slots(
    shared_server: LiveServer, client: httpx.Client
) -> None:
    uploads = [
        ("../../etc/passwd.png", small_png(), "passwd.png", OK),
        ("C:\\Windows\\System32\\evil.jpg", small_jpeg(), "evil.jpg", OK),
        ("..\\..\\boot.ini.gif", svg(), "boot.ini.gif", UNSUPPORTED),
        ("/tmp/bomb.png", png_bomb(), "bomb.png", IMAGE_TOO_LARGE),
        ("empty.jpg", b"", "empty.jpg", INVALID_IMAGE),
        ("cut.jpg", truncated(small_jpeg()), "cut.jpg", INVALID_IMAGE),
    ]
    files = [("files", (sent_name, data, "image/jpeg")) for sent_name, data, _, _ in uploads]
    response = client.post("/v1/predict/batch", files=files, headers=AUTH_HEADERS)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["filename"] for result in results] == [echoed for _, _, echoed, _ in uploads]
    for result, (_, _, _, expected) in zip(results, uploads, strict=True):
        if isinstance(expected, tuple):
            code = expected[1]
            assert result["result"] is None
            assert result["error"]["code"] == code, result
            assert not LEAKS.search(result["error"]["message"]), result
        else:
            assert result["error"] is None
            assert len(result["result"]["top5"]) == TOP5
    assert_healthy(shared_server)


def test_health_stays_open_without_a_token(client: httpx.Client) -> None:
    for path in ("/health/live", "/health/ready", "/health"):
        assert client.get(path).status_code == 200, path


def test_cors_stays_closed_by_default(client: httpx.Client) -> None:
    """Without ALEXNET_CORS_ORIGINS no origin is allowed: no preflight answer, no Access-Control-* headers."""
    origin = {"Origin": "https://attacker.example"}
    preflight = client.options("/v1/predict", headers=origin | {"Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 405
    headers = AUTH_HEADERS | origin | {"Content-Type": "image/jpeg"}
    response = client.post("/v1/predict", content=small_jpeg(), headers=headers)
    assert response.status_code == 200, response.text
    for answer in (preflight, response):
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")], answer.headers


def test_the_corpus_is_at_least_thirty_inputs() -> None:
    names = [case.name for case in IMAGE_CASES] + [case.name for case in REQUEST_CASES]
    assert len(set(names)) == len(names) >= 30
