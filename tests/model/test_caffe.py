from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from model.architecture import BVLC_ALEXNET, AlexNetWeights
from model.caffe import CaffeBlob, CaffeLayer, parse_net, read_caffemodel, weights_from_layers
from model.errors import WeightsFormatError
from tests.model.caffe_writer import (
    BVLC_TRAIN_LAYERS,
    blob,
    caffemodel,
    message_field,
    raw_layers,
    string_field,
    unpacked_float_field,
    varint_field,
)


def assert_same_weights(actual: AlexNetWeights, expected: AlexNetWeights) -> None:
    for (name, array), (_, other) in zip(actual.named_arrays(), expected.named_arrays(), strict=True):
        np.testing.assert_array_equal(array, other, err_msg=name)


def test_reads_v1_layout_of_the_2014_release(v1_caffemodel: Path, bvlc_weights: AlexNetWeights) -> None:
    assert_same_weights(read_caffemodel(v1_caffemodel), bvlc_weights)


def test_reads_current_layout(tmp_path: Path, bvlc_weights: AlexNetWeights) -> None:
    path = tmp_path / "current.caffemodel"
    path.write_bytes(caffemodel(raw_layers(bvlc_weights), "current"))
    assert_same_weights(read_caffemodel(path), bvlc_weights)


def test_v1_file_keeps_weightless_layers_in_bvlc_order(v1_caffemodel: Path) -> None:
    layers = parse_net(v1_caffemodel.read_bytes())
    assert [layer.name for layer in layers] == [name for name, _ in BVLC_TRAIN_LAYERS]
    assert {layer.type for layer in layers if not layer.blobs} >= {"V1 type 5", "V1 type 18", "V1 type 21"}
    assert [layer.blobs[0].shape for layer in layers if layer.name == "fc6"] == [(1, 1, 4096, 9216)]


def test_truncated_file_fails_clearly(v1_caffemodel: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(v1_caffemodel.read_bytes()[:150_000_000])
    with pytest.raises(WeightsFormatError, match="not a valid Caffe model: .*truncated"):
        read_caffemodel(truncated)


def test_not_a_caffemodel_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "pickle.caffemodel"
    path.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(WeightsFormatError, match="is not a valid Caffe model"):
        read_caffemodel(path)


def _write_with(tmp_path: Path, weights: AlexNetWeights, name: str, *arrays: npt.NDArray[np.float32]) -> Path:
    layers = raw_layers(weights)
    layers[name] = arrays
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(caffemodel(layers, "v1"))
    return path


def test_ungrouped_conv2_is_rejected_with_group_count(tmp_path: Path, bvlc_weights: AlexNetWeights) -> None:
    path = _write_with(
        tmp_path, bvlc_weights, "conv2", np.zeros((256, 96, 5, 5), np.float32), np.zeros(256, np.float32)
    )
    with pytest.raises(WeightsFormatError, match="conv2 weights take 96 of 96 input channels .* 1 group.* has 2"):
        read_caffemodel(path)


@pytest.fixture(scope="module")
def v1_layers(v1_caffemodel: Path) -> list[CaffeLayer]:
    return parse_net(v1_caffemodel.read_bytes())


def _replaced(layers: list[CaffeLayer], name: str, **changes: Any) -> list[CaffeLayer]:
    return [dataclasses.replace(layer, **changes) if layer.name == name else layer for layer in layers]


def test_parsed_layers_give_the_weights(v1_layers: list[CaffeLayer], bvlc_weights: AlexNetWeights) -> None:
    assert_same_weights(weights_from_layers(v1_layers, BVLC_ALEXNET, Path("x")), bvlc_weights)


def test_wrong_fc_shape_is_rejected(v1_layers: list[CaffeLayer]) -> None:
    fc7 = next(layer for layer in v1_layers if layer.name == "fc7")
    wrong = CaffeBlob(shape=(1, 1, 1000, 4096), values=np.zeros(1000 * 4096, np.float32))
    layers = _replaced(v1_layers, "fc7", blobs=(wrong, fc7.blobs[1]))
    expected = r"fc7 weights have shape \[1, 1, 1000, 4096\], expected \[4096, 4096\]"
    with pytest.raises(WeightsFormatError, match=expected):
        weights_from_layers(layers, BVLC_ALEXNET, Path("x"))


def test_layer_without_bias_is_rejected(v1_layers: list[CaffeLayer]) -> None:
    conv3 = next(layer for layer in v1_layers if layer.name == "conv3")
    with pytest.raises(WeightsFormatError, match="conv3 has 1 blobs, expected 2"):
        weights_from_layers(_replaced(v1_layers, "conv3", blobs=conv3.blobs[:1]), BVLC_ALEXNET, Path("x"))


def test_missing_layer_is_named(v1_layers: list[CaffeLayer]) -> None:
    layers = [layer for layer in v1_layers if layer.name != "fc8"]
    with pytest.raises(WeightsFormatError, match=r"lacks layer\(s\) fc8 \(layers found: data, conv1"):
        weights_from_layers(layers, BVLC_ALEXNET, Path("x"))


def test_duplicate_layer_is_rejected(v1_layers: list[CaffeLayer]) -> None:
    with pytest.raises(WeightsFormatError, match="layer fc6 appears twice"):
        weights_from_layers([*v1_layers, v1_layers[16]], BVLC_ALEXNET, Path("x"))


def test_wrong_layer_type_is_rejected(v1_layers: list[CaffeLayer]) -> None:
    with pytest.raises(WeightsFormatError, match="conv1 is InnerProduct, expected Convolution"):
        weights_from_layers(_replaced(v1_layers, "conv1", type="InnerProduct"), BVLC_ALEXNET, Path("x"))


def test_blob_with_too_few_values_is_rejected() -> None:
    bad_blob = varint_field(1, 2) + varint_field(2, 3) + message_field(5, np.zeros(5, "<f4").tobytes())
    buffer = message_field(100, string_field(1, "conv1") + string_field(2, "Convolution") + message_field(7, bad_blob))
    with pytest.raises(WeightsFormatError, match=r"conv1: blob of shape \[2, 3, 0, 0\] should hold 0 values but has 5"):
        parse_net(buffer)


def test_unpacked_and_double_data_are_accepted() -> None:
    unpacked = message_field(7, message_field(1, b"\x02")) + b"".join(unpacked_float_field(5, v) for v in (1.5, -2.0))
    doubles = message_field(7, message_field(1, b"\x01")) + message_field(8, np.array([0.25], "<f8").tobytes())
    buffer = message_field(
        100,
        string_field(1, "x") + string_field(2, "Convolution") + message_field(7, unpacked) + message_field(7, doubles),
    )
    (layer,) = parse_net(buffer)
    assert layer.blobs[0].shape == (2,)
    np.testing.assert_array_equal(layer.blobs[0].values, [1.5, -2.0])
    np.testing.assert_array_equal(layer.blobs[1].values, [0.25])


def test_current_layout_blob_shape_is_used() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    buffer = message_field(
        100, string_field(1, "fc") + string_field(2, "InnerProduct") + message_field(7, blob(array, "current"))
    )
    (layer,) = parse_net(buffer)
    assert layer.blobs[0].shape == (2, 3)
    np.testing.assert_array_equal(layer.blobs[0].values.reshape(2, 3), array)


def test_empty_file_has_no_layers(tmp_path: Path) -> None:
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(WeightsFormatError, match="has no layers"):
        read_caffemodel(path)
