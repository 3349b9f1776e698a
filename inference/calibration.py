"""Temperature scaling: one scalar per head, fit on held-out logits, so a probability threshold means what
it says. Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Row-wise softmax of `logits / temperature`, numerically stable."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def nll(logits: npt.ArrayLike, labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    y = np.asarray(labels, dtype=np.int64)
    return float(-log_probs[np.arange(len(y)), y].mean())


def fit_temperature(
    logits: npt.ArrayLike, labels: Sequence[int], *, low: float = 0.05, high: float = 20.0
) -> float:
    """Temperature minimising NLL on (logits, labels): coarse log-grid search, then golden-section refine."""
    z = np.asarray(logits, dtype=np.float64)
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(low), np.log(high), 60))
    losses = [nll(z, labels, t) for t in grid]
    best = int(np.argmin(losses))
    a = float(np.log(grid[max(best - 1, 0)]))
    b = float(np.log(grid[min(best + 1, len(grid) - 1)]))
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        c = b - ratio * (b - a)
        d = a + ratio * (b - a)
        if nll(z, labels, float(np.exp(c))) < nll(z, labels, float(np.exp(d))):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2.0))


def expected_calibration_error(probs: npt.ArrayLike, labels: Sequence[int], n_bins: int = 15) -> float:
    """ECE of the top-1 confidence: bin by confidence, weighted mean |accuracy - confidence| per bin."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)
