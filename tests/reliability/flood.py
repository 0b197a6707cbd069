"""A flood of large uploads: one photo sent over and over, many at a time, each worker sending its next request as
soon as it has an answer. Shared by the memory-budget test (the real server) and the Docker test (the container).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

from tests.reliability.server_support import AUTH_HEADERS

BOUNDARY = "flood-boundary"
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
FLOOD_REQUESTS = 320
FLOOD_CONCURRENCY = 160
FLOOD_TIMEOUT_S = 150.0
PHOTO_SIZE = (4000, 3000)
# Sensor-like noise on a smooth colour field, at quality 100: about 15 MB, the size of the photo.
PHOTO_NOISE_SIGMA = 16.0


def multipart_body(field: str, data: bytes) -> bytes:
    """One image as a multipart body, built once so that each request sends the same bytes without a copy."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def twelve_megapixel_photo() -> bytes:
    """A 4000x3000 JPEG at quality 100, about 14 MB; the same bytes every time."""
    rng = np.random.default_rng(13)
    width, height = PHOTO_SIZE
    cells = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(cells).resize(PHOTO_SIZE, Image.Resampling.BICUBIC), dtype=np.float32)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(PHOTO_NOISE_SIGMA)
    pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


@dataclass(frozen=True)
class FloodForm:
    path: str
    content_type: str
    body: bytes


def flood_forms(photo: bytes) -> dict[str, FloodForm]:
    return {
        "raw": FloodForm("/v1/predict", "image/jpeg", photo),
        "multipart": FloodForm("/v1/predict", MULTIPART_TYPE, multipart_body("file", photo)),
        "batch": FloodForm("/v1/predict/batch", MULTIPART_TYPE, multipart_body("files", photo)),
    }


@dataclass
class FloodReport:
    outcomes: Counter[str]
    elapsed_s: float


async def flood(url: str, form: FloodForm) -> FloodReport:
    """FLOOD_REQUESTS uploads, FLOOD_CONCURRENCY at a time, each worker sending its next on an answer."""
    outcomes: Counter[str] = Counter()
    remaining = iter(range(FLOOD_REQUESTS))
    # A connection per request: a reused keep-alive connection that the server closed while idle would fail too,
    # and be confused with a refusal.
    headers = AUTH_HEADERS | {"Content-Type": form.content_type, "Connection": "close"}
    limits = httpx.Limits(max_connections=FLOOD_CONCURRENCY, max_keepalive_connections=FLOOD_CONCURRENCY)

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in remaining:
            try:
                response = await client.post(form.path, content=form.body, headers=headers)
            except httpx.TransportError as error:
                outcomes[f"transport error: {type(error).__name__}"] += 1
                continue
            if response.status_code == 200:
                outcomes["200"] += 1
            elif response.status_code == 503:
                code = response.json()["error"]["code"]
                outcomes[f"503 {code} retry-after={response.headers.get('retry-after')}"] += 1
            else:
                outcomes[f"{response.status_code} {response.text[:120]}"] += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=FLOOD_TIMEOUT_S) as client:
        async with asyncio.timeout(FLOOD_TIMEOUT_S):
            await asyncio.gather(*(worker(client) for _ in range(FLOOD_CONCURRENCY)))
    return FloodReport(outcomes, time.perf_counter() - started)
