"""Property-based fuzzing of the decode path: any bytes either become a finite [3, 227, 227] tensor or a ServiceError.

Whatever Pillow raises on hostile bytes must reach the client as a 4xx with a code, never as a 500. The example
counts are bounded and the runs derandomised, so CI on a slow shared machine runs the same examples every time.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ImageTooLargeError, InvalidImageError, ServiceError, UnsupportedMediaTypeError
from app.preprocessing import decode_image, preprocess
from model.metadata import Preprocessing
from model.sources import SOURCES
from tests.app.sample_images import encode, scene
from tests.reliability.hostile_inputs import (
    animated_gif,
    cmyk_jpeg,
    exif_rotated_jpeg,
    one_bit_png,
    palette_transparent_png,
    png_bomb,
    sixteen_bit_png,
)

# Small enough that a mutated header cannot make one example decode for long; the limit logic is the same.
FUZZ_MAX_PIXELS = 2_000_000
EXAMPLES = 500
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Mutations leave the magic bytes alone (the longest, WebP's, is 12 bytes), so they reach the decoders.
SIGNATURE_BYTES = 12
HEADER_BYTES = 512
EXPECTED_ERRORS = (InvalidImageError, UnsupportedMediaTypeError, ImageTooLargeError)
SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
)
PREPROCESSINGS: dict[str, Preprocessing] = {
    "bvlc": SOURCES["bvlc"].preprocessing,
    "torchvision": SOURCES["torchvision"].preprocessing,
}


def _seed_images() -> list[bytes]:
    """Valid files of every accepted format and several modes, for the mutation strategies to start from."""
    picture = scene(40, 30, seed=3)
    return [
        encode(picture, "JPEG", quality=80),
        encode(picture, "JPEG", progressive=True),
        encode(picture, "PNG"),
        encode(picture.convert("RGBA"), "PNG"),
        encode(picture, "WEBP"),
        encode(picture, "WEBP", lossless=True),
        encode(picture.convert("P"), "GIF"),
        encode(picture, "BMP"),
        encode(picture, "TIFF"),
        encode(picture, "TIFF", compression="tiff_lzw"),
        cmyk_jpeg(),
        exif_rotated_jpeg(),
        sixteen_bit_png(),
        one_bit_png(),
        palette_transparent_png(),
        animated_gif(),
        png_bomb(),
    ]


SEED_IMAGES = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with a few bytes overwritten, inserted or deleted, or cut short; its signature kept intact."""
    data = bytearray(draw(st.sampled_from(SEED_IMAGES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        # Most of the structure (and most parser bugs) sits in the first few hundred bytes: bias mutations there.
        end = min(len(data), HEADER_BYTES) if draw(st.booleans()) else len(data)
        position = draw(st.integers(min_value=SIGNATURE_BYTES, max_value=max(SIGNATURE_BYTES, end - 1)))
        action = draw(st.sampled_from(("overwrite", "insert", "delete", "truncate")))
        if action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[position : position + len(chunk)] = chunk
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=16))]
        else:
            del data[position:]
    return bytes(data)


signature_prefixed = st.builds(lambda signature, rest: signature + rest, st.sampled_from(SIGNATURES), st.binary())


def _decodes_or_fails_cleanly(data: bytes, pre: Preprocessing, fast_jpeg_decode: bool = False) -> None:
    """What the server does with `data` (full decode by default, draft mode with ALEXNET_FAST_JPEG_DECODE)."""
    draft_size = pre.resize_size if fast_jpeg_decode else None
    try:
        decoded = decode_image(data, max_pixels=FUZZ_MAX_PIXELS, draft_size=draft_size)
        tensor = preprocess(decoded.image, pre)
    except ServiceError as error:
        assert isinstance(error, EXPECTED_ERRORS), f"{type(error).__name__}: {error.message}"
        assert error.message
        return
    assert tensor.shape == (3, pre.input_size, pre.input_size)
    assert tensor.dtype == np.float32
    assert np.isfinite(tensor).all()


# Pillow warns (UserWarning) about corrupt metadata and carries on; the server runs with warnings as warnings,
# so here they must not turn into exceptions that production never sees.
pytestmark = pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*")


@pytest.mark.parametrize("weights", sorted(PREPROCESSINGS))
@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_fail_with_a_service_error(weights: str, data: bytes) -> None:
    _decodes_or_fails_cleanly(data, PREPROCESSINGS[weights])


@FUZZ_SETTINGS
@given(data=signature_prefixed)
def test_bytes_behind_an_accepted_signature_decode_or_fail_with_a_service_error(data: bytes) -> None:
    _decodes_or_fails_cleanly(data, PREPROCESSINGS["bvlc"])


@pytest.mark.parametrize("weights", sorted(PREPROCESSINGS))
@FUZZ_SETTINGS
@given(data=mutated_images(), fast_jpeg_decode=st.booleans())
def test_mutated_valid_images_decode_or_fail_with_a_service_error(
    weights: str, data: bytes, fast_jpeg_decode: bool
) -> None:
    _decodes_or_fails_cleanly(data, PREPROCESSINGS[weights], fast_jpeg_decode)


def test_every_seed_image_decodes() -> None:
    """The mutations start from files that are valid (all but the bomb, which must be refused as too large)."""
    for data in SEED_IMAGES[:-1]:
        _decodes_or_fails_cleanly(data, PREPROCESSINGS["bvlc"])
        decode_image(data, max_pixels=FUZZ_MAX_PIXELS)
    with pytest.raises(ImageTooLargeError):
        decode_image(SEED_IMAGES[-1], max_pixels=FUZZ_MAX_PIXELS)
