from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from model.architecture import AlexNetWeights
from model.errors import WeightsFormatError
from model.torchvision_ckpt import _tensor_view, read_torchvision_checkpoint
from tests.model.torch_alexnet import TorchvisionAlexNet, torchvision_module


def assert_same_weights(actual: AlexNetWeights, expected: AlexNetWeights) -> None:
    assert actual.sha256() == expected.sha256()


def test_reads_zip_checkpoint(torchvision_checkpoint: Path, torchvision_weights: AlexNetWeights) -> None:
    assert zipfile.is_zipfile(torchvision_checkpoint)
    assert_same_weights(read_torchvision_checkpoint(torchvision_checkpoint), torchvision_weights)


def test_reads_legacy_checkpoint(tmp_path: Path, torchvision_weights: AlexNetWeights) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(torchvision_module(torchvision_weights).state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert_same_weights(read_torchvision_checkpoint(path), torchvision_weights)


class Exploit:
    """Unpickling this runs a shell command, as a booby-trapped checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_global_is_refused_and_not_run(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        OrderedDict(weight=torch.zeros(2), payload=Exploit(marker)), path, _use_new_zipfile_serialization=zip_format
    )
    with pytest.raises(WeightsFormatError, match=r"forbidden global (os|posix)\.system.*nothing in it was executed"):
        read_torchvision_checkpoint(path)
    assert not marker.exists()


def test_builtins_eval_in_hand_made_pickle_is_refused(tmp_path: Path) -> None:
    payload = b"\x80\x02cbuiltins\neval\nq\x00X\x0a\x00\x00\x00print(666)q\x01\x85q\x02Rq\x03."
    path = tmp_path / "eval.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(WeightsFormatError, match=r"forbidden global builtins\.eval"):
        read_torchvision_checkpoint(path)


def test_whole_pickled_module_is_refused(tmp_path: Path, torchvision_weights: AlexNetWeights) -> None:
    path = tmp_path / "module.pth"
    torch.save(torchvision_module(torchvision_weights), path)
    with pytest.raises(WeightsFormatError, match="forbidden global tests.model.torch_alexnet.TorchvisionAlexNet"):
        read_torchvision_checkpoint(path)


def test_truncated_zip_fails_clearly(torchvision_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(torchvision_checkpoint.read_bytes()[:100_000_000])
    with pytest.raises(WeightsFormatError, match="truncated|not a valid"):
        read_torchvision_checkpoint(path)


def test_truncated_legacy_file_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(TorchvisionAlexNet().state_dict(), path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(WeightsFormatError, match="truncated"):
        read_torchvision_checkpoint(path)


def test_wrong_class_count_is_rejected(tmp_path: Path) -> None:
    state = TorchvisionAlexNet().state_dict()
    state["classifier.6.weight"] = torch.zeros(10, 4096)
    state["classifier.6.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(
        WeightsFormatError, match=r"classifier.6.weight has shape \[10, 4096\], expected \[1000, 4096\]"
    ):
        read_torchvision_checkpoint(path)


def test_other_architecture_is_rejected_with_key_lists(tmp_path: Path) -> None:
    state = TorchvisionAlexNet().state_dict()
    del state["features.10.bias"]
    state["features.1.running_mean"] = torch.zeros(64)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(
        WeightsFormatError, match="missing keys: features.10.bias; unexpected keys: features.1.running_mean"
    ):
        read_torchvision_checkpoint(path)


def test_not_a_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "text.pth"
    path.write_text("hello")
    with pytest.raises(WeightsFormatError, match=r"text.pth is corrupt or truncated"):
        read_torchvision_checkpoint(path)


def test_tensor_reaching_past_its_storage_is_rejected() -> None:
    with pytest.raises(WeightsFormatError, match="past the end of its storage"):
        _tensor_view(np.zeros(6, np.float32), 1, (2, 3), (3, 1))


def test_negative_strides_are_rejected() -> None:
    with pytest.raises(WeightsFormatError, match="invalid geometry"):
        _tensor_view(np.zeros(6, np.float32), 5, (6,), (-1,))


def test_strided_tensor_is_rebuilt_like_torch() -> None:
    storage = np.arange(12, dtype=np.float32)
    expected = torch.arange(12, dtype=torch.float32).as_strided((3, 2), (1, 4), 1).numpy()
    np.testing.assert_array_equal(_tensor_view(storage, 1, (3, 2), (1, 4)), expected)


def test_standard_pickle_of_plain_dict_without_tensors_is_not_a_state_dict(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pickle.dump({"a": 1}, buffer, protocol=2)
    path = tmp_path / "dict.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(WeightsFormatError, match="does not hold a state_dict of tensors"):
        read_torchvision_checkpoint(path)
