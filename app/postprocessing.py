"""Probabilities → ranked, labelled classes. Pure functions over arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from model.metadata import Label

TOP5 = 5


def top_k_indices(probabilities: npt.NDArray[np.float32], k: int) -> list[int]:
    """Indices of the `k` largest probabilities, highest first; ties go to the lower index."""
    if probabilities.ndim != 1:
        raise ValueError(f"expected one row of probabilities, got shape {probabilities.shape}")
    k = min(k, probabilities.shape[0])
    # A stable sort on the negated values keeps equal probabilities in index order.
    return [int(i) for i in np.argsort(-probabilities, kind="stable")[:k]]


def ranked(probabilities: npt.NDArray[np.float32], labels: tuple[Label, ...], k: int) -> list[tuple[Label, float]]:
    return [(labels[i], float(probabilities[i])) for i in top_k_indices(probabilities, k)]
