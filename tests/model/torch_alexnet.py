"""AlexNet in torch, a third implementation to check the numpy reference and the ONNX graph against.

`TorchvisionAlexNet` copies torchvision.models.AlexNet's module layout (so its `state_dict()` has the
real checkpoint keys); `caffe_forward` runs BVLC's network with Caffe's semantics (groups, LRN,
round-up pooling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from model.architecture import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_SIZE, AlexNetWeights

# The importer's key map, checked here rather than restated: `load_state_dict` is strict and every layer's
# shape differs, so a wrong or swapped key fails `torchvision_module`.
from model.torchvision_ckpt import TORCHVISION_KEYS


class TorchvisionAlexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 1000),
        )

    def forward(self, images: Any) -> Any:
        features = torch.flatten(self.avgpool(self.features(images)), 1)
        return self.classifier(features)


def torchvision_module(weights: AlexNetWeights) -> TorchvisionAlexNet:
    module = TorchvisionAlexNet().eval()
    state = {}
    for name, prefix in TORCHVISION_KEYS.items():
        state[f"{prefix}.weight"] = torch.from_numpy(weights.layers[name].weight.copy())
        state[f"{prefix}.bias"] = torch.from_numpy(weights.layers[name].bias.copy())
    module.load_state_dict(state)
    return module


def torchvision_probabilities(weights: AlexNetWeights, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    with torch.no_grad():
        logits = torchvision_module(weights).double()(torch.from_numpy(images).double())
        return np.asarray(torch.softmax(logits, dim=1).numpy())


def caffe_probabilities(weights: AlexNetWeights, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """BVLC AlexNet as Caffe computes it, in float64."""
    with torch.no_grad():
        activations = torch.from_numpy(images).double()
        for conv in weights.spec.convs:
            weight = torch.from_numpy(weights.layers[conv.name].weight).double()
            bias = torch.from_numpy(weights.layers[conv.name].bias).double()
            groups = activations.shape[1] // weight.shape[1]
            activations = functional.relu(
                functional.conv2d(activations, weight, bias, stride=conv.stride, padding=conv.pad, groups=groups)
            )
            if conv.lrn:
                activations = functional.local_response_norm(
                    activations, LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_BIAS
                )
            if conv.pool:
                activations = functional.max_pool2d(activations, 3, 2, ceil_mode=True)
        activations = torch.flatten(activations, 1)
        for linear in weights.spec.linears:
            weight = torch.from_numpy(weights.layers[linear.name].weight).double()
            bias = torch.from_numpy(weights.layers[linear.name].bias).double()
            activations = functional.linear(activations, weight, bias)
            if linear.relu:
                activations = functional.relu(activations)
        return np.asarray(torch.softmax(activations, dim=1).numpy())
