from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from model.download import fetch_weights
from model.errors import WeightsHashError, WeightsUnavailableError
from model.sources import BVLC_FILE, TORCHVISION_FILE, WeightsFile

# Independent public records of download.pytorch.org's file (docs/model.md, Pinned digests).
TORCHVISION_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"

CONTENT = b"weights " * 100_000


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


@pytest.fixture
def server_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a temporary directory: (base URL, directory)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pinned(base_url: str, content: bytes = CONTENT, algorithm: str = "sha1") -> WeightsFile:
    digest = hashlib.new(algorithm, content).hexdigest()
    return WeightsFile("weights.bin", f"{base_url}/weights.bin", "sha1" if algorithm == "sha1" else "sha256", digest)


def test_downloads_verifies_and_caches(server_root: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server_root
    (root / "weights.bin").write_bytes(CONTENT)
    cache = tmp_path / "cache"
    path = fetch_weights(pinned(base_url), cache, progress=False)
    assert path == cache / "weights.bin"
    assert path.read_bytes() == CONTENT
    assert sorted(entry.name for entry in cache.iterdir()) == ["weights.bin"]
    (root / "weights.bin").unlink()
    assert fetch_weights(pinned(base_url), cache, progress=False) == path  # served from the cache


def test_wrong_download_leaves_nothing_in_cache(server_root: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server_root
    (root / "weights.bin").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsHashError, match="weights.bin has SHA1 .*, expected SHA-1 "):
        fetch_weights(pinned(base_url), cache, progress=False)
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_downloaded_again(server_root: tuple[str, Path], tmp_path: Path) -> None:
    base_url, root = server_root
    (root / "weights.bin").write_bytes(CONTENT)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights.bin").write_bytes(b"half a fi")
    assert fetch_weights(pinned(base_url), cache, progress=False).read_bytes() == CONTENT


def test_http_error_says_what_to_do(server_root: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = server_root
    with pytest.raises(WeightsUnavailableError, match="answered HTTP 404.*--checkpoint PATH"):
        fetch_weights(pinned(base_url), tmp_path / "cache", progress=False)


def test_unreachable_host_says_which_file_to_fetch_and_how_to_pass_it(tmp_path: Path) -> None:
    port = closed_port()
    weights_file = WeightsFile("weights.bin", f"http://127.0.0.1:{port}/weights.bin", "sha1", "0" * 40)
    with pytest.raises(WeightsUnavailableError) as caught:
        fetch_weights(weights_file, tmp_path / "cache", progress=False)
    message = str(caught.value)
    assert "cannot get weights.bin" in message
    assert f"curl -fLO http://127.0.0.1:{port}/weights.bin" in message
    assert "--checkpoint PATH" in message
    assert str(tmp_path / "cache" / "weights.bin") in message


def test_torchvision_pin_is_the_full_sha256() -> None:
    """A 32-bit prefix can be matched by a crafted file in minutes; the whole digest cannot."""
    assert TORCHVISION_FILE.matches(TORCHVISION_SHA256)
    assert not TORCHVISION_FILE.matches("7be5be79" + "0" * 56)
    assert TORCHVISION_FILE.describe_digest() == f"SHA-256 {TORCHVISION_SHA256}"
    assert BVLC_FILE.describe_digest() == "SHA-1 9116a64c0fbe4459d18f4bb6b56d647b63920377"


def closed_port() -> int:
    """A local port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
