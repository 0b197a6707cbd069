"""The two AlexNet variants as data, and the weights container every reader produces.

The graph builder, the numpy reference and the weight readers all read these specs, so a layer's
shape or hyper-parameters are stated once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.errors import WeightsFormatError
from model.metadata import INPUT_SIZE, NUM_CLASSES, Architecture

FloatArray = npt.NDArray[np.float32]

# Local response normalisation as in the paper and BVLC's deploy.prototxt. Caffe, ONNX and torch
# all divide alpha by the window size, so these values mean the same in each.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_BIAS = 1.0

POOL_KERNEL = 3
POOL_STRIDE = 2
INPUT_CHANNELS = 3


@dataclass(frozen=True)
class ConvLayer:
    """A convolution followed by ReLU, then optionally LRN, then optionally a 3/2 max pool."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    pad: int
    groups: int
    lrn: bool
    pool: bool

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.out_channels,)


@dataclass(frozen=True)
class LinearLayer:
    """A fully connected layer; weights are [out, in] in both Caffe and torch."""

    name: str
    in_features: int
    out_features: int
    relu: bool

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.out_features,)


@dataclass(frozen=True)
class ArchitectureSpec:
    name: Architecture
    convs: tuple[ConvLayer, ...]
    linears: tuple[LinearLayer, ...]

    @property
    def layers(self) -> tuple[ConvLayer | LinearLayer, ...]:
        return (*self.convs, *self.linears)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def layer(self, name: str) -> ConvLayer | LinearLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


# Layer names follow BVLC's deploy.prototxt for both variants, so every reader maps onto one set.
BVLC_ALEXNET = ArchitectureSpec(
    name="bvlc_alexnet",
    convs=(
        ConvLayer("conv1", 3, 96, kernel=11, stride=4, pad=0, groups=1, lrn=True, pool=True),
        ConvLayer("conv2", 96, 256, kernel=5, stride=1, pad=2, groups=2, lrn=True, pool=True),
        ConvLayer("conv3", 256, 384, kernel=3, stride=1, pad=1, groups=1, lrn=False, pool=False),
        ConvLayer("conv4", 384, 384, kernel=3, stride=1, pad=1, groups=2, lrn=False, pool=False),
        ConvLayer("conv5", 384, 256, kernel=3, stride=1, pad=1, groups=2, lrn=False, pool=True),
    ),
    linears=(
        LinearLayer("fc6", 256 * 6 * 6, 4096, relu=True),
        LinearLayer("fc7", 4096, 4096, relu=True),
        LinearLayer("fc8", 4096, NUM_CLASSES, relu=False),
    ),
)

# torchvision's "one weird trick" variant: narrower, conv1 padded, no LRN, no groups. Its
# AdaptiveAvgPool2d((6, 6)) is the identity here because the feature map is already 6x6 at both
# 224 and 227 input (see `feature_map_sizes`), so the graph leaves it out.
TORCHVISION_ALEXNET = ArchitectureSpec(
    name="torchvision_alexnet",
    convs=(
        ConvLayer("conv1", 3, 64, kernel=11, stride=4, pad=2, groups=1, lrn=False, pool=True),
        ConvLayer("conv2", 64, 192, kernel=5, stride=1, pad=2, groups=1, lrn=False, pool=True),
        ConvLayer("conv3", 192, 384, kernel=3, stride=1, pad=1, groups=1, lrn=False, pool=False),
        ConvLayer("conv4", 384, 256, kernel=3, stride=1, pad=1, groups=1, lrn=False, pool=False),
        ConvLayer("conv5", 256, 256, kernel=3, stride=1, pad=1, groups=1, lrn=False, pool=True),
    ),
    linears=(
        LinearLayer("fc6", 256 * 6 * 6, 4096, relu=True),
        LinearLayer("fc7", 4096, 4096, relu=True),
        LinearLayer("fc8", 4096, NUM_CLASSES, relu=False),
    ),
)

SPECS: Mapping[Architecture, ArchitectureSpec] = {
    BVLC_ALEXNET.name: BVLC_ALEXNET,
    TORCHVISION_ALEXNET.name: TORCHVISION_ALEXNET,
}


def pooled_size(size: int, *, ceil_mode: bool) -> int:
    """Output size of a 3/2 max pool; Caffe rounds up, torch and ONNX (by default) round down."""
    span = size - POOL_KERNEL
    steps = -(-span // POOL_STRIDE) if ceil_mode else span // POOL_STRIDE
    return steps + 1


def feature_map_sizes(spec: ArchitectureSpec, input_size: int = INPUT_SIZE) -> list[int]:
    """Spatial size after each conv block, pooling with floor rounding as the ONNX graph does."""
    sizes = []
    size = input_size
    for conv in spec.convs:
        size = (size + 2 * conv.pad - conv.kernel) // conv.stride + 1
        if conv.pool:
            size = pooled_size(size, ceil_mode=False)
        sizes.append(size)
    return sizes


@dataclass(frozen=True)
class LayerWeights:
    weight: FloatArray
    bias: FloatArray


@dataclass(frozen=True)
class AlexNetWeights:
    """One full set of weights, validated against its architecture on construction."""

    spec: ArchitectureSpec
    layers: Mapping[str, LayerWeights]

    def __post_init__(self) -> None:
        validate_weights(self.spec, self.layers)

    def named_arrays(self) -> Iterator[tuple[str, FloatArray]]:
        """`conv1.weight`, `conv1.bias`, … `fc8.bias`: the fixed order used for hashing and the graph."""
        for name in self.spec.layer_names:
            yield f"{name}.weight", self.layers[name].weight
            yield f"{name}.bias", self.layers[name].bias

    def sha256(self) -> str:
        """Digest of the float32 little-endian bytes of every array, in `named_arrays` order."""
        digest = hashlib.sha256()
        for _, array in self.named_arrays():
            digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
        return digest.hexdigest()


def validate_weights(spec: ArchitectureSpec, layers: Mapping[str, LayerWeights]) -> None:
    """Raise `WeightsFormatError` naming the first missing layer or wrong shape or dtype."""
    missing = [name for name in spec.layer_names if name not in layers]
    if missing:
        raise WeightsFormatError(f"{spec.name} weights lack layer(s) {', '.join(missing)}")
    for layer in spec.layers:
        for part, array, expected in (
            ("weight", layers[layer.name].weight, layer.weight_shape),
            ("bias", layers[layer.name].bias, layer.bias_shape),
        ):
            if array.shape != expected:
                raise WeightsFormatError(
                    f"{layer.name} {part} has shape {list(array.shape)}, expected {list(expected)} for {spec.name}"
                )
            if array.dtype != np.float32:
                raise WeightsFormatError(f"{layer.name} {part} is {array.dtype}, expected float32")
            if not np.isfinite(array).all():
                raise WeightsFormatError(f"{layer.name} {part} contains NaN or infinite values")
