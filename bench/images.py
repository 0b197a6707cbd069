"""A realistic, reproducible JPEG set: camera-like sizes up to 12 MP, generated once and cached.

Each image is a smooth colour field (a few random colours upsampled bicubically), a scatter of filled
shapes, and sensor-like Gaussian noise, saved at quality 90 with 4:2:0 chroma: the entropy that makes
a 12 MP photo 2-4 MB, so decode cost and upload size are close to what real clients send.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

# Bump when the generator changes, so cached sets from an older generator are not reused.
GENERATOR_VERSION = 1
SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1024, 768), (1920, 1080), (4000, 3000))
LARGEST_SIZE = max(SIZES, key=lambda size: size[0] * size[1])
JPEG_QUALITY = 90
SHAPES_PER_IMAGE = 60
COLOUR_FIELD_CELLS = (8, 6)
NOISE_SIGMA_RANGE = (4.0, 12.0)


@dataclass(frozen=True)
class BenchImage:
    name: str
    path: Path
    width: int
    height: int
    data: bytes

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def size_label(self) -> str:
        return f"{self.width}x{self.height}"


def image_set(cache_dir: Path, per_size: int) -> list[BenchImage]:
    """`per_size` images of each size in `SIZES`, interleaved by size (so consecutive requests differ)."""
    folder = cache_dir / f"images-v{GENERATOR_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(per_size):
        for width, height in SIZES:
            images.append(_cached_image(folder, width, height, index))
    return images


def _cached_image(folder: Path, width: int, height: int, index: int) -> BenchImage:
    name = f"{width}x{height}-{index}.jpg"
    path = folder / name
    if not path.is_file():
        logger.info("generating %s", path)
        data = synthetic_jpeg(width, height, seed=_seed(width, height, index))
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)
    return BenchImage(name=name, path=path, width=width, height=height, data=path.read_bytes())


def _seed(width: int, height: int, index: int) -> int:
    return (width * 100_003 + height) * 1_000 + index


def synthetic_jpeg(width: int, height: int, *, seed: int) -> bytes:
    """A JPEG of photo-like entropy: colour field + shapes + noise; the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(COLOUR_FIELD_CELLS[1], COLOUR_FIELD_CELLS[0], 3), dtype=np.uint8)
    image = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(SHAPES_PER_IMAGE):
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        right = left + int(rng.integers(width // 50 + 1, width // 4 + 2))
        bottom = top + int(rng.integers(height // 50 + 1, height // 4 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((left, top, right, bottom), fill=colour)
        else:
            draw.rectangle((left, top, right, bottom), fill=colour)
    # Soften the hard shape edges a little, as a lens would.
    image = image.filter(ImageFilter.GaussianBlur(radius=1.5))
    sigma = float(rng.uniform(*NOISE_SIGMA_RANGE))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(sigma)
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
    return buffer.getvalue()
