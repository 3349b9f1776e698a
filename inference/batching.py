"""Length bucketing for inference: sort a batch by token length, cut it into sub-batches each padded to
its own longest row, and remember the order to put results back. Pure numpy."""

from __future__ import annotations

import math
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


def balanced_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None, parts: int
) -> list[IntArray]:
    """`length_sorted_batches`, with the number of slices rounded up to a multiple of `parts` (the streams
    that run slices at once) and their padded sizes evened out, so that no stream idles while another runs
    the odd slice: a batch of 3 slices on 2 streams took as long as 4. Each slice stays within the budget
    (a smaller one is searched for) and within `batch_size` rows. Unchanged without a token budget, with
    one part, or when the count already divides; a large batch's odd count is evened out too, for a gain
    of a few percent at most (the search costs about 1.5 ms for 256 rows). `python bench/model.py`
    (2026-12-01 22:31 UTC, 2 streams, arrival-order windows, 3 alternating rounds): windows of 24 texts
    511 against 460 texts/s with greedy slices, windows of 48 553 against 536."""
    slices = length_sorted_batches(lengths, batch_size, max_tokens)
    if parts < 2 or max_tokens is None or len(slices) % parts == 0 or len(lengths) < parts:
        return slices
    want = math.ceil(len(slices) / parts) * parts
    # The least budget that still needs no more than `want` slices: the slice count only falls as the
    # budget grows (each slice is cut greedily), so a binary search finds it.
    low, high = 1, max_tokens
    while low < high:
        middle = (low + high) // 2
        if len(length_sorted_batches(lengths, batch_size, middle)) <= want:
            high = middle
        else:
            low = middle + 1
    out = length_sorted_batches(lengths, batch_size, low)
    while len(out) < want:  # halve the costliest slice (rows x its longest row) until there are enough
        costs = [len(s) * lengths[s[-1]] if len(s) > 1 else -1 for s in out]
        worst = max(range(len(out)), key=costs.__getitem__)
        if costs[worst] < 0:
            break  # every slice is one row already
        half = len(out[worst]) // 2
        out[worst : worst + 1] = [out[worst][:half], out[worst][half:]]
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
