"""Crafted torch checkpoints never crash the reader: every one ends in a `WeightsFormatError`.

The cases are what `torch.save` never writes: strides, offsets and shapes at the edges of int64, tensors
rebuilt from tensors, storages of the wrong size, BUILD and SETITEMS on the reader's own globals. Each runs
in a worker process (tests/model/checkpoint_worker.py), so a segfault fails the case instead of pytest.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_cases import count_fuzz_case
from tests.model import crafted_pickles as crafted

EXAMPLES = 1500
REPO_ROOT = Path(__file__).resolve().parents[2]

small = st.integers(-2, 40)
edge = st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, -(2**31), -(2**63)])
number = st.one_of(small, small, edge)
# The archive always holds storage "0": 64 bytes, which are 16 floats, 8 doubles or 32 halves. Most references
# agree with it, so the geometry is what gets tested; the rest are the wrong size or missing.
STORAGE_BYTES = bytes(range(64))
consistent_refs = st.sampled_from([crafted.storage("0", 64 // size, name) for name, size in crafted.ITEM_SIZES.items()])
inconsistent_refs = st.builds(
    crafted.storage, st.sampled_from(["0", "absent"]), number, st.sampled_from(crafted.STORAGE_TYPE_NAMES)
)
storage_refs = st.one_of(consistent_refs, consistent_refs, consistent_refs, inconsistent_refs)
reader_globals = st.sampled_from(
    [
        crafted.global_("torch", "FloatStorage"),
        crafted.global_("torch", "HalfStorage"),
        crafted.global_("collections", "OrderedDict"),
        crafted.global_("torch._utils", "_rebuild_tensor_v2"),
        crafted.global_("torch._utils", "_rebuild_parameter"),
        crafted.call(crafted.global_("collections", "OrderedDict")),
    ]
)
# Values a BUILD or SETITEMS could plant: another dtype, a number, a storage, nothing.
planted = st.one_of(
    st.sampled_from([crafted.global_("torch", "DoubleStorage"), crafted.string("<f8"), pickle.NONE]),
    number.map(crafted.integer),
    storage_refs,
)


@st.composite
def states(draw: st.DrawFn) -> bytes:
    """A BUILD argument: an attribute dict, or the (dict, slot dict) pair."""
    attributes = draw(st.dictionaries(st.sampled_from(["dtype", "name", "shape", "__class__"]), planted, max_size=2))
    as_dict = crafted.setitems(b"}", attributes)
    return crafted.tuple_(b"N", as_dict) if draw(st.booleans()) else as_dict


@st.composite
def rebuilt_tensors(draw: st.DrawFn, sources: st.SearchStrategy[bytes]) -> bytes:
    ndim = draw(st.integers(0, 4))
    size = draw(st.lists(number, min_size=ndim, max_size=ndim))
    stride = draw(st.lists(number, min_size=ndim, max_size=ndim + draw(st.integers(0, 1))))
    return crafted.rebuild_tensor(draw(sources), draw(number), size, stride)


def mutations(targets: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(crafted.build, targets, states()),
        st.builds(crafted.setitems, targets, st.dictionaries(st.sampled_from(["dtype", "0"]), planted, max_size=2)),
    )


values = st.recursive(
    st.one_of(storage_refs, reader_globals),
    lambda inner: st.one_of(rebuilt_tensors(inner), mutations(inner)),
    max_leaves=5,
)


@st.composite
def checkpoints(draw: st.DrawFn) -> bytes:
    """Some values pushed and dropped (to mutate state), then a state dict of one more value."""
    prefix = draw(st.lists(values, max_size=2))
    program = crafted.program(*prefix, crafted.state_dict(draw(values)))
    return crafted.checkpoint(program, {"0": STORAGE_BYTES})


class CheckpointWorker:
    """A long-lived `checkpoint_worker` process; started again after a case kills it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def outcome(self, data: bytes) -> str:
        if self._process is None:
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            command = [sys.executable, "-m", "tests.model.checkpoint_worker"]
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(struct.pack("<Q", len(data)) + data)
            process.stdin.flush()
        except BrokenPipeError:
            pass
        line = process.stdout.readline().decode().strip()
        if not line:
            return f"the reader crashed (exit status {self._retire()})"
        if line.startswith("the load changed"):
            self._retire()  # the worker quit: its tables are damaged
        return line

    def close(self) -> None:
        if self._process is not None:
            self._retire()

    def _retire(self) -> int:
        process, self._process = self._process, None
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        process.stdout.close()
        return process.wait()


@pytest.fixture(scope="module")
def worker() -> Iterator[CheckpointWorker]:
    checkpoint_worker = CheckpointWorker()
    yield checkpoint_worker
    checkpoint_worker.close()


def test_the_review_crash_is_a_clean_error(worker: CheckpointWorker) -> None:
    assert worker.outcome(crafted.stride_zero_overread()) == "WeightsFormatError"


def test_build_cannot_change_the_storage_types(worker: CheckpointWorker) -> None:
    retyped = crafted.build(
        crafted.global_("torch", "FloatStorage"),
        crafted.setitems(b"}", {"dtype": crafted.string("<f8")}),
    )
    case = crafted.checkpoint(crafted.program(retyped, crafted.state_dict(crafted.storage("0", 1))), {"0": bytes(4)})
    assert worker.outcome(case) == "WeightsFormatError"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(checkpoints())
def test_crafted_checkpoints_end_in_a_format_error(worker: CheckpointWorker, case: bytes) -> None:
    count_fuzz_case("checkpoint pickles")
    assert worker.outcome(case) == "WeightsFormatError"
