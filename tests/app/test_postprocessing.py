"""Probabilities to ranked, labelled classes."""

from __future__ import annotations

import numpy as np
import pytest

from app.postprocessing import ranked, top_k_indices
from model.labels import imagenet_labels


def probabilities(*values: float) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    return np.asarray(values, dtype=np.float32)


def test_top_k_is_ordered_most_probable_first() -> None:
    assert top_k_indices(probabilities(0.1, 0.4, 0.05, 0.3, 0.15), 3) == [1, 3, 4]


def test_top_k_matches_a_full_sort_on_random_rows() -> None:
    row = np.random.default_rng(7).dirichlet(np.ones(1000)).astype(np.float32)
    assert top_k_indices(row, 10) == [int(i) for i in np.argsort(row)[::-1][:10]]


def test_ties_go_to_the_lower_index() -> None:
    assert top_k_indices(probabilities(0.1, 0.3, 0.2, 0.3, 0.1), 5) == [1, 3, 2, 0, 4]
    assert top_k_indices(np.full(1000, 0.001, dtype=np.float32), 4) == [0, 1, 2, 3]


def test_k_larger_than_the_classes_is_clipped() -> None:
    row = np.random.default_rng(3).dirichlet(np.ones(1000)).astype(np.float32)
    indices = top_k_indices(row, 1001)
    assert len(indices) == 1000
    assert sorted(indices) == list(range(1000))
    assert [row[i] for i in indices] == sorted(row.tolist(), reverse=True)


def test_top_k_rejects_a_batch() -> None:
    with pytest.raises(ValueError, match=r"expected one row of probabilities, got shape \(2, 1000\)"):
        top_k_indices(np.zeros((2, 1000), dtype=np.float32), 5)


def test_ranked_pairs_labels_with_their_probabilities() -> None:
    labels = imagenet_labels()
    row = np.zeros(1000, dtype=np.float32)
    row[281], row[285], row[0] = 0.5, 0.25, 0.125
    assert ranked(row, labels, 3) == [(labels[281], 0.5), (labels[285], 0.25), (labels[0], 0.125)]
    assert labels[281].label == "tabby, tabby cat"
