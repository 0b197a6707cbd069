"""The reference preprocessing, re-implemented from the published recipes for the parity tests.

It shares no code with app/preprocessing.py and reads nothing from the model card: Pillow decodes the
whole file and converts it to RGB, the EXIF orientation is applied (by its own table from the EXIF spec,
not Pillow's), then
- BVLC (Caffe's deploy recipe): both sides to 256 (bilinear), the centre 227x227 crop (offset 14),
  float32, RGB to BGR, minus the ILSVRC-2012 mean pixel in BGR order;
- torchvision: the shorter side to 256 (bilinear, the longer side truncated as torchvision does), the
  centre 227x227 crop, /255, minus the ImageNet mean and over the ImageNet std, in RGB order;
laid out NCHW with a batch of one.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image

FloatArray = npt.NDArray[np.float32]

CROP_SIZE = 227
RESIZE_SIZE = 256
BVLC_CROP_OFFSET = 14
BVLC_MEAN_BGR = (104.0069879317889, 116.66876761696767, 122.6789143406786)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
ORIENTATION_TAG = 0x0112

Pixels = npt.NDArray[np.uint8]
# EXIF orientation -> how the stored rows x columns become the upright picture; other values mean upright.
UPRIGHT: dict[int, Callable[[Pixels], Pixels]] = {
    2: lambda pixels: pixels[:, ::-1],  # mirrored left to right
    3: lambda pixels: pixels[::-1, ::-1],  # turned 180 degrees
    4: lambda pixels: pixels[::-1],  # mirrored top to bottom
    5: lambda pixels: pixels.transpose(1, 0, 2),  # mirrored across the main diagonal
    6: lambda pixels: np.rot90(pixels, -1),  # shown turned 90 degrees clockwise
    7: lambda pixels: np.rot90(pixels, 2).transpose(1, 0, 2),  # mirrored across the other diagonal
    8: lambda pixels: np.rot90(pixels, 1),  # shown turned 90 degrees counter-clockwise
}


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
        rgb = image.convert("RGB")
    upright = UPRIGHT.get(orientation)
    if upright is None:
        return rgb
    return Image.fromarray(np.ascontiguousarray(upright(np.asarray(rgb))))


def _nchw(pixels: FloatArray) -> FloatArray:
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


def bvlc_reference_tensor(data: bytes) -> FloatArray:
    resized = _rgb(data).resize((RESIZE_SIZE, RESIZE_SIZE), Image.Resampling.BILINEAR)
    end = BVLC_CROP_OFFSET + CROP_SIZE
    crop = resized.crop((BVLC_CROP_OFFSET, BVLC_CROP_OFFSET, end, end))
    bgr = np.asarray(crop, dtype=np.float32)[:, :, ::-1]
    return _nchw(bgr - np.asarray(BVLC_MEAN_BGR, dtype=np.float32))


def torchvision_reference_tensor(data: bytes) -> FloatArray:
    image = _rgb(data)
    width, height = image.size
    if width <= height:
        size = (RESIZE_SIZE, int(RESIZE_SIZE * height / width))
    else:
        size = (int(RESIZE_SIZE * width / height), RESIZE_SIZE)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - CROP_SIZE) / 2.0))
    top = int(round((size[1] - CROP_SIZE) / 2.0))
    crop = resized.crop((left, top, left + CROP_SIZE, top + CROP_SIZE))
    scaled = np.asarray(crop, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN_RGB, dtype=np.float32)
    std = np.asarray(IMAGENET_STD_RGB, dtype=np.float32)
    return _nchw((scaled - mean) / std)
