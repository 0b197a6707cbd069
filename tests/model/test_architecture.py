from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.architecture import (
    BVLC_ALEXNET,
    TORCHVISION_ALEXNET,
    AlexNetWeights,
    LayerWeights,
    feature_map_sizes,
    pooled_size,
)
from model.errors import WeightsFormatError


def test_bvlc_feature_maps_match_the_paper() -> None:
    assert feature_map_sizes(BVLC_ALEXNET) == [27, 13, 13, 13, 6]


@pytest.mark.parametrize("input_size", [224, 227])
def test_torchvision_features_are_already_6x6_so_adaptive_pool_is_identity(input_size: int) -> None:
    assert feature_map_sizes(TORCHVISION_ALEXNET, input_size)[-1] == 6


def test_caffe_round_up_pooling_equals_round_down_at_bvlc_sizes() -> None:
    for size in (55, 27, 13):
        assert pooled_size(size, ceil_mode=True) == pooled_size(size, ceil_mode=False)


def test_round_up_pooling_would_differ_for_torchvision_conv1_at_227() -> None:
    # conv1 with pad 2 gives 56x56 at 227 input: torch's floor pooling gives 27, Caffe's ceil 28.
    assert (pooled_size(56, ceil_mode=False), pooled_size(56, ceil_mode=True)) == (27, 28)


def test_bvlc_groups_are_encoded_in_weight_shapes() -> None:
    shapes = {conv.name: conv.weight_shape for conv in BVLC_ALEXNET.convs}
    assert shapes["conv2"] == (256, 48, 5, 5)
    assert shapes["conv4"] == (384, 192, 3, 3)
    assert shapes["conv5"] == (256, 192, 3, 3)


def test_weights_reject_a_missing_layer(bvlc_weights: AlexNetWeights) -> None:
    layers = {name: layer for name, layer in bvlc_weights.layers.items() if name != "fc7"}
    with pytest.raises(WeightsFormatError, match="lack layer.*fc7"):
        AlexNetWeights(spec=BVLC_ALEXNET, layers=layers)


def test_weights_reject_a_wrong_shape(bvlc_weights: AlexNetWeights) -> None:
    layers = dict(bvlc_weights.layers)
    layers["conv2"] = LayerWeights(weight=np.zeros((256, 96, 5, 5), np.float32), bias=layers["conv2"].bias)
    with pytest.raises(
        WeightsFormatError, match=r"conv2 weight has shape \[256, 96, 5, 5\], expected \[256, 48, 5, 5\]"
    ):
        AlexNetWeights(spec=BVLC_ALEXNET, layers=layers)


def test_weights_reject_nan(bvlc_weights: AlexNetWeights) -> None:
    layers = dict(bvlc_weights.layers)
    bias = layers["fc8"].bias.copy()
    bias[3] = np.nan
    layers["fc8"] = dataclasses.replace(layers["fc8"], bias=bias)
    with pytest.raises(WeightsFormatError, match="fc8 bias contains NaN"):
        AlexNetWeights(spec=BVLC_ALEXNET, layers=layers)


def test_weights_reject_float64(bvlc_weights: AlexNetWeights) -> None:
    layers = dict(bvlc_weights.layers)
    layers["fc8"] = dataclasses.replace(layers["fc8"], bias=layers["fc8"].bias.astype(np.float64))
    with pytest.raises(WeightsFormatError, match="fc8 bias is float64"):
        AlexNetWeights(spec=BVLC_ALEXNET, layers=layers)


def test_named_arrays_follow_layer_order(bvlc_weights: AlexNetWeights) -> None:
    names = [name for name, _ in bvlc_weights.named_arrays()]
    assert names[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert names[-1] == "fc8.bias"
    assert len(names) == 16
