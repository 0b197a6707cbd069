"""Bytes → RGB image → float32 CHW tensor, exactly as the model card prescribes. Pure functions.

Conversion to RGB, for every mode Pillow may hand back:
- transparency (RGBA, LA, PA, P with a transparent colour) is composited over white;
- 16/32-bit greyscale (I;16*, I) is scaled from its full range to 0..255, float (F) is clipped to 0..255,
  both kept greyscale (L) until after the crop;
- 1-bit, L, P, CMYK, YCbCr, LAB, HSV go through Pillow's own conversion;
- EXIF orientation is applied; animated images (GIF, WebP, APNG, multi-page TIFF) use their first frame.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from model.metadata import Preprocessing

FloatArray = npt.NDArray[np.float32]

# Pillow format names, keyed by the magic bytes that identify them; the client's Content-Type is never trusted.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")
# With ALEXNET_FAST_JPEG_DECODE, JPEGs are decoded in the DCT domain down to at least this multiple of the
# resize target: several times cheaper for 12 MP photos, but the pixels differ slightly from a full decode.
DRAFT_MARGIN = 2
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str:
    """The Pillow format name for `data`, judged by magic bytes alone."""
    if not data:
        raise InvalidImageError("the request carried no image data; send the image bytes")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    raise UnsupportedMediaTypeError(f"unsupported image format; send one of: {', '.join(SUPPORTED_FORMATS)}")


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header has been read and checked, its pixels not yet decoded."""

    image: Image.Image
    format: str
    width: int
    height: int


def open_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> OpenedImage:
    """Read `data`'s header, checking the pixel count before anything is decoded."""
    image_format = sniff_format(data)
    # The configured limit, checked from the header below, replaces Pillow's own (process-wide) bomb guard,
    # which would otherwise reject at its fixed 179 MP however the operator set the limit.
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"cannot decode the {image_format} image: {_reason(error)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; send a smaller image"
        )
    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft(None, (draft_size * DRAFT_MARGIN, draft_size * DRAFT_MARGIN))
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImageError(f"cannot decode the {image_format} image: {_reason(error)}") from None
    return OpenedImage(image=image, format=image_format, width=width, height=height)


def stored_bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel: 1 byte for 1-bit, L and P, 2 for 16-bit greyscale, else 4 (RGB too)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


# The most `decoding_bytes` charges per pixel: a 4-byte mode and its 4-byte RGB result.
MAX_DECODING_BYTES_PER_PIXEL = 8


def decoding_bytes(opened: OpenedImage) -> int:
    """The most memory decoding and converting the image holds at once: its pixels, and the 8-bit result or
    the rotated copy EXIF orientation makes (conversions with intermediates go in strips)."""
    image = opened.image
    stored = stored_bytes_per_pixel(image.mode)
    converted = 0 if image.mode == "RGB" else stored_bytes_per_pixel(_eight_bit_mode(image.mode))
    rotated = stored if _may_be_rotated(image) else 0
    return image.width * image.height * (stored + max(converted, rotated))


def _may_be_rotated(image: Image.Image) -> bool:
    # A JPEG's EXIF comes before its pixels; other formats may keep it after them (reading it would decode).
    if image.format != "JPEG":
        return True
    return bool(image.getexif().get(ExifTags.Base.Orientation, 1) != 1)


def load_image(opened: OpenedImage) -> DecodedImage:
    """Decode the pixels of an opened image and convert them to 8 bits (see `to_rgb`)."""
    image, image_format = opened.image, opened.format
    try:
        image.seek(0)
        image.load()
        # In place: otherwise Pillow copies every unrotated image, 36 MB and ~15 ms for a 12 MP photo.
        ImageOps.exif_transpose(image, in_place=True)
        converted = to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImageError(f"cannot decode the {image_format} image: {_reason(error)}") from None
    return DecodedImage(image=converted, format=image_format, width=opened.width, height=opened.height)


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> DecodedImage:
    """Decode `data` to an 8-bit image, checking the pixel count from the header before decoding."""
    return load_image(open_image(data, max_pixels=max_pixels, draft_size=draft_size))


# Rows converted at a time where converting the whole image would hold several full-size intermediates.
STRIP_ROWS = 64
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _is_high_bit_grey(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _eight_bit_mode(mode: str) -> str:
    return "L" if _is_high_bit_grey(mode) else "RGB"


def _converted_in_strips(image: Image.Image, mode: str, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """A per-pixel `convert` applied a strip of rows at a time: the same pixels as converting the whole image,
    but only the result is full size, not every intermediate."""
    width, height = image.size
    result = Image.new(mode, image.size)
    for top in range(0, height, STRIP_ROWS):
        box = (0, top, width, min(top + STRIP_ROWS, height))
        result.paste(convert(image.crop(box)), box)
    return result


def _over_white(strip: Image.Image) -> Image.Image:
    rgba = strip.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scaled_to_eight_bits(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale scaled from its full range to 0..255, float clipped to it; in float32, a strip at a
    time (a float64 copy of a 40 MP image was 320 MB)."""
    mode = image.mode
    _, high = image.getextrema()
    # 16-bit modes span 0..65535; 32-bit integers only when a value exceeds 255 (else they are 8-bit data).
    full_scale = 65535.0 if mode.startswith("I;16") or float(high) > 255 else 255.0  # type: ignore[arg-type]

    def scaled(strip: Image.Image) -> Image.Image:
        values = np.asarray(strip, dtype=np.float32)
        if mode != "F":
            values *= np.float32(255.0 / full_scale)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))

    return _converted_in_strips(image, "L", scaled)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB in the documented way (see the module docstring).

    16/32-bit and float greyscale become 8-bit greyscale (L) instead: `preprocess` widens it to RGB after the
    crop, where it is 227x227 pixels instead of up to 40 million.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _converted_in_strips(image, "RGB", _over_white)
    if _is_high_bit_grey(mode):
        return _scaled_to_eight_bits(image)
    return image.convert("RGB")


def resized_and_cropped(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize as the card says (both sides, or the shorter side, to `resize_size`), then centre-crop."""
    width, height = image.size
    if pre.resize_policy == "stretch":
        size = (pre.resize_size, pre.resize_size)
    elif width <= height:
        size = (pre.resize_size, max(pre.resize_size, int(pre.resize_size * height / width)))
    else:
        size = (max(pre.resize_size, int(pre.resize_size * width / height)), pre.resize_size)
    # Not resized straight to the crop with Pillow's `box`: cheaper, but it moved pixels by one grey level
    # for some sizes (375x500 among the sample photos), and outputs must stay bit-identical.
    resized = image.resize(size, Image.Resampling.BILINEAR)
    crop = pre.input_size
    left = int(round((size[0] - crop) / 2.0))
    top = int(round((size[1] - crop) / 2.0))
    return resized.crop((left, top, left + crop, top + crop))


def to_tensor(image: Image.Image, pre: Preprocessing) -> FloatArray:
    """8-bit RGB crop → float32 [3, H, W] in the card's channel order, scale, mean and std.

    Channels first, then arithmetic: each operation then runs over whole contiguous planes (not strided
    3-element rows), and gives the same float32 values: the same operations in the same order per element.
    """
    pixels = np.asarray(image).transpose(2, 0, 1)
    if pre.channel_order == "BGR":
        pixels = pixels[::-1]
    planes = pixels.astype(np.float32, order="C")
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    np.multiply(planes, np.float32(pre.pixel_scale / 255.0), out=planes)
    np.subtract(planes, mean, out=planes)
    np.divide(planes, std, out=planes)
    return planes


def preprocess(image: Image.Image, pre: Preprocessing) -> FloatArray:
    crop = resized_and_cropped(image, pre)
    if crop.mode != "RGB":
        # Greyscale is resized as it is (one band: the same pixels as each band of its RGB), then widened.
        crop = crop.convert("RGB")
    return to_tensor(crop, pre)


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        # Pillow's text names the in-memory stream object (with its address); say what it means instead.
        return "the data is not a valid image of that format"
    # Other Pillow messages are safe to show (no paths: we decode from memory); keep them short.
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
