"""The server process's memory tuning (app/__main__.py): large buffers by mmap, and Pillow's bounded block cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from PIL import _imaging as pillow_core

import app.__main__
from app.config import Settings

MIB = 1024 * 1024

# Decodes the same 12 MP JPEG twice under the server's allocator settings and prints the page faults of the
# second decode; run in a fresh process, since both settings are process-wide.
_DECODE_TWICE = """
import json, resource, sys
from PIL import Image
import app.__main__ as server
server._return_large_buffers_to_the_system()
server._reuse_image_memory(int(sys.argv[2]))
def decode():
    with Image.open(sys.argv[1]) as image:
        image.load()
decode()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
decode()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults_of_a_second_decode(photo: Path, cache_bytes: int) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", _DECODE_TWICE, str(photo), str(cache_bytes)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return int(json.loads(completed.stdout))


@pytest.fixture(scope="module")
def twelve_megapixel_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "12mp.jpg"
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(path, quality=90)
    return path


def test_the_block_cache_is_the_configured_bytes_in_pillow_blocks() -> None:
    before = pillow_core.get_blocks_max()
    try:
        app.__main__._reuse_image_memory(Settings().image_block_cache_bytes)
        assert (pillow_core.get_block_size(), pillow_core.get_blocks_max()) == (16 * MIB, 6)
        app.__main__._reuse_image_memory(0)
        assert pillow_core.get_blocks_max() == 0
    finally:
        pillow_core.set_blocks_max(before)


def test_a_second_large_photo_reuses_the_first_ones_memory(twelve_megapixel_jpeg: Path) -> None:
    """12 MP decode into 48 MB: without the cache every page of it is faulted in afresh (~2.3 us each here)."""
    uncached = _faults_of_a_second_decode(twelve_megapixel_jpeg, 0)
    cached = _faults_of_a_second_decode(twelve_megapixel_jpeg, Settings().image_block_cache_bytes)
    assert uncached > 48 * MIB // 4096 * 0.9, uncached  # every 4 KiB page of the image, once
    assert cached < uncached * 0.1, (cached, uncached)
