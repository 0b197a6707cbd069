"""Hostile and odd request bodies, built in memory: files that lie, bombs, polyglots, odd modes and sizes.

Each builder returns bytes; nothing is committed to the repository. The expected answers live in the tests.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.app.sample_images import encode, scene

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START_OF_FRAME = b"\xff\xc0"
JPEG_APP1 = b"\xff\xe1"
JPEG_APP15 = b"\xef"
JPEG_MAX_SEGMENT_PAYLOAD = 65533  # a segment's 2-byte length counts itself
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_90_CLOCKWISE = 6
SEED = 20240607


def small_jpeg(width: int = 64, height: int = 64, seed: int = 0, **params: object) -> bytes:
    return encode(scene(width, height, seed), "JPEG", **params)


def small_png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    return encode(scene(width, height, seed), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny, well-formed PNG (valid CRCs) whose IHDR claims `width` x `height` RGB, with a few zero rows of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * width + 1) * 4, level=9)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """A real small baseline JPEG whose start-of-frame header is patched to claim `width` x `height`."""
    data = bytearray(small_jpeg(16, 16))
    frame = data.index(JPEG_START_OF_FRAME)
    # SOF0: marker, length (2), precision (1), height (2), width (2).
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def png_with_bad_crc() -> bytes:
    data = bytearray(small_png())
    # The IHDR CRC sits right after signature (8), length (4), type (4) and IHDR data (13).
    data[8 + 4 + 4 + 13] ^= 0xFF
    return bytes(data)


def random_bytes(size: int = 4096) -> bytes:
    generator = random.Random(SEED)
    data = bytes(generator.getrandbits(8) for _ in range(size))
    # Never by chance one of the accepted signatures.
    return b"\x00" + data[1:]


def cmyk_jpeg() -> bytes:
    return encode(scene(64, 48).convert("CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 64, dtype=np.uint16).reshape(64, 64)
    return encode(Image.fromarray(ramp), "PNG")


def one_bit_png() -> bytes:
    return encode(scene(64, 64).convert("1"), "PNG")


def palette_transparent_png() -> bytes:
    palette = scene(64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(palette, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [scene(48, 48, seed).convert("P") for seed in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATED_90_CLOCKWISE
    return encode(scene(64, 32), "JPEG", exif=exif)


def jpeg_with_metadata(total_size: int) -> bytes:
    """A valid JPEG padded to `total_size` bytes with a maximal EXIF block, then application segments.

    EXIF itself fits one 64 KiB APP1 segment; the rest is APP15 segments, which decoders must skip.
    """
    exif = Image.Exif()
    exif[0x010E] = "A" * 60_000  # ImageDescription
    image = small_jpeg(32, 32, exif=exif)
    start_of_image, rest = image[:2], image[2:]
    padding = total_size - len(image)
    segments = []
    while padding > 4:
        payload = min(JPEG_MAX_SEGMENT_PAYLOAD, padding - 4)
        segments.append(b"\xff" + JPEG_APP15 + struct.pack(">H", payload + 2) + b"\x00" * payload)
        padding -= payload + 4
    body = start_of_image + b"".join(segments) + rest
    return body + b"\x00" * (total_size - len(body))


def jpeg_with_trailing_garbage() -> bytes:
    return small_jpeg() + random_bytes(2048)


def png_zip_polyglot() -> bytes:
    """A valid PNG with a ZIP archive appended: a PNG to image readers, an archive to unzip."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("payload.html", "<script>alert(document.domain)</script>")
    return small_png() + archive.getvalue()


def png_html_polyglot() -> bytes:
    return small_png() + b"<html><body><script>alert(document.domain)</script></body></html>"


def gif_javascript_polyglot() -> bytes:
    """A GIF that is also JavaScript: `GIF89a/*<gif>*/=1;alert(1);` (the logical width is the bytes `/*`)."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:8] = b"/*"
    assert b"*/" not in data
    return bytes(data) + b"*/=1;alert(document.domain);"


def plain_png(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG")


def multi_page_tiff() -> bytes:
    pages = [scene(32, 32, seed) for seed in range(2)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def float_tiff() -> bytes:
    ramp = np.linspace(-50.0, 400.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    return encode(Image.fromarray(ramp, mode="F"), "TIFF")


def icon() -> bytes:
    return encode(scene(32, 32), "ICO")


def elf_header() -> bytes:
    return b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + struct.pack("<HHI", 2, 0x3E, 1) + b"\x00" * 460


def pe_header() -> bytes:
    return b"MZ\x90\x00" + b"\x00" * 56 + struct.pack("<I", 64) + b"PE\x00\x00" + b"\x00" * 440


def pdf() -> bytes:
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        b'<script>alert(1)</script><rect width="64" height="64" fill="red"/></svg>'
    )


def html() -> bytes:
    return b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"


def avif_header() -> bytes:
    return b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
