"""Images made with Pillow for the app tests: structured scenes, encoded files, and files cut short."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
GREEN: RGB = (0, 255, 0)
BLUE: RGB = (0, 0, 255)
WHITE: RGB = (255, 255, 255)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """Colour gradients with seeded ellipses, rectangles and a diagonal: content a resize or crop error would change."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([255 * x / width, 255 * y / height, 255 * (1 - x / width) * (y / height)], axis=-1)
    image = Image.fromarray(gradient.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        right = left + int(rng.integers(max(1, width // 20), max(2, width // 3)))
        bottom = top + int(rng.integers(max(1, height // 20), max(2, height // 3)))
        colour = (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))
        if rng.integers(0, 2):
            draw.ellipse((left, top, right, bottom), fill=colour)
        else:
            draw.rectangle((left, top, right, bottom), fill=colour)
    draw.line((0, 0, width, height), fill=WHITE, width=max(1, width // 100))
    return image


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def scene_bytes(width: int, height: int, image_format: str = "JPEG", seed: int = 0, **params: object) -> bytes:
    return encode(scene(width, height, seed), image_format, **params)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB but whose pixel data stops after a few bytes.

    Pillow reads the size from it; decoding it fails, so a size check that rejects it never decoded it.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))


def pillow_decode_error(data: bytes) -> str:
    """What Pillow itself says when it fully decodes `data` (first line), to compare error messages with."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        return str(error).splitlines()[0]
    raise AssertionError("Pillow decoded the data; the test needs a broken image")
