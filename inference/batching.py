"""Length bucketing for inference: sort a batch by token length, cut it into sub-batches each padded to
its own longest row, and remember the order to put results back. Pure numpy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[IntArray]:
    """Row indices grouped into sub-batches of at most `batch_size`, shortest rows first."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(
    rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[IntArray, IntArray]:
    """(input_ids, attention_mask) int64 arrays padded to `width` (default: the longest row)."""
    w = width if width is not None else max((len(r) for r in rows), default=1)
    w = max(w, 1)
    ids = np.full((len(rows), w), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), w), dtype=np.int64)
    for i, row in enumerate(rows):
        n = min(len(row), w)
        ids[i, :n] = row[:n]
        mask[i, :n] = 1
    return ids, mask


def chunked(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
