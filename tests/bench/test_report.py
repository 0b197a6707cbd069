"""The bench's derived numbers: pure arithmetic over measurements, checked on the figures of a real run."""

from __future__ import annotations

import math

import pytest

from bench.report import batching_ceiling


def test_batching_ceiling_shrinks_only_the_inference_share() -> None:
    # The full run at 0c8b516: unbatched server 83.3 CPU ms/image, model alone 35.1 (batch 1) and 19.9 (batch 32).
    assert batching_ceiling(83.3, 35.1, 19.9) == 1.22
    assert batching_ceiling(83.3, 35.1, 0.0) == 1.73


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
