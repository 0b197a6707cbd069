"""Write `.caffemodel` files byte by byte, independently of `model.caffe`'s reader.

A hand-rolled protobuf encoder with caffe.proto's field numbers, so the reader is tested against
the wire format itself rather than against its own mirror image. The layer lists are those of
BVLC's bvlc_alexnet: the V1 file is the training net the 2014 release was saved from (data layer,
SOFTMAX_LOSS), the current-layout file is the deploy net (Input layer, Softmax "prob").
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from model.architecture import AlexNetWeights

Layout = Literal["v1", "current"]
RawLayers = Mapping[str, tuple[npt.NDArray[np.float32], ...]]

VARINT, LENGTH_DELIMITED, FIXED32 = 0, 2, 5

# V1LayerParameter.LayerType enum values from caffe.proto.
V1_TYPES = {
    "Data": 5,
    "Convolution": 4,
    "ReLU": 18,
    "LRN": 15,
    "Pooling": 17,
    "InnerProduct": 14,
    "Dropout": 6,
    "SoftmaxWithLoss": 21,
    "Softmax": 20,
}

BVLC_TRAIN_LAYERS = [
    ("data", "Data"),
    ("conv1", "Convolution"),
    ("relu1", "ReLU"),
    ("norm1", "LRN"),
    ("pool1", "Pooling"),
    ("conv2", "Convolution"),
    ("relu2", "ReLU"),
    ("norm2", "LRN"),
    ("pool2", "Pooling"),
    ("conv3", "Convolution"),
    ("relu3", "ReLU"),
    ("conv4", "Convolution"),
    ("relu4", "ReLU"),
    ("conv5", "Convolution"),
    ("relu5", "ReLU"),
    ("pool5", "Pooling"),
    ("fc6", "InnerProduct"),
    ("relu6", "ReLU"),
    ("drop6", "Dropout"),
    ("fc7", "InnerProduct"),
    ("relu7", "ReLU"),
    ("drop7", "Dropout"),
    ("fc8", "InnerProduct"),
    ("loss", "SoftmaxWithLoss"),
]
BVLC_DEPLOY_LAYERS = [("data", "Input"), *BVLC_TRAIN_LAYERS[1:-1], ("prob", "Softmax")]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def varint_field(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(value)


def message_field(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    return message_field(field, text.encode())


def unpacked_float_field(field: int, value: float) -> bytes:
    return tag(field, FIXED32) + struct.pack("<f", value)


def blob(array: npt.NDArray[np.float32], layout: Layout) -> bytes:
    """BlobProto: legacy num/channels/height/width for V1 (1-padded to 4-D), `shape` otherwise."""
    if layout == "v1":
        dims = (1,) * (4 - array.ndim) + array.shape
        header = b"".join(varint_field(field, dim) for field, dim in zip((1, 2, 3, 4), dims, strict=True))
    else:
        header = message_field(7, message_field(1, b"".join(varint(dim) for dim in array.shape)))
    return header + message_field(5, np.ascontiguousarray(array, dtype="<f4").tobytes())


def layer(name: str, layer_type: str, blobs: tuple[npt.NDArray[np.float32], ...], layout: Layout) -> bytes:
    if layout == "v1":
        body = string_field(2, "data" if name != "data" else "") + string_field(3, name) + string_field(4, name)
        body += varint_field(5, V1_TYPES[layer_type])
        for learning_rate in (1.0, 2.0) if blobs else ():
            body += unpacked_float_field(7, learning_rate)  # blobs_lr, ignored by the reader
        if layer_type == "Convolution":
            body += message_field(10, varint_field(1, len(blobs[0]) if blobs else 0) + varint_field(4, 3))
        body += b"".join(message_field(6, blob(array, layout)) for array in blobs)
        return message_field(2, body)
    body = string_field(1, name) + string_field(2, layer_type) + string_field(3, "data") + string_field(4, name)
    body += message_field(6, unpacked_float_field(3, 1.0))  # ParamSpec.lr_mult, ignored
    body += b"".join(message_field(7, blob(array, layout)) for array in blobs)
    if layer_type == "Convolution":
        body += message_field(106, varint_field(1, len(blobs[0]) if blobs else 0))
    return message_field(100, body)


def caffemodel(raw_layers: RawLayers, layout: Layout, layer_list: list[tuple[str, str]] | None = None) -> bytes:
    """A serialised NetParameter; layers named in `raw_layers` get those blobs, the rest none."""
    if layer_list is None:
        layer_list = BVLC_TRAIN_LAYERS if layout == "v1" else BVLC_DEPLOY_LAYERS
    parts = [string_field(1, "AlexNet")]
    parts += [layer(name, layer_type, tuple(raw_layers.get(name, ())), layout) for name, layer_type in layer_list]
    return b"".join(parts)


def raw_layers(weights: AlexNetWeights) -> dict[str, tuple[npt.NDArray[np.float32], ...]]:
    return {name: (layer.weight, layer.bias) for name, layer in weights.layers.items()}
