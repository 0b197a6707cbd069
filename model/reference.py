"""An independent numpy implementation of both AlexNet variants, in float64.

It shares only the layer table with the ONNX graph: every operation (grouped convolution via
im2col, LRN, max pooling, matmul, softmax) is written out here, so `verify` compares two
implementations rather than one graph with itself.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from model.architecture import (
    LRN_ALPHA,
    LRN_BETA,
    LRN_BIAS,
    LRN_SIZE,
    POOL_KERNEL,
    POOL_STRIDE,
    AlexNetWeights,
    ConvLayer,
)

DoubleArray = npt.NDArray[np.float64]


def forward(weights: AlexNetWeights, images: npt.NDArray[np.float32]) -> DoubleArray:
    """Class probabilities [N, 1000] for preprocessed images [N, 3, H, W]."""
    activations: DoubleArray = images.astype(np.float64)
    for conv in weights.spec.convs:
        layer = weights.layers[conv.name]
        activations = relu(convolve(activations, layer.weight, layer.bias, conv))
        if conv.lrn:
            activations = local_response_norm(activations)
        if conv.pool:
            activations = max_pool(activations)
    activations = activations.reshape(activations.shape[0], -1)
    for linear in weights.spec.linears:
        layer = weights.layers[linear.name]
        activations = activations @ layer.weight.astype(np.float64).T + layer.bias
        if linear.relu:
            activations = relu(activations)
    return softmax(activations)


def convolve(
    inputs: DoubleArray, weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], conv: ConvLayer
) -> DoubleArray:
    """Grouped 2-D convolution: each group's patches (im2col) times that group's filters."""
    batch, channels = inputs.shape[:2]
    # Group count from the weight shape itself: [out, in/groups, k, k].
    groups = channels // weight.shape[1]
    padded = np.pad(inputs, ((0, 0), (0, 0), (conv.pad, conv.pad), (conv.pad, conv.pad)))
    windows = sliding_window_view(padded, (conv.kernel, conv.kernel), axis=(2, 3))
    windows = windows[:, :, :: conv.stride, :: conv.stride]  # [N, C, Ho, Wo, k, k]
    out_h, out_w = windows.shape[2:4]
    in_per_group = channels // groups
    out_per_group = weight.shape[0] // groups
    outputs = []
    for group in range(groups):
        patches = windows[:, group * in_per_group : (group + 1) * in_per_group]
        columns = patches.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, -1)
        filters = weight[group * out_per_group : (group + 1) * out_per_group].reshape(out_per_group, -1)
        outputs.append(columns @ filters.astype(np.float64).T)
    stacked = np.concatenate(outputs, axis=1) + bias
    return stacked.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)


def relu(inputs: DoubleArray) -> DoubleArray:
    return np.maximum(inputs, 0.0)


def local_response_norm(inputs: DoubleArray) -> DoubleArray:
    """Across-channel LRN: x / (k + alpha/n * sum of squares over n neighbouring channels)^beta."""
    half = LRN_SIZE // 2
    squares = np.pad(inputs**2, ((0, 0), (half, half), (0, 0), (0, 0)))
    channels = inputs.shape[1]
    window_sums = sum(squares[:, offset : offset + channels] for offset in range(LRN_SIZE))
    scale = LRN_BIAS + (LRN_ALPHA / LRN_SIZE) * window_sums
    result: DoubleArray = inputs / scale**LRN_BETA
    return result


def max_pool(inputs: DoubleArray) -> DoubleArray:
    """3x3 stride-2 max pool over valid windows (rounds down, equal to Caffe's round-up here)."""
    windows = sliding_window_view(inputs, (POOL_KERNEL, POOL_KERNEL), axis=(2, 3))
    result: DoubleArray = windows[:, :, ::POOL_STRIDE, ::POOL_STRIDE].max(axis=(4, 5))
    return result


def softmax(logits: DoubleArray) -> DoubleArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: DoubleArray = shifted / shifted.sum(axis=1, keepdims=True)
    return result
