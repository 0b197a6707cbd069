"""Deterministic seeded weights for running the service without any download (marked untrained)."""

from __future__ import annotations

import math

import numpy as np

from model.architecture import AlexNetWeights, ArchitectureSpec, LayerWeights

# The last layer is kept small so that the untrained logits stay within a few units and the
# probabilities are spread out rather than one-hot; that keeps verification meaningful.
LOGIT_LAYER_GAIN = 0.05


def random_weights(spec: ArchitectureSpec, seed: int = 0) -> AlexNetWeights:
    """He-normal weights and zero biases drawn from `numpy.random.default_rng(seed)` in layer order."""
    rng = np.random.default_rng(seed)
    layers = {}
    for index, layer in enumerate(spec.layers):
        fan_in = math.prod(layer.weight_shape[1:])
        gain = 1.0 if index < len(spec.layers) - 1 else LOGIT_LAYER_GAIN
        scale = np.float32(gain * math.sqrt(2.0 / fan_in))
        weight = rng.standard_normal(layer.weight_shape, dtype=np.float32) * scale
        layers[layer.name] = LayerWeights(weight=weight, bias=np.zeros(layer.bias_shape, dtype=np.float32))
    return AlexNetWeights(spec=spec, layers=layers)
