"""Read AlexNet weights from a Caffe `.caffemodel` (a binary `caffe.NetParameter`) without Caffe.

A small protobuf wire-format reader rather than generated message classes: it needs only the dozen
field numbers below (checked against BVLC's src/caffe/proto/caffe.proto), skips everything else
unparsed, and turns each packed `data` field into a numpy array straight from the file's bytes,
where the protobuf runtime would first build a 38-million-element Python container for fc6 alone.

Both layouts are read: the V1 one of the 2014 BVLC release (`NetParameter.layers` = 2,
`V1LayerParameter{name=4, type=5 enum, blobs=6}`) and the current one (`NetParameter.layer` = 100,
`LayerParameter{name=1, type=2 string, blobs=7}`). Only conv1-5 and fc6-8 carry weights; every other
layer (data, relu, norm, pool, drop, prob, loss...) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.architecture import BVLC_ALEXNET, AlexNetWeights, ArchitectureSpec, ConvLayer, FloatArray, LayerWeights
from model.errors import WeightsFormatError

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5

# NetParameter
NET_LAYER = 100
NET_V1_LAYERS = 2
# LayerParameter
LAYER_NAME = 1
LAYER_TYPE = 2
LAYER_BLOBS = 7
# V1LayerParameter
V1_NAME = 4
V1_TYPE = 5
V1_BLOBS = 6
# BlobProto
BLOB_NUM = 1
BLOB_CHANNELS = 2
BLOB_HEIGHT = 3
BLOB_WIDTH = 4
BLOB_DATA = 5
BLOB_SHAPE = 7
BLOB_DOUBLE_DATA = 8
# BlobShape
SHAPE_DIM = 1

# V1LayerParameter.LayerType values for the two kinds that carry AlexNet's weights.
V1_CONVOLUTION = 4
V1_INNER_PRODUCT = 14
V1_TYPE_NAMES = {V1_CONVOLUTION: "Convolution", V1_INNER_PRODUCT: "InnerProduct"}


@dataclass(frozen=True)
class CaffeBlob:
    shape: tuple[int, ...]
    values: FloatArray


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    type: str
    blobs: tuple[CaffeBlob, ...]


def read_caffemodel(path: Path, spec: ArchitectureSpec = BVLC_ALEXNET) -> AlexNetWeights:
    """The conv1-5 / fc6-8 weights of a BVLC AlexNet caffemodel, shape-checked against `spec`."""
    try:
        buffer = path.read_bytes()
    except OSError as error:
        raise WeightsFormatError(f"cannot read {path}: {error.strerror}") from None
    try:
        layers = parse_net(buffer)
    except WeightsFormatError as error:
        raise WeightsFormatError(f"{path} is not a valid Caffe model: {error}") from None
    return weights_from_layers(layers, spec, path)


def weights_from_layers(layers: list[CaffeLayer], spec: ArchitectureSpec, path: Path) -> AlexNetWeights:
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.name in spec.layer_names:
            if layer.name in by_name:
                raise WeightsFormatError(f"{path}: layer {layer.name} appears twice")
            by_name[layer.name] = layer
    missing = [name for name in spec.layer_names if name not in by_name]
    if missing:
        found = ", ".join(layer.name for layer in layers) or "none"
        raise WeightsFormatError(f"{path} lacks layer(s) {', '.join(missing)} (layers found: {found})")
    weights = {}
    for target in spec.layers:
        layer = by_name[target.name]
        expected_type = "Convolution" if isinstance(target, ConvLayer) else "InnerProduct"
        if layer.type != expected_type:
            raise WeightsFormatError(f"{path}: layer {layer.name} is {layer.type}, expected {expected_type}")
        if len(layer.blobs) != 2:
            raise WeightsFormatError(
                f"{path}: layer {layer.name} has {len(layer.blobs)} blobs, expected 2 (weights and bias)"
            )
        if isinstance(target, ConvLayer):
            _check_groups(layer.blobs[0].shape, target, path)
        weights[target.name] = LayerWeights(
            weight=_fit(layer.blobs[0], target.weight_shape, f"{path}: {layer.name} weights"),
            bias=_fit(layer.blobs[1], target.bias_shape, f"{path}: {layer.name} bias"),
        )
    return AlexNetWeights(spec=spec, layers=weights)


def _check_groups(shape: tuple[int, ...], conv: ConvLayer, path: Path) -> None:
    """Derive the group count from the blob (input channels per group), not from any prototxt."""
    if len(shape) != 4 or shape[1] == 0 or conv.in_channels % shape[1] != 0:
        return  # `_fit` reports the shape itself
    groups = conv.in_channels // shape[1]
    if groups != conv.groups:
        raise WeightsFormatError(
            f"{path}: {conv.name} weights take {shape[1]} of {conv.in_channels} input channels per filter, "
            f"i.e. {groups} group(s); bvlc_alexnet has {conv.groups}"
        )


def _fit(blob: CaffeBlob, expected: tuple[int, ...], what: str) -> FloatArray:
    """Reshape a blob to `expected`; legacy 4-D blobs pad fc weights and biases with leading 1s."""
    if _without_leading_ones(blob.shape) != _without_leading_ones(expected):
        raise WeightsFormatError(f"{what} have shape {list(blob.shape)}, expected {list(expected)}")
    return blob.values.reshape(expected)


def _without_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    index = 0
    while index < len(shape) - 1 and shape[index] == 1:
        index += 1
    return shape[index:]


def parse_net(buffer: bytes) -> list[CaffeLayer]:
    """Every layer of a serialised NetParameter, in file order, in either layout."""
    layers = []
    for field, wire_type, start, end in _fields(buffer, 0, len(buffer)):
        if field == NET_LAYER and wire_type == LENGTH_DELIMITED:
            layers.append(_parse_layer(buffer, start, end, LAYER_NAME, LAYER_TYPE, LAYER_BLOBS))
        elif field == NET_V1_LAYERS and wire_type == LENGTH_DELIMITED:
            layers.append(_parse_layer(buffer, start, end, V1_NAME, V1_TYPE, V1_BLOBS))
    if not layers:
        raise WeightsFormatError("it has no layers")
    return layers


def _parse_layer(buffer: bytes, start: int, end: int, name_field: int, type_field: int, blobs_field: int) -> CaffeLayer:
    name = ""
    layer_type = ""
    blobs = []
    for field, wire_type, value_start, value_end in _fields(buffer, start, end):
        if field == name_field and wire_type == LENGTH_DELIMITED:
            name = _text(buffer, value_start, value_end)
        elif field == type_field and wire_type == LENGTH_DELIMITED:
            layer_type = _text(buffer, value_start, value_end)
        elif field == type_field and wire_type == VARINT:
            enum_value = _varint(buffer, value_start)[0]
            layer_type = V1_TYPE_NAMES.get(enum_value, f"V1 type {enum_value}")
        elif field == blobs_field and wire_type == LENGTH_DELIMITED:
            blobs.append((value_start, value_end))
    return CaffeLayer(
        name=name,
        type=layer_type,
        blobs=tuple(_parse_blob(buffer, blob_start, blob_end, name) for blob_start, blob_end in blobs),
    )


def _parse_blob(buffer: bytes, start: int, end: int, layer: str) -> CaffeBlob:
    legacy = {BLOB_NUM: 0, BLOB_CHANNELS: 0, BLOB_HEIGHT: 0, BLOB_WIDTH: 0}
    shape: list[int] | None = None
    chunks: list[FloatArray] = []
    for field, wire_type, value_start, value_end in _fields(buffer, start, end):
        if field in legacy and wire_type == VARINT:
            legacy[field] = _varint(buffer, value_start)[0]
        elif field == BLOB_SHAPE and wire_type == LENGTH_DELIMITED:
            shape = _parse_shape(buffer, value_start, value_end)
        elif field == BLOB_DATA and wire_type == LENGTH_DELIMITED:
            if (value_end - value_start) % 4:
                raise WeightsFormatError(f"layer {layer}: packed float data is not a multiple of 4 bytes")
            chunks.append(np.frombuffer(buffer, dtype="<f4", count=(value_end - value_start) // 4, offset=value_start))
        elif field == BLOB_DATA and wire_type == FIXED32:
            # Unpacked repeated floats: legal protobuf, though Caffe itself always packs them.
            chunks.append(np.frombuffer(buffer, dtype="<f4", count=1, offset=value_start))
        elif field == BLOB_DOUBLE_DATA and wire_type == LENGTH_DELIMITED:
            chunks.append(
                np.frombuffer(buffer, dtype="<f8", count=(value_end - value_start) // 8, offset=value_start).astype(
                    np.float32
                )
            )
    if shape is None:
        shape = [legacy[BLOB_NUM], legacy[BLOB_CHANNELS], legacy[BLOB_HEIGHT], legacy[BLOB_WIDTH]]
    # One copy into an aligned, native-endian, writable array owned by the result.
    values = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
    if values.size != math.prod(shape):
        raise WeightsFormatError(
            f"layer {layer}: blob of shape {shape} should hold {math.prod(shape)} values but has {values.size}"
        )
    return CaffeBlob(shape=tuple(shape), values=values)


def _parse_shape(buffer: bytes, start: int, end: int) -> list[int]:
    dims = []
    for field, wire_type, value_start, value_end in _fields(buffer, start, end):
        if field != SHAPE_DIM:
            continue
        if wire_type == VARINT:
            dims.append(_varint(buffer, value_start)[0])
        elif wire_type == LENGTH_DELIMITED:
            position = value_start
            while position < value_end:
                dim, position = _varint(buffer, position)
                dims.append(dim)
    return dims


def _fields(buffer: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) for each field of the message in [start, end)."""
    position = start
    while position < end:
        key, position = _varint(buffer, position, end)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise WeightsFormatError(f"invalid field number 0 at byte {position}")
        if wire_type == VARINT:
            _, value_end = _varint(buffer, position, end)
        elif wire_type == FIXED64:
            value_end = position + 8
        elif wire_type == FIXED32:
            value_end = position + 4
        elif wire_type == LENGTH_DELIMITED:
            length, position = _varint(buffer, position, end)
            value_end = position + length
        else:
            raise WeightsFormatError(f"unsupported wire type {wire_type} at byte {position}")
        if value_end > end:
            raise WeightsFormatError(f"field {field} runs past the end of its message at byte {end}: file truncated?")
        yield field, wire_type, position, value_end
        position = value_end


def _varint(buffer: bytes, position: int, end: int | None = None) -> tuple[int, int]:
    """Decode a base-128 varint; returns (value, position after it)."""
    limit = len(buffer) if end is None else end
    result = 0
    shift = 0
    while True:
        if position >= limit:
            raise WeightsFormatError(f"varint runs past byte {limit}: file truncated?")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift >= 70:
            raise WeightsFormatError(f"varint longer than 10 bytes at byte {position}")


def _text(buffer: bytes, start: int, end: int) -> str:
    try:
        return buffer[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise WeightsFormatError(f"invalid UTF-8 string at byte {start}") from None
