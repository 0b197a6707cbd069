"""The bench's derived numbers: pure arithmetic over measurements, checked on the figures of a real run."""

from __future__ import annotations

import math

import pytest

from bench.report import batching_ceiling


def test_batching_ceiling_shrinks_only_the_inference_share() -> None:
    # The run in docs/performance.md (94f7ca3): unbatched server 78.7 CPU ms/image (c=16 raw), model alone
    # 37.3 ms (batch 1) and 23.6 ms (batch 32).
    assert batching_ceiling(78.7, 37.3, 23.6) == 1.21
    assert batching_ceiling(78.7, 37.3, 0.0) == 1.9


@pytest.mark.parametrize(
    ("unbatched", "batch1", "batched", "expected"),
    [
        (40.0, 40.0, 10.0, 4.0),  # inference is all there is: the model's own gain
        (80.0, 0.0, 0.0, 1.0),  # no inference cost: batching cannot help
    ],
)
def test_batching_ceiling_limits(unbatched: float, batch1: float, batched: float, expected: float) -> None:
    assert batching_ceiling(unbatched, batch1, batched) == expected


def test_batching_ceiling_is_undefined_without_a_cost() -> None:
    assert math.isnan(batching_ceiling(35.0, 35.0, 0.0))
