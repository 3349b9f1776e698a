"""Length bucketing for inference: sort a batch by token length, cut it into sub-batches each padded to
its own longest row, and remember the order to put results back. Pure numpy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[IntArray]:
    """Row indices grouped into sub-batches, shortest rows first. A sub-batch takes at most `batch_size`
    rows and, with `max_tokens`, only as many as keep rows x its longest row (the padded tensor) within
    the budget, so short texts run many to a slice and long ones few (a row longer than the budget runs
    alone). See `inference.labeler.default_slice_tokens` for the measured budgets."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError("max_tokens must be at least 1 (None: no token budget)")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[IntArray] = []
    start = 0
    for end in range(1, len(order) + 1):
        # Sorted ascending, so the row at `end - 1` is the slice's longest.
        rows = end - start
        if end < len(order) and rows < batch_size and (rows + 1) * lengths[order[end]] <= max_tokens:
            continue
        out.append(order[start:end])
        start = end
    return out


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
