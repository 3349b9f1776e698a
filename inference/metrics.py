"""Classification metrics in numpy (no scikit-learn on the serving install): accuracy, F1s, per-class
precision/recall/F1, one-vs-rest ROC-AUC, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> npt.NDArray[np.int64]:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def per_class_prf(
    y_true: Sequence[int], y_pred: Sequence[int], n_classes: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """(precision, recall, f1, support) per class; 0 where undefined."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support.astype(np.float64), out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t = np.asarray(y_true)
    return float((t == np.asarray(y_pred)).mean()) if len(t) else 0.0


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """Unweighted mean F1 over the classes present in y_true or y_pred."""
    _, _, f1, support = per_class_prf(y_true, y_pred, n_classes)
    predicted = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=n_classes)
    present = (support > 0) | (predicted > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def weighted_f1(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> float:
    """F1 per class weighted by its support."""
    _, _, f1, support = per_class_prf(y_true, y_pred, n_classes)
    total = support.sum()
    return float((f1 * support).sum() / total) if total else 0.0


def binary_roc_auc(scores: npt.ArrayLike, positives: npt.ArrayLike) -> float | None:
    """ROC-AUC by the rank statistic (ties get average ranks); None when only one class is present."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def one_vs_rest_auc(probs: npt.ArrayLike, y_true: Sequence[int]) -> tuple[list[float | None], float | None]:
    """Per-class one-vs-rest ROC-AUC and their macro mean over the defined ones."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    per_class = [binary_roc_auc(p[:, k], y == k) for k in range(p.shape[1])]
    defined = [a for a in per_class if a is not None]
    return per_class, (float(np.mean(defined)) if defined else None)


def classification_report(
    y_true: Sequence[int], probs: npt.ArrayLike, labels: Sequence[str]
) -> dict[str, Any]:
    """Every metric `finsent evaluate` prints, as plain JSON-able values."""
    from inference.calibration import expected_calibration_error

    p = np.asarray(probs, dtype=np.float64)
    y_pred = [int(i) for i in p.argmax(axis=1)] if len(p) else []
    n = len(labels)
    precision, recall, f1, support = per_class_prf(y_true, y_pred, n)
    auc_per_class, auc_macro = one_vs_rest_auc(p, y_true) if len(p) else ([None] * n, None)
    return {
        "n": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, n),
        "weighted_f1": weighted_f1(y_true, y_pred, n),
        "roc_auc_ovr_macro": auc_macro,
        "ece": expected_calibration_error(p, y_true) if len(p) else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "roc_auc": auc_per_class[k],
            }
            for k, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n).tolist(),
    }
