"""Labeled CSVs in, seeded stratified splits out. Pure Python + numpy, no torch: unit-tested directly."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from inference.datasets import LabeledSet, read_labeled_csv
from inference.labels import normalise
from inference.model_dir import sha256_file

__all__ = [
    "LabeledSet",
    "class_weights",
    "duplicate_counts",
    "is_bare_integer",
    "leaked_dev_rows",
    "length_grouped_batches",
    "merge_spellings",
    "near_duplicate_key",
    "read_labeled_csv",
    "sha256_file",
    "stratified_split",
]


_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_NOT_WORD = re.compile(r"[^\w]+")


def near_duplicate_key(text: str) -> str:
    """What tells two posts apart once links, case, punctuation and spacing are set aside: the same tweet
    posted twice with another t.co link has one key."""
    return " ".join(_NOT_WORD.sub(" ", _URL.sub(" ", text.lower())).split())


def merge_spellings(labels: Sequence[str]) -> dict[str, str]:
    """{label as written: the label it stands for}. Labels that differ only in case or spacing (`Earnings`,
    `earnings `) are one label, spelled as most rows spell it (on a tie, as the first row does): one
    file's spellings would otherwise become two classes, one of them with few or no training rows."""
    counts = Counter(labels)
    best: dict[str, str] = {}
    for raw in counts:  # first-seen order
        key = normalise(raw)
        if key not in best or counts[raw] > counts[best[key]]:
            best[key] = raw
    return {raw: best[normalise(raw)] for raw in counts}


def duplicate_counts(texts: Sequence[str], labels: Sequence[str]) -> tuple[int, int]:
    """(rows repeating an earlier row's text and label exactly, texts given more than one label)."""
    pairs: set[tuple[str, str]] = set()
    labels_of: dict[str, set[str]] = {}
    exact = 0
    for text, label in zip(texts, labels, strict=True):
        if (text, label) in pairs:
            exact += 1
        pairs.add((text, label))
        labels_of.setdefault(text, set()).add(label)
    return exact, sum(len(found) > 1 for found in labels_of.values())


def is_bare_integer(label: str) -> bool:
    """`0`, `12`: a dataset's class id, which says nothing of what the class is."""
    return label.isascii() and label.isdigit()


def stratified_split(
    labels: Sequence[int], dev_fraction: float, seed: int, *, groups: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Seeded split of row indices into (train, dev), keeping each class's share in both parts.

    With `groups` (e.g. `near_duplicate_key` of each text), rows of one group go to the same side: split
    by row, 15 % of the topic set's dev rows had a near-copy in train, and dev scores were optimistic.
    A group counts under the label of its first row. Every class with at least two groups gets at least
    one dev group; a class with one stays in train."""
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError("dev_fraction must be in [0, 1)")
    if groups is not None and len(groups) != len(labels):
        raise ValueError("groups must have one entry per label")
    rng = np.random.default_rng(seed)
    members_of: dict[str | int, list[int]] = {}
    for index in range(len(labels)):
        members_of.setdefault(groups[index] if groups is not None else index, []).append(index)
    by_class: dict[int, list[list[int]]] = {}
    for members in members_of.values():
        by_class.setdefault(int(labels[members[0]]), []).append(members)
    train: list[int] = []
    dev: list[int] = []
    for label in sorted(by_class):
        class_groups = by_class[label]
        order = rng.permutation(len(class_groups))
        rows = sum(len(g) for g in class_groups)
        wanted = max(round(rows * dev_fraction), 1) if dev_fraction > 0 and len(class_groups) >= 2 else 0
        taken = 0
        for position, k in enumerate(order):
            group = class_groups[int(k)]
            last = position == len(order) - 1  # at least one group stays in train
            if taken < wanted and not last and (taken == 0 or taken + len(group) <= wanted):
                dev.extend(group)
                taken += len(group)
            else:
                train.extend(group)
    train_arr = np.array(train, dtype=np.int64)
    dev_arr = np.array(dev, dtype=np.int64)
    rng.shuffle(train_arr)
    rng.shuffle(dev_arr)
    return [int(i) for i in train_arr], [int(i) for i in dev_arr]


def leaked_dev_rows(texts: Sequence[str], train: Sequence[int], dev: Sequence[int]) -> int:
    """How many dev rows have a near-copy (`near_duplicate_key`) among the train rows."""
    seen = {near_duplicate_key(texts[i]) for i in train}
    return sum(near_duplicate_key(texts[i]) in seen for i in dev)


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
