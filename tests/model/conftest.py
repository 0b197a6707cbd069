"""Shared fixtures: full-size weights and exported models are built once per session (about 240 MB each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from caffe_writer import caffemodel, raw_layers
from torch_alexnet import torchvision_module

from model.architecture import BVLC_ALEXNET, TORCHVISION_ALEXNET, AlexNetWeights
from model.export import ExportSummary, export_model
from model.random_weights import random_weights


@pytest.fixture(scope="session")
def bvlc_weights() -> AlexNetWeights:
    return random_weights(BVLC_ALEXNET, seed=1)


@pytest.fixture(scope="session")
def torchvision_weights() -> AlexNetWeights:
    return random_weights(TORCHVISION_ALEXNET, seed=2)


@pytest.fixture(scope="session")
def random_export(tmp_path_factory: pytest.TempPathFactory) -> ExportSummary:
    output = tmp_path_factory.mktemp("random") / "alexnet.onnx"
    return export_model("random", output=output, cache_dir=output.parent / "cache", progress=False)


@pytest.fixture(scope="session")
def v1_caffemodel(tmp_path_factory: pytest.TempPathFactory, bvlc_weights: AlexNetWeights) -> Path:
    """The 2014 release's layout (V1 `layers`, 4-D legacy blobs) with random weights."""
    path = tmp_path_factory.mktemp("caffe") / "bvlc_alexnet.caffemodel"
    path.write_bytes(caffemodel(raw_layers(bvlc_weights), "v1"))
    return path


@pytest.fixture(scope="session")
def torchvision_checkpoint(tmp_path_factory: pytest.TempPathFactory, torchvision_weights: AlexNetWeights) -> Path:
    """`torch.save(model.state_dict())` of torchvision's AlexNet layout: torch's zip format."""
    path = tmp_path_factory.mktemp("torchvision") / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision_module(torchvision_weights).state_dict(), path)
    return path
