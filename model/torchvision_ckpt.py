"""Read torchvision's AlexNet checkpoint (`torch.save(state_dict)`) without torch and without running pickle code.

A checkpoint is a pickle, and unpickling can call any importable function. The unpickler here
resolves only the few globals a state dict of plain tensors needs, each to a local stand-in that
builds numpy arrays; any other global (`os.system`, `builtins.eval`, a torch module class...) stops
the load with an error that names it. Tensor bytes are read from the archive, never executed.
Tensors are bounds-checked views of storages the file declares, so a crafted file cannot read past
a buffer or change the reader (`RestrictedUnpickler`); tests/model/test_checkpoint_fuzz.py fuzzes this.

Both of torch's formats are read: the zip archive (torch >= 1.6: `<name>/data.pkl` plus one
`<name>/data/<key>` file per storage) and the older stream of pickles with the storages appended.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard, cast

import numpy as np
import numpy.typing as npt

from model.architecture import TORCHVISION_ALEXNET, AlexNetWeights, ArchitectureSpec, LayerWeights
from model.errors import WeightsFormatError

# state_dict key prefix of each layer in torchvision.models.AlexNet.
TORCHVISION_KEYS = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}

# What unpickling or unzipping damaged bytes can raise (as opposed to a bug in this module).
CORRUPT_FILE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    struct.error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
)

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


@dataclass(frozen=True)
class StorageType:
    """Stand-in for `torch.FloatStorage` and friends: only the element type matters."""

    name: str
    dtype: np.dtype[Any]


STORAGE_TYPES = {
    name: StorageType(name, np.dtype(dtype))
    for name, dtype in (
        ("FloatStorage", "<f4"),
        ("DoubleStorage", "<f8"),
        ("HalfStorage", "<f2"),
    )
}


# Below numpy's limit of 64; the tensors of a state dict have at most 4.
MAX_TENSOR_DIMENSIONS = 32


def _tensor_view(storage: npt.NDArray[Any], offset: object, size: object, stride: object) -> npt.NDArray[Any]:
    """A read-only strided view of a 1-D storage, refused unless every element it covers lies inside it.

    A view rather than a copy because the legacy format fills storages in after the pickle. It never has
    more elements than its storage, so a few bytes of pickle cannot ask for gigabytes.
    """
    if not (
        _is_count(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride) <= MAX_TENSOR_DIMENSIONS
        and all(map(_is_count, (*size, *stride)))
    ):
        raise WeightsFormatError(
            f"a tensor has invalid geometry: offset {offset!r:.40}, size {size!r:.80}, stride {stride!r:.80}"
        )
    dims: tuple[int, ...] = size
    steps: tuple[int, ...] = stride
    elements = math.prod(dims)
    if elements > storage.size:
        raise WeightsFormatError(f"a tensor of size {list(dims)} has more elements than its storage ({storage.size})")
    if elements == 0:
        return np.zeros(dims, dtype=storage.dtype)
    last = offset + sum((dim - 1) * step for dim, step in zip(dims, steps, strict=True))
    if last >= storage.size:
        raise WeightsFormatError(f"a tensor of size {list(dims)} reaches past the end of its storage")
    # A dimension of length 1 is never stepped along, so its stride (however large) does not matter.
    strides = [step * storage.itemsize if dim > 1 else 0 for dim, step in zip(dims, steps, strict=True)]
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=dims, strides=strides, writeable=False)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals a state dict of tensors needs; storages come from `load_storage`.

    Memory safety rests on three rules. A tensor is rebuilt only from a storage this unpickler's
    `persistent_load` returned (checked by identity), so it can never be a view of a view. Every object
    handed out is new to this load, so a pickle cannot change the reader itself. `BUILD` (which sets
    attributes or calls `__setstate__`, numpy's included) is refused except on a state dict this load made.
    This is pickle's pure-Python unpickler: only that one lets a subclass replace an opcode.
    """

    def __init__(self, stream: IO[bytes], load_storage: Callable[[str, StorageType, int], npt.NDArray[Any]]) -> None:
        super().__init__(stream)
        self._load_storage = load_storage
        # By id, with the object itself so the id stays unique for the whole load.
        self._storages: dict[int, npt.NDArray[Any]] = {}
        self._tensors: dict[int, npt.NDArray[Any]] = {}
        self._state_dicts: dict[int, OrderedDict[Any, Any]] = {}
        self._globals: dict[tuple[str, str], object] = {
            ("collections", "OrderedDict"): self._new_state_dict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            **{("torch", name): StorageType(name, storage.dtype) for name, storage in STORAGE_TYPES.items()},
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise WeightsFormatError(
                f"it refers to the forbidden global {module}.{name}; a weights file should hold only tensors, "
                "so it was not loaded (nothing in it was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsFormatError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType) or not _is_count(numel):
            raise WeightsFormatError(f"malformed storage reference {pid!r:.80}")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise WeightsFormatError("storage views (from torch < 0.4) are not supported")
        storage = self._load_storage(str(key), storage_type, numel)
        self._storages[id(storage)] = storage
        return storage

    def _new_state_dict(self) -> OrderedDict[Any, Any]:
        """Stand-in for `collections.OrderedDict()`; torch fills it with SETITEMS."""
        state: OrderedDict[Any, Any] = OrderedDict()
        self._state_dicts[id(state)] = state
        return state

    def _rebuild_tensor(
        self, storage: object, offset: object, size: object, stride: object, *_: object
    ) -> npt.NDArray[Any]:
        """Stand-in for `torch._utils._rebuild_tensor_v2`."""
        if not isinstance(storage, np.ndarray) or self._storages.get(id(storage)) is not storage:
            raise WeightsFormatError("a tensor refers to something that is not a storage of this file")
        tensor = _tensor_view(storage, offset, size, stride)
        self._tensors[id(tensor)] = tensor
        return tensor

    def _rebuild_parameter(self, data: object, *_: object) -> npt.NDArray[Any]:
        """Stand-in for `torch._utils._rebuild_parameter`: a Parameter is its data here."""
        if not isinstance(data, np.ndarray) or self._tensors.get(id(data)) is not data:
            raise WeightsFormatError("a parameter refers to something that is not a tensor of this file")
        return data

    def _load_build(self) -> None:
        stack: list[Any] = self.stack  # type: ignore[attr-defined]  # the pure-Python unpickler's operand stack
        state, target = stack.pop(), stack[-1]
        if self._state_dicts.get(id(target)) is not target or not isinstance(state, dict):
            raise WeightsFormatError(f"it sets the state of a {type(target).__name__}, which a state dict never does")
        # torch pickles a state dict's `_metadata` attribute; the weights do not need it.

    # Every opcode as pickle defines it, except BUILD.
    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: cast(Callable[[pickle.Unpickler], None], _load_build)}


def read_torchvision_checkpoint(path: Path, spec: ArchitectureSpec = TORCHVISION_ALEXNET) -> AlexNetWeights:
    """The weights of a torchvision AlexNet checkpoint, shape-checked against `spec`."""
    try:
        if zipfile.is_zipfile(path):
            state = _load_zip(path)
        else:
            with path.open("rb") as stream:
                state = _load_legacy(stream)
    except WeightsFormatError as error:
        raise WeightsFormatError(f"{path} is not a valid torchvision checkpoint: {error}") from None
    except OSError as error:
        raise WeightsFormatError(f"cannot read {path}: {error}") from None
    except CORRUPT_FILE_ERRORS as error:
        raise WeightsFormatError(f"{path} is corrupt or truncated ({type(error).__name__}: {error})") from None
    return weights_from_state_dict(state, spec, path)


def weights_from_state_dict(state: object, spec: ArchitectureSpec, path: Path) -> AlexNetWeights:
    if not isinstance(state, Mapping) or not all(isinstance(value, np.ndarray) for value in state.values()):
        raise WeightsFormatError(f"{path} does not hold a state_dict of tensors")
    arrays = {str(key).removeprefix("module."): value for key, value in state.items()}
    expected = {f"{prefix}.{part}" for prefix in TORCHVISION_KEYS.values() for part in ("weight", "bias")}
    missing = sorted(expected - arrays.keys())
    unexpected = sorted(arrays.keys() - expected)
    if missing or unexpected:
        raise WeightsFormatError(
            f"{path} is not a torchvision AlexNet state_dict (missing keys: {', '.join(missing) or 'none'}; "
            f"unexpected keys: {', '.join(unexpected) or 'none'})"
        )
    layers = {
        name: LayerWeights(
            weight=arrays[f"{prefix}.weight"].astype(np.float32), bias=arrays[f"{prefix}.bias"].astype(np.float32)
        )
        for name, prefix in TORCHVISION_KEYS.items()
    }
    for name, prefix in TORCHVISION_KEYS.items():
        for part, array in (("weight", layers[name].weight), ("bias", layers[name].bias)):
            expected_shape = getattr(spec.layer(name), f"{part}_shape")
            if array.shape != expected_shape:
                raise WeightsFormatError(
                    f"{path}: {prefix}.{part} has shape {list(array.shape)}, expected {list(expected_shape)}"
                )
    return AlexNetWeights(spec=spec, layers=layers)


def _load_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsFormatError("the archive has no single <name>/data.pkl")
        prefix = pickles[0].removesuffix("data.pkl")
        byteorder_name = f"{prefix}byteorder"
        if byteorder_name in archive.namelist() and archive.read(byteorder_name).strip() != b"little":
            raise WeightsFormatError("big-endian checkpoints are not supported")
        storages: dict[str, npt.NDArray[Any]] = {}

        def load_storage(key: str, storage_type: StorageType, numel: int) -> npt.NDArray[Any]:
            if key not in storages:
                try:
                    member = archive.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise WeightsFormatError(f"storage {key} is missing from the archive") from None
                # Checked before reading, so a compressed member cannot inflate to more than the pickle said.
                _check_storage_size(member.file_size, storage_type, numel, key)
                storages[key] = _storage_from_bytes(archive.read(member), storage_type, numel, key)
            return storages[key]

        with archive.open(pickles[0]) as stream:
            return RestrictedUnpickler(stream, load_storage).load()


def _load_legacy(stream: IO[bytes]) -> object:
    """torch < 1.6: magic number, protocol, sys info, the state dict, storage keys, then raw storages."""

    def no_storage(key: str, storage_type: StorageType, numel: int) -> npt.NDArray[Any]:
        raise WeightsFormatError("unexpected storage in the file header")

    header = RestrictedUnpickler(stream, no_storage)
    if header.load() != LEGACY_MAGIC_NUMBER:
        raise WeightsFormatError("it is neither a zip archive nor a legacy torch file (wrong magic number)")
    if header.load() != LEGACY_PROTOCOL_VERSION:
        raise WeightsFormatError("unsupported legacy torch protocol version")
    system = header.load()
    if isinstance(system, dict) and not system.get("little_endian", True):
        raise WeightsFormatError("big-endian checkpoints are not supported")
    declared: dict[str, tuple[StorageType, int]] = {}
    placeholders: dict[str, npt.NDArray[Any]] = {}
    file_size = os.fstat(stream.fileno()).st_size

    def declare_storage(key: str, storage_type: StorageType, numel: int) -> npt.NDArray[Any]:
        # The bytes come after the pickle: hand out an array now, fill it in place below.
        if key not in placeholders:
            if numel * storage_type.dtype.itemsize > file_size:
                raise WeightsFormatError(f"storage {key} declares {numel} elements, more than the file holds")
            declared[key] = (storage_type, numel)
            placeholders[key] = np.empty(numel, dtype=storage_type.dtype)
        return placeholders[key]

    state = RestrictedUnpickler(stream, declare_storage).load()
    keys = RestrictedUnpickler(stream, no_storage).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
        raise WeightsFormatError("the storage key list does not match the tensors")
    for key in map(str, keys):
        storage_type, numel = declared[key]
        (count,) = struct.unpack("<q", _read_exactly(stream, 8))
        if count != numel:
            raise WeightsFormatError(f"storage {key} holds {count} elements, the tensors expect {numel}")
        raw = _read_exactly(stream, numel * storage_type.dtype.itemsize)
        placeholders[key][:] = _storage_from_bytes(raw, storage_type, numel, key)
    return state


def _storage_from_bytes(raw: bytes, storage_type: StorageType, numel: int, key: str) -> npt.NDArray[Any]:
    _check_storage_size(len(raw), storage_type, numel, key)
    return np.frombuffer(raw, dtype=storage_type.dtype).astype(storage_type.dtype.newbyteorder("="))


def _check_storage_size(size: int, storage_type: StorageType, numel: int, key: str) -> None:
    if size != numel * storage_type.dtype.itemsize:
        raise WeightsFormatError(
            f"storage {key} has {size} bytes, expected {numel} {storage_type.name} elements: file truncated?"
        )


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise WeightsFormatError("file truncated")
    return data
