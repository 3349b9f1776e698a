"""`finsent evaluate`: run a labeler over a labeled CSV for one head and report every metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.labeler import OnnxLabeler
from inference.labels import resolve_label, sentiment_aliases
from inference.metrics import classification_report

log = logging.getLogger(__name__)

Task = Literal["sentiment", "topic"]

PROGRESS_ROWS = 512
"""Inputs of more token rows than this get progress lines."""
PROGRESS_SECONDS = 5.0
"""The least time between two progress lines."""


def probabilities_with_progress(
    labeler: OnnxLabeler,
    texts: Sequence[str],
    *,
    progress_rows: int = PROGRESS_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`labeler.probabilities(texts)`, in one call (so with the labels of one call: dynamic int8 quantizes
    each slice as a whole, and other cuts could move labels, docs/model.md), with a progress line (texts
    done of all, texts per second) at most every `progress_seconds` when the input has more than
    `progress_rows` token rows."""
    if progress_rows < 0:
        raise ValueError(f"progress_rows must be at least 0, not {progress_rows}")
    encoded = labeler.encode(texts)
    rows, n_texts = encoded.rows, encoded.texts
    if len(rows) <= progress_rows:
        return labeler.encoded_probabilities(encoded)
    owners = np.asarray(encoded.owners, dtype=np.int64)
    log.info("labeling %d texts (%d token rows)", n_texts, len(rows))
    rows_left = np.bincount(owners, minlength=n_texts)  # per text: its rows not run yet
    started = last_line = time.monotonic()

    def on_slice(idx: npt.NDArray[np.int64]) -> None:
        nonlocal last_line
        rows_left[:] -= np.bincount(owners[idx], minlength=n_texts)
        now = time.monotonic()
        if now - last_line >= progress_seconds:
            last_line = now
            done = int((rows_left == 0).sum())
            log.info("labeled %d of %d texts (%.0f texts/s)", done, n_texts, done / max(now - started, 1e-9))

    return labeler.encoded_probabilities(encoded, on_slice)


def evaluate_texts(
    labeler: OnnxLabeler,
    texts: Sequence[str],
    raw_labels: Sequence[str],
    task: Task,
    *,
    label_map: Mapping[str, str] | None = None,
    progress_rows: int = PROGRESS_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
    source: str | None = None,
    lines: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Metrics of `labeler`'s `task` head on (texts, raw_labels); labels are mapped through `label_map`
    (default: the dataset map stored in the model), names, aliases, or model indices. The texts are
    labeled with progress lines (`probabilities_with_progress`). A label nothing maps raises ValueError
    naming `source` (e.g. `--data FILE`) and the row's file line from `lines`, before any labeling."""
    if task not in ("sentiment", "topic"):  # a misspelled task scored the topic head, silently
        raise ValueError(f"unknown task {task!r}: sentiment or topic")
    labels = list(labeler.sentiment_labels if task == "sentiment" else labeler.topic_labels)
    id_map = label_map if label_map is not None else labeler.config.dataset_label_maps.get(task)
    aliases = sentiment_aliases(labels, labeler.config.sentiment_aliases) if task == "sentiment" else None
    y: list[int] = []
    for i, raw in enumerate(raw_labels):
        try:
            # a DataFrame's label column holds ints (numpy's too): read as dataset ids, as from a CSV
            y.append(resolve_label(str(raw), labels, id_map=id_map, aliases=aliases))
        except ValueError as e:
            where = f"{source}: " if source else ""
            if lines is not None and i < len(lines):
                where += f"line {lines[i]}: "
            raise ValueError(f"{where}{e} (map the file's labels with --label-map)") from None
    started = time.perf_counter()
    topic, sentiment = probabilities_with_progress(
        labeler, texts, progress_rows=progress_rows, progress_seconds=progress_seconds
    )
    seconds = time.perf_counter() - started
    report = classification_report(y, sentiment if task == "sentiment" else topic, labels)
    report.update(
        task=task,
        model_version=labeler.model_version,
        seconds=round(seconds, 3),
        texts_per_second=round(len(texts) / seconds, 1) if seconds > 0 else None,
    )
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable text: summary, per-class table, confusion matrix."""
    labels: list[str] = report["labels"]
    auc = report["roc_auc_ovr_macro"]
    lines = [
        f"model {report['model_version']}  task {report['task']}  n {report['n']}",
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"weighted-F1 {report['weighted_f1']:.4f}  ROC-AUC (OvR, macro) "
        f"{'n/a' if auc is None else f'{auc:.4f}'}  ECE {report['ece']:.4f}",
        f"throughput {report['texts_per_second']} texts/s ({report['seconds']} s)",
        "",
    ]
    width = max(len(label) for label in labels)
    lines.append(f"{'label':<{width}}  precision  recall     f1  support  roc_auc")
    for label in labels:
        c = report["per_class"][label]
        roc = "   n/a" if c["roc_auc"] is None else f"{c['roc_auc']:.4f}"
        lines.append(
            f"{label:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}  "
            f"{c['support']:7d}  {roc}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted, in the order above)"]
    matrix = np.asarray(report["confusion_matrix"])
    cell = max(len(str(int(matrix.max()))) if matrix.size else 1, 3)
    for label, row in zip(labels, matrix, strict=True):
        lines.append(f"{label:<{width}}  " + " ".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def plot_confusion(report: Mapping[str, Any], path: Path) -> None:
    """Confusion matrix PNG (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = report["labels"]
    matrix = np.asarray(report["confusion_matrix"])
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['task']}: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
