"""Hand-assembled torch checkpoints, opcode by opcode, for what `torch.save` would never write.

Each helper returns pickle protocol-2 opcodes that push one value; `checkpoint` wraps a state dict
expression and its storages into torch's zip layout.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Mapping, Sequence

from model.torchvision_ckpt import TORCHVISION_KEYS

STATE_DICT_KEYS = tuple(f"{prefix}.{part}" for prefix in TORCHVISION_KEYS.values() for part in ("weight", "bias"))
STORAGE_TYPE_NAMES = ("FloatStorage", "DoubleStorage", "HalfStorage")
ITEM_SIZES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2}


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def string(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def tuple_(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def ints(values: Sequence[int]) -> bytes:
    return tuple_(*(integer(value) for value in values))


def call(callable_: bytes, *arguments: bytes) -> bytes:
    return callable_ + tuple_(*arguments) + pickle.REDUCE


def storage(key: str, numel: int, storage_type: str = "FloatStorage") -> bytes:
    """The persistent reference torch writes for a storage: ("storage", type, key, location, numel)."""
    reference = tuple_(string("storage"), global_("torch", storage_type), string(key), string("cpu"), integer(numel))
    return reference + pickle.BINPERSID


def rebuild_tensor(source: bytes, offset: int, size: Sequence[int], stride: Sequence[int]) -> bytes:
    """`torch._utils._rebuild_tensor_v2(source, offset, size, stride, requires_grad, hooks)`."""
    return call(
        global_("torch._utils", "_rebuild_tensor_v2"),
        source,
        integer(offset),
        ints(size),
        ints(stride),
        pickle.NEWFALSE,
        call(global_("collections", "OrderedDict")),
    )


def build(target: bytes, state: bytes) -> bytes:
    """Push `target`, then BUILD it with `state` (`__setstate__` or a `__dict__` update)."""
    return target + state + pickle.BUILD


def setitems(target: bytes, items: Mapping[str, bytes]) -> bytes:
    return target + pickle.MARK + b"".join(string(key) + value for key, value in items.items()) + pickle.SETITEMS


def state_dict(value: bytes) -> bytes:
    """An OrderedDict holding `value` under every key AlexNet needs (memoised, so it is built once)."""
    first, *rest = STATE_DICT_KEYS
    items = string(first) + value + pickle.BINPUT + b"\x00" + b"".join(string(key) + b"h\x00" for key in rest)
    return call(global_("collections", "OrderedDict")) + pickle.MARK + items + pickle.SETITEMS


def program(*values: bytes) -> bytes:
    """A whole pickle: protocol 2, push each value, keep the last, stop."""
    return pickle.PROTO + b"\x02" + b"".join(value + pickle.POP for value in values[:-1]) + values[-1] + pickle.STOP


def checkpoint(pickled: bytes, storages: Mapping[str, bytes]) -> bytes:
    """torch's zip layout: archive/data.pkl plus archive/data/<key> per storage."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)
    return buffer.getvalue()


def stride_zero_overread() -> bytes:
    """The 2026 review's crash: a stride-0 view claims 2**40 elements of a 1-element storage; a tensor
    rebuilt from that view then reads 2**28 floats past the 4-byte buffer."""
    view = rebuild_tensor(storage("0", 1), 0, (2**40,), (0,))
    return checkpoint(program(state_dict(rebuild_tensor(view, 0, (2**28,), (1,)))), {"0": b"\x00\x00\x80\x3f"})
