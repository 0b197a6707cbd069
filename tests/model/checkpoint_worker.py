"""`python -m tests.model.checkpoint_worker`: load checkpoints sent on stdin, one outcome line each on stdout.

It runs outside pytest, so a checkpoint that crashes the reader (a segfault) kills only this process and the
fuzz test reports the case. Each request is an 8-byte little-endian length and the file's bytes.
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

from model.errors import WeightsFormatError
from model.torchvision_ckpt import STORAGE_TYPES, read_torchvision_checkpoint


def outcome(path: Path) -> str:
    """`WeightsFormatError`, `loaded`, or the unexpected exception's type and message."""
    try:
        read_torchvision_checkpoint(path)
    except WeightsFormatError:
        return "WeightsFormatError"
    except Exception as error:  # reported to the test, which fails on anything but WeightsFormatError
        return f"{type(error).__name__}: {error}"[:300].replace("\n", " ")
    return "loaded"


def main() -> None:
    shared_tables = repr(STORAGE_TYPES)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "case.pth"
        while header := sys.stdin.buffer.read(8):
            (length,) = struct.unpack("<Q", header)
            path.write_bytes(sys.stdin.buffer.read(length))
            result = outcome(path)
            changed = repr(STORAGE_TYPES) != shared_tables
            if changed:
                result = f"the load changed the reader's shared tables: {STORAGE_TYPES!r}"
            sys.stdout.write(result + "\n")
            sys.stdout.flush()
            if changed:
                return  # every later case would inherit the damage: the test starts a fresh worker


if __name__ == "__main__":
    main()
