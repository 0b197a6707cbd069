"""Counts the cases each fuzz suite ran, for the one-line summary at the end of the pytest run (tests/conftest.py)."""

from __future__ import annotations

from collections import Counter

FUZZ_CASES: Counter[str] = Counter()


def count_fuzz_case(suite: str) -> None:
    FUZZ_CASES[suite] += 1
