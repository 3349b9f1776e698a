"""Labeled CSVs in, seeded stratified splits out. Pure Python + numpy, no torch: unit-tested directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.datasets import LabeledSet, read_labeled_csv
from inference.model_dir import sha256_file

__all__ = [
    "LabeledSet",
    "class_weights",
    "length_grouped_batches",
    "read_labeled_csv",
    "sha256_file",
    "stratified_split",
]


def stratified_split(labels: Sequence[int], dev_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of row indices into (train, dev), keeping each class's share in both parts.

    Every class with at least two rows gets at least one dev row; a class with one row stays in train."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError("dev_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    train: list[int] = []
    dev: list[int] = []
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        n_dev = round(len(members) * dev_fraction)
        n_dev = min(max(n_dev, 1), len(members) - 1) if dev_fraction > 0 and len(members) >= 2 else 0
        dev.extend(int(i) for i in members[:n_dev])
        train.extend(int(i) for i in members[n_dev:])
    train_arr = np.array(train, dtype=np.int64)
    dev_arr = np.array(dev, dtype=np.int64)
    rng.shuffle(train_arr)
    rng.shuffle(dev_arr)
    return [int(i) for i in train_arr], [int(i) for i in dev_arr]


def class_weights(labels: Sequence[int], n_classes: int, power: float) -> list[float]:
    """Per-class loss weights (n / (k * count)) ** power, normalised to mean 1 over the present classes.

    power 0 gives no weighting, 0.5 a softened inverse frequency, 1 the full inverse frequency."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes, dtype=np.float64)
    if power and present.any():
        total = counts[present].sum()
        weights[present] = (total / (present.sum() * counts[present])) ** power
        weights[present] /= weights[present].mean()
    return [float(w) for w in weights]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, group_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length rows: shuffle, cut into groups of `group_batches` batches, sort
    each group by length, cut into batches, shuffle the batch order. Less padding, still random."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    group = batch_size * group_batches
    batches: list[list[int]] = []
    lengths_arr = np.asarray(lengths)
    for start in range(0, len(order), group):
        chunk = order[start : start + group]
        chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        batches.extend([int(i) for i in chunk[b : b + batch_size]] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches
