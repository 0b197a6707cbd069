"""Build the ONNX graph from numpy weights with the `onnx` helper API.

No torch and no GPU: the Docker build and CI export the model with only numpy and onnx installed.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from model.architecture import (
    LRN_ALPHA,
    LRN_BETA,
    LRN_BIAS,
    LRN_SIZE,
    POOL_KERNEL,
    POOL_STRIDE,
    AlexNetWeights,
    ArchitectureSpec,
    feature_map_sizes,
    pooled_size,
)
from model.metadata import INPUT_NAME, INPUT_SIZE, NUM_CLASSES, OUTPUT_NAME, ModelCard

OPSET = 17
# IR version 8 is the one that introduced opset 17; pinning it keeps the file loadable by every
# onnxruntime that supports the opset, not only by the newest one.
IR_VERSION = 8
BATCH_AXIS = "N"
PRODUCER = "alexnet-serve"


def check_pooling_rounding(spec: ArchitectureSpec, input_size: int = INPUT_SIZE) -> None:
    """Fail if Caffe's round-up pooling would give other sizes than the graph's round-down pooling.

    BVLC AlexNet was trained with Caffe, whose pooling rounds up; ONNX MaxPool rounds down by default.
    At 227x227 input every BVLC pool divides evenly (55 -> 27, 27 -> 13, 13 -> 6), so both agree.
    torchvision rounds down itself, so only the BVLC variant needs the check.
    """
    size = input_size
    for conv in spec.convs:
        size = (size + 2 * conv.pad - conv.kernel) // conv.stride + 1
        if conv.pool:
            floor, ceil = pooled_size(size, ceil_mode=False), pooled_size(size, ceil_mode=True)
            if floor != ceil:
                raise ValueError(f"{conv.name} pool: Caffe gives {ceil}, ONNX gives {floor} at input {input_size}")
            size = floor


def build_model(weights: AlexNetWeights, card: ModelCard) -> onnx.ModelProto:
    """The full network `image [N,3,227,227] -> probabilities [N,1000]`, with the card as metadata."""
    spec = weights.spec
    if spec.name == "bvlc_alexnet":
        check_pooling_rounding(spec)
    final_size = feature_map_sizes(spec)[-1]
    flattened = spec.convs[-1].out_channels * final_size * final_size
    if flattened != spec.linears[0].in_features:
        raise ValueError(f"{spec.name}: features flatten to {flattened}, fc6 expects {spec.linears[0].in_features}")

    nodes: list[onnx.NodeProto] = []
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.named_arrays()]
    current = INPUT_NAME
    for conv in spec.convs:
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"{conv.name}.weight", f"{conv.name}.bias"],
                [conv.name],
                name=conv.name,
                kernel_shape=[conv.kernel, conv.kernel],
                strides=[conv.stride, conv.stride],
                pads=[conv.pad] * 4,
                group=conv.groups,
            )
        )
        current = _append(nodes, "Relu", current=conv.name, output=f"{conv.name}.relu")
        if conv.lrn:
            current = _append(
                nodes, "LRN", current, f"{conv.name}.lrn", size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, bias=LRN_BIAS
            )
        if conv.pool:
            current = _append(
                nodes,
                "MaxPool",
                current,
                f"{conv.name}.pool",
                kernel_shape=[POOL_KERNEL, POOL_KERNEL],
                strides=[POOL_STRIDE, POOL_STRIDE],
            )
    current = _append(nodes, "Flatten", current, "flatten", axis=1)
    # Dropout (before fc6/fc7 in torchvision, after them in Caffe) is the identity at inference.
    for linear in spec.linears:
        nodes.append(
            helper.make_node(
                "Gemm",
                [current, f"{linear.name}.weight", f"{linear.name}.bias"],
                [linear.name],
                name=linear.name,
                transB=1,
            )
        )
        current = linear.name
        if linear.relu:
            current = _append(nodes, "Relu", current, f"{linear.name}.relu")
    _append(nodes, "Softmax", current, OUTPUT_NAME, axis=1)

    graph = helper.make_graph(
        nodes,
        spec.name,
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS, 3, INPUT_SIZE, INPUT_SIZE])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_AXIS, NUM_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER, ir_version=IR_VERSION
    )
    model.doc_string = f"{spec.name} with {card.weights} weights (trained: {card.trained})"
    helper.set_model_props(model, card.to_props())
    onnx.checker.check_model(model)
    return model


def _append(nodes: list[onnx.NodeProto], op_type: str, current: str, output: str, **attributes: Any) -> str:
    nodes.append(helper.make_node(op_type, [current], [output], name=output, **attributes))
    return output
