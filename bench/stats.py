"""Latency percentiles and rates, computed the same way for every phase."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds; `count` is how many samples the percentiles were taken over."""

    count: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, milliseconds: Sequence[float]) -> LatencySummary:
        if not milliseconds:
            return cls(
                count=0, p50=float("nan"), p95=float("nan"), p99=float("nan"), mean=float("nan"), max=float("nan")
            )
        values = np.asarray(milliseconds, dtype=np.float64)
        p50, p95, p99 = (float(v) for v in np.percentile(values, [50, 95, 99]))
        return cls(
            count=len(values),
            p50=round(p50, 3),
            p95=round(p95, 3),
            p99=round(p99, 3),
            mean=round(float(values.mean()), 3),
            max=round(float(values.max()), 3),
        )


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else float("nan")


def rate(count: int, seconds: float) -> float:
    """Events per second, rounded for reports; 0 when nothing was timed."""
    return round(count / seconds, 2) if seconds > 0 else 0.0
