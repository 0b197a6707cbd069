from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from model import reference
from model.architecture import LRN_ALPHA, LRN_BETA, LRN_BIAS, LRN_SIZE, AlexNetWeights, ConvLayer
from model.metadata import BVLC_PREPROCESSING, TORCHVISION_PREPROCESSING
from model.verify import sample_images
from tests.model.torch_alexnet import caffe_probabilities, torchvision_probabilities


def test_grouped_convolution_matches_torch() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((2, 8, 11, 11))
    weight = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    conv = ConvLayer("conv", 8, 6, kernel=3, stride=2, pad=1, groups=2, lrn=False, pool=False)
    expected = functional.conv2d(
        torch.from_numpy(inputs),
        torch.from_numpy(weight).double(),
        torch.from_numpy(bias).double(),
        stride=2,
        padding=1,
        groups=2,
    ).numpy()
    np.testing.assert_allclose(reference.convolve(inputs, weight, bias, conv), expected, rtol=1e-12, atol=1e-12)


def test_local_response_norm_matches_torch() -> None:
    inputs = np.random.default_rng(1).uniform(0, 100, (2, 9, 4, 4))
    expected = functional.local_response_norm(
        torch.from_numpy(inputs), LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_BIAS
    ).numpy()
    np.testing.assert_allclose(reference.local_response_norm(inputs), expected, rtol=1e-12)


def test_max_pool_matches_torch() -> None:
    inputs = np.random.default_rng(2).standard_normal((1, 3, 13, 13))
    expected = functional.max_pool2d(torch.from_numpy(inputs), 3, 2).numpy()
    np.testing.assert_array_equal(reference.max_pool(inputs), expected)


def test_softmax_rows_sum_to_one_without_overflow() -> None:
    probabilities = reference.softmax(np.array([[1000.0, 999.0, -1000.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0])
    assert probabilities[0, 0] > probabilities[0, 1] > probabilities[0, 2]


def test_bvlc_forward_matches_caffe_semantics_in_torch(bvlc_weights: AlexNetWeights) -> None:
    images = sample_images(BVLC_PREPROCESSING, batch=2, seed=3)
    np.testing.assert_allclose(
        reference.forward(bvlc_weights, images), caffe_probabilities(bvlc_weights, images), rtol=0, atol=1e-10
    )


def test_torchvision_forward_matches_torchvision_module(torchvision_weights: AlexNetWeights) -> None:
    images = sample_images(TORCHVISION_PREPROCESSING, batch=2, seed=4)
    np.testing.assert_allclose(
        reference.forward(torchvision_weights, images),
        torchvision_probabilities(torchvision_weights, images),
        rtol=0,
        atol=1e-10,
    )
