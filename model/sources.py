"""Where each kind of weights comes from: pinned URL, digest, architecture, preprocessing, license."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.metadata import (
    BVLC_LICENSE,
    BVLC_PREPROCESSING,
    RANDOM_LICENSE,
    TORCHVISION_LICENSE,
    TORCHVISION_PREPROCESSING,
    Architecture,
    Preprocessing,
    WeightsSource,
)

HashAlgorithm = Literal["sha1", "sha256"]

DEFAULT_CACHE_DIR = Path("~/.cache/alexnet-serve")
RANDOM_SOURCE_URL = "seeded:numpy.random.default_rng"


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file and the digest that identifies the official release."""

    filename: str
    url: str
    hash_algorithm: HashAlgorithm
    # torchvision pins only a prefix of the SHA-256 (it is in the file name); a full digest otherwise.
    digest_prefix: str

    def matches(self, hexdigest: str) -> bool:
        return hexdigest.startswith(self.digest_prefix)

    def describe_digest(self) -> str:
        kind = "SHA-1" if self.hash_algorithm == "sha1" else "SHA-256"
        full = len(self.digest_prefix) == (40 if self.hash_algorithm == "sha1" else 64)
        return f"{kind} {self.digest_prefix}" if full else f"{kind} starting {self.digest_prefix}"


@dataclass(frozen=True)
class SourceSpec:
    name: WeightsSource
    architecture: Architecture
    preprocessing: Preprocessing
    license: str
    # None for `random`, which is generated rather than fetched.
    file: WeightsFile | None


BVLC_FILE = WeightsFile(
    filename="bvlc_alexnet.caffemodel",
    url="http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
    hash_algorithm="sha1",
    digest_prefix="9116a64c0fbe4459d18f4bb6b56d647b63920377",
)
TORCHVISION_FILE = WeightsFile(
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    hash_algorithm="sha256",
    digest_prefix="7be5be79",
)

SOURCES: Mapping[WeightsSource, SourceSpec] = {
    "bvlc": SourceSpec("bvlc", "bvlc_alexnet", BVLC_PREPROCESSING, BVLC_LICENSE, BVLC_FILE),
    "torchvision": SourceSpec(
        "torchvision", "torchvision_alexnet", TORCHVISION_PREPROCESSING, TORCHVISION_LICENSE, TORCHVISION_FILE
    ),
    # Random weights use the BVLC architecture and preprocessing, so a service started with them
    # behaves exactly like the real one apart from its (meaningless) predictions.
    "random": SourceSpec("random", "bvlc_alexnet", BVLC_PREPROCESSING, RANDOM_LICENSE, None),
}
