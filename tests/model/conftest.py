"""Shared fixtures: full-size weights and exported models are built once per session (about 240 MB each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.architecture import BVLC_ALEXNET, TORCHVISION_ALEXNET, AlexNetWeights, LayerWeights
from model.export import ExportSummary
from model.random_weights import random_weights
from tests.model.caffe_writer import caffemodel, raw_layers
from tests.model.torch_alexnet import torchvision_module

FC8_SCALE = 10.0


@pytest.fixture(scope="session")
def bvlc_weights() -> AlexNetWeights:
    return random_weights(BVLC_ALEXNET, seed=1)


@pytest.fixture(scope="session")
def torchvision_weights() -> AlexNetWeights:
    """Random torchvision weights with fc8 scaled up: inputs of about +-2 would otherwise give nearly
    uniform probabilities, which would hide differences between implementations."""
    weights = random_weights(TORCHVISION_ALEXNET, seed=2)
    layers = dict(weights.layers)
    layers["fc8"] = LayerWeights(weight=layers["fc8"].weight * np.float32(FC8_SCALE), bias=layers["fc8"].bias)
    return AlexNetWeights(spec=TORCHVISION_ALEXNET, layers=layers)


@pytest.fixture(scope="session")
def random_export(served_model: ExportSummary) -> ExportSummary:
    """The seeded random-weights export (tests/conftest.py builds it once for every test package)."""
    return served_model


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
