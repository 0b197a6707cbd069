"""Read torchvision's AlexNet checkpoint (`torch.save(state_dict)`) without torch and without running pickle code.

A checkpoint is a pickle, and unpickling can call any importable function. The unpickler here
resolves only the few globals a state dict of plain tensors needs, each to a local stand-in that
builds numpy arrays; any other global (`os.system`, `builtins.eval`, a torch module class...) stops
the load with an error that names it. Tensor bytes are read from the archive, never executed.

Both of torch's formats are read: the zip archive (torch >= 1.6: `<name>/data.pkl` plus one
`<name>/data/<key>` file per storage) and the older stream of pickles with the storages appended.
"""

from __future__ import annotations

import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def _rebuild_tensor(
    storage: npt.NDArray[Any], offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: object
) -> npt.NDArray[Any]:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a bounds-checked strided view of the storage.

    A view rather than a copy because the legacy format fills storages in after the pickle.
    """
    if not isinstance(storage, np.ndarray):
        raise WeightsFormatError("a tensor refers to something that is not a storage")
    if offset < 0 or any(dim < 0 for dim in size) or any(step < 0 for step in stride) or len(size) != len(stride):
        raise WeightsFormatError(f"a tensor has invalid geometry: offset {offset}, size {size}, stride {stride}")
    if math.prod(size) == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((dim - 1) * step for dim, step in zip(size, stride, strict=True))
    if last >= storage.size:
        raise WeightsFormatError(f"a tensor of size {list(size)} reaches past the end of its storage")
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[step * storage.itemsize for step in stride], writeable=False
    )


def _rebuild_parameter(data: npt.NDArray[Any], *_: object) -> npt.NDArray[Any]:
    """Stand-in for `torch._utils._rebuild_parameter`: a Parameter is its data here."""
    return data


ALLOWED_GLOBALS: Mapping[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): storage_type for name, storage_type in STORAGE_TYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `ALLOWED_GLOBALS`; storages come from `load_storage(key, storage type, numel)`."""

    def __init__(self, stream: IO[bytes], load_storage: Callable[[str, StorageType, int], npt.NDArray[Any]]) -> None:
        super().__init__(stream)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsFormatError(
                f"it refers to the forbidden global {module}.{name}; a weights file should hold only tensors, "
                "so it was not loaded (nothing in it was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsFormatError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise WeightsFormatError(f"malformed storage reference {pid!r:.80}")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise WeightsFormatError("storage views (from torch < 0.4) are not supported")
        return self._load_storage(str(key), storage_type, numel)


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
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError:
                    raise WeightsFormatError(f"storage {key} is missing from the archive") from None
                storages[key] = _storage_from_bytes(raw, storage_type, numel, key)
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

    def declare_storage(key: str, storage_type: StorageType, numel: int) -> npt.NDArray[Any]:
        # The bytes come after the pickle: hand out an array now, fill it in place below.
        if key not in placeholders:
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
    if len(raw) != numel * storage_type.dtype.itemsize:
        raise WeightsFormatError(
            f"storage {key} has {len(raw)} bytes, expected {numel} {storage_type.name} elements: file truncated?"
        )
    return np.frombuffer(raw, dtype=storage_type.dtype).astype(storage_type.dtype.newbyteorder("="))


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise WeightsFormatError("file truncated")
    return data
