"""Fetch a pinned weights file into the cache: streamed, hash-checked, renamed into place atomically."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from model.errors import WeightsHashError, WeightsUnavailableError
from model.sources import WeightsFile

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Applies to the connection and to every read; a stalled mirror fails instead of hanging forever.
TIMEOUT_SECONDS = 30.0


def file_hexdigest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: Path, weights_file: WeightsFile) -> None:
    """Raise `WeightsHashError` unless `path` is the pinned release."""
    actual = file_hexdigest(path, weights_file.hash_algorithm)
    if not weights_file.matches(actual):
        raise WeightsHashError(
            f"{path} has {weights_file.hash_algorithm.upper()} {actual}, but the official "
            f"{weights_file.filename} has {weights_file.describe_digest()}; the file is corrupt or a "
            f"different release (delete it and download {weights_file.url} again)"
        )


def unavailable_message(weights_file: WeightsFile, cache_dir: Path, reason: str) -> str:
    return (
        f"cannot get {weights_file.filename}: {reason}. Download it where there is network access "
        f"(curl -fLO {weights_file.url}; expect {weights_file.describe_digest()}), then pass it with "
        f"`--checkpoint PATH` or copy it to {cache_dir / weights_file.filename}"
    )


def cached_weights(weights_file: WeightsFile, cache_dir: Path) -> Path | None:
    """The cached file if it is present and intact; a corrupt copy is logged and ignored."""
    path = cache_dir / weights_file.filename
    if not path.is_file():
        return None
    try:
        check_digest(path, weights_file)
    except WeightsHashError as error:
        log.warning("ignoring cached file: %s", error)
        return None
    return path


def fetch_weights(weights_file: WeightsFile, cache_dir: Path, *, progress: bool = True) -> Path:
    """Path of the verified weights file, downloading it into `cache_dir` if it is not cached.

    Raises `WeightsUnavailableError` (with what to fetch and how to pass it) when offline, and
    `WeightsHashError` if the download is not the pinned release.
    """
    cached = cached_weights(weights_file, cache_dir)
    if cached is not None:
        log.info("using cached %s", cached)
        return cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsUnavailableError(
            unavailable_message(weights_file, cache_dir, f"cannot create cache directory ({error.strerror})")
        ) from None
    log.info("downloading %s", weights_file.url)
    try:
        with urllib.request.urlopen(weights_file.url, timeout=TIMEOUT_SECONDS) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            return _stream_to_cache(response, total, weights_file, cache_dir, progress=progress)
    except urllib.error.HTTPError as error:
        error.close()
        raise WeightsUnavailableError(
            unavailable_message(weights_file, cache_dir, f"{weights_file.url} answered HTTP {error.code}")
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsUnavailableError(
            unavailable_message(weights_file, cache_dir, f"download from {weights_file.url} failed ({reason})")
        ) from None


def _stream_to_cache(
    response: BinaryIO, total: int | None, weights_file: WeightsFile, cache_dir: Path, *, progress: bool
) -> Path:
    """Write to a temporary file in the cache, check the digest, then rename: never a partial file."""
    digest = hashlib.new(weights_file.hash_algorithm)
    handle, temporary_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{weights_file.filename}.", suffix=".part")
    temporary = Path(temporary_name)
    try:
        with (
            os.fdopen(handle, "wb") as output,
            tqdm(total=total, unit="B", unit_scale=True, desc=weights_file.filename, disable=not progress) as bar,
        ):
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                output.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        actual = digest.hexdigest()
        if not weights_file.matches(actual):
            raise WeightsHashError(
                f"downloaded {weights_file.url} has {weights_file.hash_algorithm.upper()} {actual}, "
                f"expected {weights_file.describe_digest()}; try again or fetch it by hand"
            )
        destination = cache_dir / weights_file.filename
        os.replace(temporary, destination)
        return destination
    finally:
        temporary.unlink(missing_ok=True)
