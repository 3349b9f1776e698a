"""Labeled `text,label` CSVs, as used for training and `finsent evaluate` (no torch needed)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabeledSet:
    """Texts and their raw label strings as read from a `text,label` CSV."""

    path: Path
    texts: list[str]
    labels: list[str]
    skipped: int = 0


def read_labeled_csv(path: Path, *, limit: int | None = None) -> LabeledSet:
    """Read a UTF-8 CSV with `text` and `label` columns (any line endings). Rows with an empty text or label
    are skipped and counted in `skipped`."""
    texts: list[str] = []
    labels: list[str] = []
    skipped = 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header with `text` and `label` columns")
        for row in reader:
            text = (row.get("text") or "").strip()
            label = (row.get("label") or "").strip()
            if not text or not label:
                skipped += 1
                continue
            texts.append(text)
            labels.append(label)
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    return LabeledSet(path=path, texts=texts, labels=labels, skipped=skipped)


def sample_rows(data: LabeledSet, n: int | None, seed: int = 0) -> LabeledSet:
    """A seeded random sample of `n` rows, in file order (all of them when `n` is None or not smaller).
    Labeled files are often sorted by label: their first rows would hold a few classes only, and a
    macro-F1 over the rest would be meaningless."""
    if n is None or n >= len(data.texts):
        return data
    import random

    keep = sorted(random.Random(seed).sample(range(len(data.texts)), max(n, 0)))
    return LabeledSet(
        path=data.path,
        texts=[data.texts[i] for i in keep],
        labels=[data.labels[i] for i in keep],
        skipped=data.skipped,
    )
