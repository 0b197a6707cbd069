"""Half precision: the same network with float16 weights and activations, float32 at the edges.

The input stays float32 (the service's preprocessing is unchanged) and is cast once; the logits are cast
back to float32 before the softmax, so the probabilities keep full precision where it matters most.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.metadata import INPUT_NAME

HALF_INPUT = f"{INPUT_NAME}.fp16"


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 graph built by `model.graph.build_model`."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for tensor in graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for node in graph.node:
        node.input[:] = [HALF_INPUT if name == INPUT_NAME else name for name in node.input]
    (softmax,) = [node for node in graph.node if node.op_type == "Softmax"]
    logits = softmax.input[0]
    softmax.input[0] = f"{logits}.fp32"
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], [HALF_INPUT], name=HALF_INPUT, to=TensorProto.FLOAT16),
        *[node for node in graph.node if node is not softmax],
        helper.make_node("Cast", [logits], [f"{logits}.fp32"], name=f"{logits}.fp32", to=TensorProto.FLOAT),
        softmax,
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(half)
    return half
