"""The test writer itself, decoded by the protobuf runtime from a descriptor with caffe.proto's fields.

This guards against the reader and the writer sharing one misreading of the format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # type: ignore[import-untyped]

from tests.model.caffe_writer import caffemodel

FieldType = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = FieldType.LABEL_OPTIONAL, FieldType.LABEL_REPEATED

# (message, [(field name, number, label, type, message type or None, packed)]) from caffe.proto.
FieldSpec = tuple[str, int, int, int, str | None, bool]
CAFFE_SUBSET: list[tuple[str, list[FieldSpec]]] = [
    ("BlobShape", [("dim", 1, REPEATED, FieldType.TYPE_INT64, None, True)]),
    (
        "BlobProto",
        [
            ("shape", 7, OPTIONAL, FieldType.TYPE_MESSAGE, ".caffe.BlobShape", False),
            ("data", 5, REPEATED, FieldType.TYPE_FLOAT, None, True),
            ("num", 1, OPTIONAL, FieldType.TYPE_INT64, None, False),
            ("channels", 2, OPTIONAL, FieldType.TYPE_INT64, None, False),
            ("height", 3, OPTIONAL, FieldType.TYPE_INT64, None, False),
            ("width", 4, OPTIONAL, FieldType.TYPE_INT64, None, False),
        ],
    ),
    (
        "V1LayerParameter",
        [
            ("name", 4, OPTIONAL, FieldType.TYPE_STRING, None, False),
            # An enum in caffe.proto; int32 has the same varint encoding.
            ("type", 5, OPTIONAL, FieldType.TYPE_INT32, None, False),
            ("blobs", 6, REPEATED, FieldType.TYPE_MESSAGE, ".caffe.BlobProto", False),
            ("blobs_lr", 7, REPEATED, FieldType.TYPE_FLOAT, None, False),
        ],
    ),
    (
        "LayerParameter",
        [
            ("name", 1, OPTIONAL, FieldType.TYPE_STRING, None, False),
            ("type", 2, OPTIONAL, FieldType.TYPE_STRING, None, False),
            ("blobs", 7, REPEATED, FieldType.TYPE_MESSAGE, ".caffe.BlobProto", False),
        ],
    ),
    (
        "NetParameter",
        [
            ("name", 1, OPTIONAL, FieldType.TYPE_STRING, None, False),
            ("layer", 100, REPEATED, FieldType.TYPE_MESSAGE, ".caffe.LayerParameter", False),
            ("layers", 2, REPEATED, FieldType.TYPE_MESSAGE, ".caffe.V1LayerParameter", False),
        ],
    ),
]


def net_parameter_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe", syntax="proto2")
    for message_name, fields in CAFFE_SUBSET:
        message = file.message_type.add(name=message_name)
        for name, number, label, field_type, type_name, packed in fields:
            field = message.field.add(name=name, number=number, label=label, type=field_type)
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


TINY = {
    "conv1": (np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), np.array([0.5, -0.5], np.float32)),
    "fc8": (np.ones((4, 6), np.float32), np.zeros(4, np.float32)),
}
TINY_LAYERS = [("data", "Data"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("fc8", "InnerProduct")]


def test_v1_writer_output_parses_as_caffe_net_parameter() -> None:
    net = net_parameter_class().FromString(caffemodel(TINY, "v1", TINY_LAYERS))
    assert net.name == "AlexNet"
    assert [(layer.name, layer.type) for layer in net.layers] == [("data", 5), ("conv1", 4), ("relu1", 18), ("fc8", 14)]
    conv_weight, conv_bias = net.layers[1].blobs
    assert (conv_weight.num, conv_weight.channels, conv_weight.height, conv_weight.width) == (2, 3, 2, 2)
    assert list(conv_weight.data) == list(range(24))
    assert (conv_bias.num, conv_bias.channels, conv_bias.height, conv_bias.width) == (1, 1, 1, 2)
    assert list(net.layers[1].blobs_lr) == [1.0, 2.0]
    assert (net.layers[3].blobs[0].height, net.layers[3].blobs[0].width) == (4, 6)


def test_current_writer_output_parses_as_caffe_net_parameter() -> None:
    net = net_parameter_class().FromString(caffemodel(TINY, "current", TINY_LAYERS))
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("data", "Data"),
        ("conv1", "Convolution"),
        ("relu1", "ReLU"),
        ("fc8", "InnerProduct"),
    ]
    assert list(net.layer[1].blobs[0].shape.dim) == [2, 3, 2, 2]
    assert list(net.layer[3].blobs[0].shape.dim) == [4, 6]
    assert list(net.layer[1].blobs[1].data) == [0.5, -0.5]
