"""Long texts: split into sentences, pack them into chunks that fit the encoder, and aggregate the chunks'
probabilities back per text (mean weighted by each chunk's token count). Pure functions."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences (or lines) of `text`, stripped, empty ones dropped; the whole text if nothing splits."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    parts = [p for p in parts if p]
    return parts or [text]


def pack_token_runs(runs: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
    """Greedily join consecutive token runs (one per sentence) into chunks of at most `budget` tokens;
    a run longer than `budget` is cut into windows of `budget` tokens. Every token lands in one chunk,
    in order. Returns at least one (possibly empty) chunk."""
    if budget < 1:
        raise ValueError("budget must be at least 1")
    chunks: list[list[int]] = []
    current: list[int] = []
    for run in runs:
        run = list(run)
        if len(run) > budget:
            if current:
                chunks.append(current)
                current = []
            for start in range(0, len(run), budget):
                window = run[start : start + budget]
                if len(window) == budget:
                    chunks.append(window)
                else:
                    current = window
            continue
        if len(current) + len(run) > budget:
            chunks.append(current)
            current = []
        current.extend(run)
    if current or not chunks:
        chunks.append(current)
    return chunks


def aggregate(
    probs: npt.ArrayLike, owners: Sequence[int], weights: Sequence[float], n_texts: int
) -> npt.NDArray[np.float64]:
    """Per-text weighted mean of chunk probability rows: `owners[i]` is the text of chunk row i, and
    `weights[i]` its weight (token count). Texts with no chunk get a zero row."""
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    owner = np.asarray(owners, dtype=np.int64)
    sums = np.zeros((n_texts, p.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, p * w[:, None])
    totals = np.zeros(n_texts, dtype=np.float64)
    np.add.at(totals, owner, w)
    out: npt.NDArray[np.float64] = np.divide(
        sums, totals[:, None], out=np.zeros_like(sums), where=totals[:, None] > 0
    )
    return out
