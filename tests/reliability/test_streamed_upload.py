"""A 1 GiB upload is refused with 413 while it streams: the server's memory barely moves, and the upload stops early.

The body comes from a generator, so the client never holds it either. The server must answer 413 without
buffering the body, and close the connection instead of reading (and discarding) the rest of the gigabyte.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.app.live_server import LiveServer
from tests.reliability.server_support import (
    AUTH_HEADERS,
    MIB,
    PeakMemory,
    assert_healthy,
    sampled_peak_memory,
)

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

UPLOAD_BYTES = 1024 * MIB
CHUNK_BYTES = MIB
DEFAULT_MAX_BODY_BYTES = 20 * MIB
MAX_RSS_GROWTH_BYTES = 50 * MIB
# What may be in flight when the server stops reading: socket buffers and the chunks in the client's hands.
STOP_EARLY_SLACK_BYTES = 32 * MIB
# Often: the 413 comes within milliseconds, and any buffering would show only briefly.
RSS_SAMPLE_INTERVAL_S = 0.005
BOUNDARY = "reliability-boundary"
# The body starts like a JPEG, so nothing but its size can be held against it.
CHUNK = (b"\xff\xd8\xff\xe0" + bytes(CHUNK_BYTES))[:CHUNK_BYTES]


class CountingBody:
    """A generated body of `total` bytes (plus an optional head and tail) that counts what the client took."""

    def __init__(self, total: int, head: bytes = b"", tail: bytes = b"") -> None:
        self.total = total
        self.head = head
        self.tail = tail
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield self._count(self.head)
        for _ in range(self.total // CHUNK_BYTES):
            yield self._count(CHUNK)
        yield self._count(self.tail)

    def _count(self, chunk: bytes) -> bytes:
        self.sent += len(chunk)
        return chunk


def _raw_chunked() -> tuple[CountingBody, dict[str, str]]:
    return CountingBody(UPLOAD_BYTES), {"Content-Type": "application/octet-stream"}


def _raw_declared() -> tuple[CountingBody, dict[str, str]]:
    # Honest about the size: the server can refuse from the header alone, before reading a byte of body.
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(UPLOAD_BYTES)}
    return CountingBody(UPLOAD_BYTES), headers


def _multipart_chunked() -> tuple[CountingBody, dict[str, str]]:
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="huge.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return CountingBody(UPLOAD_BYTES, head, tail), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


UPLOADS = {
    "raw body, chunked, no Content-Length": _raw_chunked,
    "raw body, Content-Length 1 GiB": _raw_declared,
    "multipart, chunked, no Content-Length": _multipart_chunked,
}


@dataclass(frozen=True)
class RefusedUpload:
    response: httpx.Response
    sent: int
    memory: PeakMemory


@pytest.fixture(scope="module", params=sorted(UPLOADS))
def refused_upload(request: pytest.FixtureRequest, shared_server: LiveServer) -> RefusedUpload:
    """One 1 GiB upload, as the parameter says, with what the client sent and what the server's memory did."""
    body, headers = UPLOADS[request.param]()
    pid = shared_server.process.pid
    with httpx.Client(timeout=120) as client, sampled_peak_memory(pid, RSS_SAMPLE_INTERVAL_S) as memory:
        response = client.post(f"{shared_server.url}/v1/predict", content=body, headers=AUTH_HEADERS | headers)
    logger.info(
        "1 GiB upload (%s): %d, client sent %.1f MiB, server RSS %.1f -> peak %.1f MiB (%+.1f MiB)",
        request.param,
        response.status_code,
        body.sent / MIB,
        memory.before / MIB,
        memory.peak / MIB,
        memory.growth / MIB,
    )
    return RefusedUpload(response, body.sent, memory)


def test_one_gigabyte_upload_gets_413_while_server_memory_stays_flat(
    shared_server: LiveServer, refused_upload: RefusedUpload
) -> None:
    response = refused_upload.response
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {
            "code": "payload_too_large",
            "message": f"request body is over the limit of {DEFAULT_MAX_BODY_BYTES} bytes; send a smaller image",
        }
    }
    growth = refused_upload.memory.growth
    assert growth < MAX_RSS_GROWTH_BYTES, f"server RSS grew by {growth / MIB:.1f} MiB"
    assert_healthy(shared_server)


def test_one_gigabyte_upload_stops_early(refused_upload: RefusedUpload) -> None:
    """Refused means refused: the server closes the connection instead of reading the rest of the gigabyte."""
    sent = refused_upload.sent
    assert sent <= DEFAULT_MAX_BODY_BYTES + STOP_EARLY_SLACK_BYTES, (
        f"the client pushed {sent / MIB:.0f} MiB of a {UPLOAD_BYTES / MIB:.0f} MiB body before the server stopped "
        "reading it"
    )
