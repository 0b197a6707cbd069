from __future__ import annotations

import numpy as np

from model.architecture import BVLC_ALEXNET, AlexNetWeights
from model.random_weights import random_weights


def test_same_seed_gives_same_weights_and_hash(bvlc_weights: AlexNetWeights) -> None:
    again = random_weights(BVLC_ALEXNET, seed=1)
    assert again.sha256() == bvlc_weights.sha256()
    np.testing.assert_array_equal(again.layers["fc8"].weight, bvlc_weights.layers["fc8"].weight)


def test_other_seed_gives_other_weights(bvlc_weights: AlexNetWeights) -> None:
    assert random_weights(BVLC_ALEXNET, seed=0).sha256() != bvlc_weights.sha256()


def test_hash_covers_every_array(bvlc_weights: AlexNetWeights) -> None:
    layers = dict(bvlc_weights.layers)
    bias = layers["conv5"].bias.copy()
    bias[0] += 1.0
    layers["conv5"] = type(layers["conv5"])(weight=layers["conv5"].weight, bias=bias)
    assert AlexNetWeights(spec=BVLC_ALEXNET, layers=layers).sha256() != bvlc_weights.sha256()
