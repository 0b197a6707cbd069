"""Bytes → RGB image → float32 CHW tensor, exactly as the model card prescribes. Pure functions.

Conversion to RGB, for every mode Pillow may hand back:
- transparency (RGBA, LA, PA, P with a transparent colour) is composited over white;
- 16/32-bit greyscale (I;16*, I) is scaled from its full range to 0..255, float (F) is clipped to 0..255;
- 1-bit, L, P, CMYK, YCbCr, LAB, HSV go through Pillow's own conversion;
- EXIF orientation is applied; animated images (GIF, WebP, APNG, multi-page TIFF) use their first frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

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


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> DecodedImage:
    """Decode `data` to an RGB image, checking the pixel count from the header before decoding."""
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
        image.seek(0)
        image.load()
        # In place: otherwise Pillow copies every unrotated image, 36 MB and ~15 ms for a 12 MP photo.
        ImageOps.exif_transpose(image, in_place=True)
        rgb = to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImageError(f"cannot decode the {image_format} image: {_reason(error)}") from None
    return DecodedImage(image=rgb, format=image_format, width=width, height=height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB in the documented way (see the module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if mode == "F":
        clipped = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(clipped).convert("RGB")
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
    return to_tensor(resized_and_cropped(image, pre), pre)


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        # Pillow's text names the in-memory stream object (with its address); say what it means instead.
        return "the data is not a valid image of that format"
    # Other Pillow messages are safe to show (no paths: we decode from memory); keep them short.
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
