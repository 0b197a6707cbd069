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
    """A published weights file and the full digest that identifies the official release."""

    filename: str
    url: str
    hash_algorithm: HashAlgorithm
    digest: str

    def matches(self, hexdigest: str) -> bool:
        return hexdigest == self.digest

    def describe_digest(self) -> str:
        return f"{'SHA-1' if self.hash_algorithm == 'sha1' else 'SHA-256'} {self.digest}"


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
    digest="9116a64c0fbe4459d18f4bb6b56d647b63920377",
)
TORCHVISION_FILE = WeightsFile(
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    hash_algorithm="sha256",
    # torchvision itself checks only the 8-hex prefix in the file name, which a crafted file can be made to
    # match; the full digest comes from independent public records of this file (docs/model.md).
    digest="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
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
