"""The 1000 ImageNet-1k classes in the standard (sorted WordNet id) order both releases use."""

from __future__ import annotations

import csv
from functools import cache
from importlib.resources import files

from model.metadata import NUM_CLASSES, Label

LABELS_RESOURCE = "data/imagenet_classes.tsv"


@cache
def imagenet_labels() -> tuple[Label, ...]:
    """Index → WordNet id → human-readable name, read from the shipped TSV."""
    text = files("model").joinpath(LABELS_RESOURCE).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    labels = tuple(Label(index=int(row["index"]), wnid=row["wnid"], label=row["label"]) for row in rows)
    if len(labels) != NUM_CLASSES or any(label.index != i for i, label in enumerate(labels)):
        raise RuntimeError(f"{LABELS_RESOURCE} is corrupt: expected indices 0..{NUM_CLASSES - 1} in order")
    return labels
