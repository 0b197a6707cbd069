"""Decoding and preprocessing: format sniffing, modes to RGB, EXIF, animation, limits, and parity with the reference."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from PIL import Image

from app.config import CPU_PROVIDER, Settings
from app.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from app.inference import OnnxModel, load_model
from app.preprocessing import decode_image, preprocess, sniff_format, to_rgb
from model.metadata import Preprocessing
from model.sources import SOURCES
from tests.app.reference_preprocessing import bvlc_reference_tensor, torchvision_reference_tensor
from tests.app.sample_images import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    encode,
    pillow_decode_error,
    png_header_only,
    scene,
    scene_bytes,
)

MAX_PIXELS = Settings().max_image_pixels
UNSUPPORTED_FORMAT_MESSAGE = "unsupported image format; send one of: JPEG, PNG, WebP, GIF, BMP, TIFF"
EMPTY_MESSAGE = "the request carried no image data; send the image bytes"
# The issue's bound on |service probability - reference probability|.
PROBABILITY_TOLERANCE = 1e-4
# Same pixels, different float32 evaluation order (x * (scale/255) vs x / 255, mean then std): a few ulps of
# values up to ~150 (BVLC) or ~2.7 (torchvision). One grey level off would differ by 1.0 or ~0.017.
TENSOR_TOLERANCE = {"bvlc": 1e-4, "torchvision": 1e-5}

Pixels = list[tuple[int, ...]]


def rgb_pixels(image: Image.Image) -> Pixels:
    assert image.mode == "RGB"
    return [tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)]


# --- sniff_format -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "expected"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP"), ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")],
)
def test_sniff_format_recognises_pillow_encoded_files(image_format: str, expected: str) -> None:
    assert sniff_format(scene_bytes(16, 16, image_format)) == expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [(b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")],
)
def test_sniff_format_knows_every_signature_variant(prefix: bytes, expected: str) -> None:
    assert sniff_format(prefix + b"\x00" * 16) == expected


def test_sniff_format_rejects_empty_data_as_invalid_image() -> None:
    with pytest.raises(InvalidImageError) as info:
        sniff_format(b"")
    assert info.value.message == EMPTY_MESSAGE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a cat, sitting on a mat\n", id="text"),
        pytest.param(b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", id="html"),
        pytest.param(
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>', id="svg"
        ),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", id="pdf"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVEfmt ", id="riff-wave-not-webp"),
    ],
)
def test_sniff_format_rejects_non_images_as_unsupported_media(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        sniff_format(data)
    assert info.value.message == UNSUPPORTED_FORMAT_MESSAGE


# --- modes to RGB -------------------------------------------------------------------------------------------


def _palette_image(indices: list[int], transparent_index: int | None) -> Image.Image:
    image = Image.frombytes("P", (len(indices), 1), bytes(indices))
    image.putpalette([*RED, *BLUE, *GREEN] + [0] * (256 * 3 - 9))
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


@dataclass(frozen=True)
class ModeCase:
    """A small image in `mode` and the RGB pixels the module docstring says it becomes."""

    mode: str
    make: Callable[[], Image.Image]
    expected: Pixels
    # Encoded files that keep the mode, with their save parameters.
    formats: dict[str, dict[str, object]] = field(default_factory=dict)


MODE_CASES = [
    ModeCase(
        "L",
        lambda: Image.frombytes("L", (3, 1), bytes([0, 77, 255])),
        [(0, 0, 0), (77, 77, 77), (255, 255, 255)],
        {"PNG": {}, "BMP": {}, "TIFF": {}},
    ),
    ModeCase(
        # Transparent, opaque, half-transparent grey 200 over white: 200 * 128/255 + 255 * 127/255 = 227.4.
        "LA",
        lambda: Image.frombytes("LA", (3, 1), bytes([200, 0, 200, 255, 200, 128])),
        [WHITE, (200, 200, 200), (227, 227, 227)],
        {"PNG": {}},
    ),
    ModeCase(
        "P",
        lambda: _palette_image([0, 1, 2], transparent_index=None),
        [RED, BLUE, GREEN],
        {"PNG": {}, "GIF": {}, "BMP": {}},
    ),
    ModeCase(
        # Palette index 0 (red) is the transparent colour: it becomes white, not red.
        "P",
        lambda: _palette_image([0, 1, 2], transparent_index=0),
        [WHITE, BLUE, GREEN],
        {"PNG": {"transparency": 0}, "GIF": {"transparency": 0}},
    ),
    ModeCase(
        "RGBA",
        lambda: Image.frombytes("RGBA", (3, 1), bytes([255, 0, 0, 0, 10, 20, 30, 255, 0, 0, 0, 128])),
        [WHITE, (10, 20, 30), (127, 127, 127)],
        {"PNG": {}, "TIFF": {}, "WEBP": {"lossless": True, "exact": True}},
    ),
    ModeCase(
        "CMYK",
        lambda: Image.frombytes("CMYK", (3, 1), bytes([0, 255, 255, 0, 0, 0, 0, 255, 0, 0, 0, 0])),
        [RED, (0, 0, 0), WHITE],
        {"TIFF": {}},
    ),
    ModeCase(
        # Full 16-bit range to 0..255; a dark 16-bit pixel (200 of 65535) stays dark.
        "I;16",
        lambda: Image.fromarray(np.array([[0, 200, 32768, 65535]], dtype=np.uint16)),
        [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)],
        {"PNG": {}, "TIFF": {}},
    ),
    ModeCase(
        "1",
        lambda: Image.fromarray(np.array([[False, True]])),
        [(0, 0, 0), (255, 255, 255)],
        {"PNG": {}, "BMP": {}, "TIFF": {}},
    ),
]


HIGH_BIT_GREY_CASES = [
    ModeCase(
        # 32-bit integers within 0..255 are 8-bit data widened: kept as they are, negatives clipped.
        "I",
        lambda: Image.fromarray(np.array([[-5, 0, 77, 255]], dtype=np.int32)),
        [(0, 0, 0), (0, 0, 0), (77, 77, 77), (255, 255, 255)],
    ),
    ModeCase(
        # Any value over 255 makes the 32-bit image a 16-bit-range one.
        "I",
        lambda: Image.fromarray(np.array([[0, 200, 32768, 65535]], dtype=np.int32)),
        [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)],
    ),
    ModeCase(
        "F",
        lambda: Image.fromarray(np.array([[-1.0, 0.4, 77.6, 300.0]], dtype=np.float32)),
        [(0, 0, 0), (0, 0, 0), (78, 78, 78), (255, 255, 255)],
    ),
]


def converted_pixels(image: Image.Image, source_mode: str) -> Pixels:
    """`to_rgb`'s result as RGB pixels: 16/32-bit and float greyscale stay one band (L) until after the crop."""
    assert image.mode == ("L" if source_mode in ("I;16", "I", "F") else "RGB")
    return rgb_pixels(image.convert("RGB"))


@pytest.mark.parametrize("case", MODE_CASES + HIGH_BIT_GREY_CASES, ids=lambda case: f"{case.mode}-{len(case.formats)}")
def test_to_rgb_converts_every_mode_as_documented(case: ModeCase) -> None:
    image = case.make()
    assert image.mode == case.mode
    assert converted_pixels(to_rgb(image), case.mode) == case.expected


@pytest.mark.parametrize(
    ("case", "image_format"),
    [
        pytest.param(case, image_format, id=f"{case.mode}-{image_format}-{'t' if case.formats[image_format] else ''}")
        for case in MODE_CASES
        for image_format in case.formats
    ],
)
def test_decode_image_converts_encoded_modes_as_documented(case: ModeCase, image_format: str) -> None:
    data = encode(case.make(), image_format, **case.formats[image_format])
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.mode == case.mode, "the file must keep the mode under test"
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert converted_pixels(decoded.image, case.mode) == case.expected


def test_decode_image_converts_a_cmyk_jpeg() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.mode == "CMYK"
    red, green, blue = decode_image(data, max_pixels=MAX_PIXELS).image.getpixel((8, 8))  # type: ignore[misc]
    assert red > 240 and green < 15 and blue < 15


def test_to_rgb_returns_rgb_images_unchanged() -> None:
    image = scene(8, 8)
    assert to_rgb(image) is image


# --- EXIF orientation and animation -------------------------------------------------------------------------


def _is_close(actual: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (80, 40), "top-left"),
        (3, (80, 40), "bottom-right"),  # rotated 180 degrees
        (6, (40, 80), "top-right"),  # stored rotated 90 degrees anticlockwise: shown turned clockwise
        (8, (40, 80), "bottom-left"),  # stored rotated 90 degrees clockwise: shown turned anticlockwise
    ],
)
def test_decode_image_applies_exif_orientation(orientation: int, size: tuple[int, int], red_corner: str) -> None:
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif)

    image = decode_image(data, max_pixels=MAX_PIXELS).image

    assert image.size == size
    width, height = size
    corners = {
        "top-left": (5, 5),
        "top-right": (width - 6, 5),
        "bottom-left": (5, height - 6),
        "bottom-right": (width - 6, height - 6),
    }
    for name, point in corners.items():
        expected = RED if name == red_corner else BLUE
        pixel = image.getpixel(point)
        assert isinstance(pixel, tuple)
        assert _is_close(pixel, expected), f"{name} corner is {pixel}, expected about {expected}"


@pytest.mark.parametrize(
    ("image_format", "mode", "params"),
    [("PNG", "P", {}), ("PNG", "RGBA", {}), ("WEBP", "RGB", {"lossless": True})],
)
def test_exif_orientation_applies_beyond_jpeg(image_format: str, mode: str, params: dict[str, object]) -> None:
    """The in-place transpose swaps Pillow's pixel store directly: check it on non-JPEG decoders and modes too."""
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned clockwise
    data = encode(stored.convert(mode), image_format, exif=exif, **params)

    image = decode_image(data, max_pixels=MAX_PIXELS).image

    assert (image.mode, image.size) == ("RGB", (40, 80))
    assert image.getpixel((34, 5)) == RED
    assert image.getpixel((5, 5)) == BLUE
    assert image.getpixel((34, 74)) == BLUE


@pytest.mark.parametrize("orientation", [None, 1])
def test_decode_image_makes_no_copy_of_an_upright_image(
    orientation: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MP photo is 36 MB decoded: copying it cost ~15 ms and doubled the peak memory of each decode."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    data = encode(scene(64, 48), "JPEG", quality=95, exif=exif)
    copies: list[Image.Image] = []
    original_copy = Image.Image.copy

    def counting_copy(self: Image.Image) -> Image.Image:
        copies.append(self)
        return original_copy(self)

    monkeypatch.setattr(Image.Image, "copy", counting_copy)

    image = decode_image(data, max_pixels=MAX_PIXELS).image

    assert image.size == (64, 48)
    assert copies == []


@pytest.mark.parametrize(
    ("image_format", "params"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("PNG", {})],  # PNG: an APNG
)
def test_animated_images_use_their_first_frame(image_format: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], **params)
    with Image.open(io.BytesIO(data)) as stored:
        assert getattr(stored, "n_frames", 1) == 3, "the file must be animated for this test to mean anything"

    image = decode_image(data, max_pixels=MAX_PIXELS).image

    assert image.size == (32, 32)
    assert set(rgb_pixels(image)) == {RED}


# --- limits and broken files --------------------------------------------------------------------------------


def _truncated_large_jpeg() -> bytes:
    # The header (with the size) survives; most of the entropy-coded data does not.
    return scene_bytes(3000, 2000, "JPEG", quality=80)[:4000]


@pytest.mark.parametrize(
    "data", [pytest.param(png_header_only(3000, 2000), id="png"), pytest.param(_truncated_large_jpeg(), id="jpeg")]
)
def test_pixel_limit_is_checked_from_the_header_before_decoding(data: bytes) -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, max_pixels=5_999_999)
    assert info.value.message == "image is 3000x2000 = 6000000 pixels, over the limit of 5999999; send a smaller image"
    # Within the limit the same bytes fail to decode: the rejection above came from the header alone.
    with pytest.raises(InvalidImageError):
        decode_image(data, max_pixels=6_000_000)


def test_configured_pixel_limit_decides_not_pillows_decompression_bomb_guard() -> None:
    # 196 MP is over Pillow's own hard guard (2 x 89.5 MP) but within the limit this operator configured.
    data = png_header_only(14_000, 14_000)
    with pytest.raises(InvalidImageError):  # it passes the size check, then fails to decode (no pixel data)
        decode_image(data, max_pixels=250_000_000)


@pytest.mark.parametrize(
    ("image_format", "cut"),
    [("JPEG", 0.5), ("JPEG", 0.9), ("PNG", 0.5), ("PNG", 0.9)],
)
def test_truncated_images_are_invalid(image_format: str, cut: float) -> None:
    whole = scene_bytes(300, 200, image_format)
    data = whole[: int(len(whole) * cut)]
    with pytest.raises(InvalidImageError) as info:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert info.value.message == f"cannot decode the {image_format} image: {pillow_decode_error(data)}"


def test_decode_image_rejects_empty_and_unsupported_data() -> None:
    with pytest.raises(InvalidImageError):
        decode_image(b"", max_pixels=MAX_PIXELS)
    with pytest.raises(UnsupportedMediaTypeError):
        decode_image(b"GIF? no, plain text", max_pixels=MAX_PIXELS)


# --- parity with the reference pipeline ---------------------------------------------------------------------

FloatArray = npt.NDArray[np.float32]
REFERENCES: dict[str, Callable[[bytes], FloatArray]] = {
    "bvlc": bvlc_reference_tensor,
    "torchvision": torchvision_reference_tensor,
}


@dataclass(frozen=True)
class ParityImage:
    image_format: str
    width: int
    height: int
    params: dict[str, object] = field(default_factory=dict)


PARITY_IMAGES = [
    ParityImage("JPEG", 640, 480, {"quality": 90}),
    ParityImage("PNG", 300, 500),  # portrait
    ParityImage("WEBP", 1000, 250, {"quality": 90}),  # wide
    ParityImage("GIF", 257, 256),
    ParityImage("BMP", 200, 180),  # smaller than the crop: upscaled
    ParityImage("TIFF", 123, 456),  # tall and narrow
    ParityImage("JPEG", 2600, 1400, {"quality": 90}),  # large: decoded in full by default, like the reference
]


@functools.cache
def parity_image_bytes(index: int) -> bytes:
    """Each sample encoded once (both cards use it), with its own seeded scene."""
    sample = PARITY_IMAGES[index]
    return scene_bytes(sample.width, sample.height, sample.image_format, seed=index, **sample.params)


@pytest.fixture(scope="module")
def onnx_model(served_model_path: Path) -> OnnxModel:
    """The service's own session wrapper, on the CPU."""
    return load_model(Settings(model_path=served_model_path, providers=[CPU_PROVIDER]))


@pytest.fixture(scope="module")
def reference_session(served_model_path: Path) -> Iterator[ort.InferenceSession]:
    """A plain onnxruntime session on the same file, for the reference side."""
    yield ort.InferenceSession(str(served_model_path), providers=[CPU_PROVIDER])


def _card_preprocessing(card: str, onnx_model: OnnxModel) -> Preprocessing:
    # export_model has no random torchvision source, so the torchvision recipe is the one its exports carry,
    # and both sides run the served (BVLC-architecture) network on torchvision-preprocessed tensors.
    return onnx_model.card.preprocessing if card == "bvlc" else SOURCES["torchvision"].preprocessing


@pytest.mark.parametrize("card", ["bvlc", "torchvision"])
@pytest.mark.parametrize(
    "sample",
    PARITY_IMAGES,
    ids=lambda sample: f"{sample.image_format}-{sample.width}x{sample.height}",
)
def test_service_matches_the_reference_pipeline(
    sample: ParityImage, card: str, onnx_model: OnnxModel, reference_session: ort.InferenceSession
) -> None:
    data = parity_image_bytes(PARITY_IMAGES.index(sample))
    pre = _card_preprocessing(card, onnx_model)

    # The service's pipeline, called as app.runtime calls it by default (no fast JPEG decode).
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    service_tensor = preprocess(decoded.image, pre)[np.newaxis]
    service_probabilities = onnx_model.run(service_tensor)

    reference_tensor = REFERENCES[card](data)
    reference_probabilities = reference_session.run(["probabilities"], {"image": reference_tensor})[0]

    assert service_tensor.shape == reference_tensor.shape == (1, 3, 227, 227)
    assert decoded.image.size == (sample.width, sample.height)
    np.testing.assert_allclose(service_tensor, reference_tensor, rtol=0, atol=TENSOR_TOLERANCE[card])
    difference = float(np.max(np.abs(service_probabilities - reference_probabilities)))
    assert difference < PROBABILITY_TOLERANCE, f"max |Δp| = {difference:.3g}"


# The opt-in fast path (ALEXNET_FAST_JPEG_DECODE) trades exactness for speed: DCT-domain downscaling and
# chroma handling differ from a full decode by a few pixel levels. Bounds measured on the seeded test model.
FAST_DECODE_PIXEL_TOLERANCE = 16.0
FAST_DECODE_PROBABILITY_TOLERANCE = 2e-2


def test_fast_jpeg_decode_takes_the_draft_path_within_its_stated_bounds(
    onnx_model: OnnxModel, reference_session: ort.InferenceSession
) -> None:
    sample = ParityImage("JPEG", 2600, 1400, {"quality": 90})
    data = parity_image_bytes(PARITY_IMAGES.index(sample))
    pre = onnx_model.card.preprocessing
    decoded = decode_image(data, max_pixels=MAX_PIXELS, draft_size=pre.resize_size)
    assert decoded.image.size == (1300, 700), "the draft-mode path must be taken"
    assert (decoded.width, decoded.height) == (2600, 1400), "the reported size is the file's"
    fast_tensor = preprocess(decoded.image, pre)[np.newaxis]
    reference_tensor = REFERENCES["bvlc"](data)
    assert float(np.abs(fast_tensor - reference_tensor).max()) <= FAST_DECODE_PIXEL_TOLERANCE
    fast = onnx_model.run(fast_tensor)
    reference = reference_session.run(["probabilities"], {"image": reference_tensor})[0]
    assert float(np.abs(fast - reference).max()) < FAST_DECODE_PROBABILITY_TOLERANCE
