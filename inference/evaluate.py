"""`finsent evaluate`: run a labeler over a labeled CSV for one head and report every metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.batching import length_sorted_batches
from inference.chunking import aggregate
from inference.labeler import Chunks, OnnxLabeler
from inference.labels import SENTIMENT_ALIASES, resolve_labels
from inference.metrics import classification_report

log = logging.getLogger(__name__)

Task = Literal["sentiment", "topic"]

CHUNK_ROWS = 512
"""About how many token rows `finsent evaluate` runs between progress checks."""
PROGRESS_SECONDS = 5.0
"""The least time between two progress lines."""


def chunked_probabilities(
    labeler: OnnxLabeler,
    texts: Sequence[str],
    *,
    chunk_rows: int = CHUNK_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`labeler.probabilities(texts)`, equal to one call, run about `chunk_rows` token rows at a time with
    a progress line (texts done of all, texts per second) at most every `progress_seconds`.

    The chunks are cut on the labeler's own slice boundaries: the length-sorted slices one call runs
    (`length_sorted_batches` with its `batch_size` and `slice_tokens`), so each slice holds the same rows
    padded to the same width. Dynamic int8 quantizes activations per call, with a scale over the whole
    slice: chunks of consecutive texts would change the slices and move some labels (docs/model.md,
    "Labels depend a little on the slicing": 1.6-1.8 % between slicings). Probabilities are then taken
    per row (temperature softmax) and a long text's chunk rows averaged, as `encoded_probabilities`
    does."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    encoded = labeler.encode(texts)
    rows, n_texts = encoded.rows, encoded.texts
    if len(rows) <= chunk_rows:
        return labeler.encoded_probabilities(encoded)
    slices = length_sorted_batches([len(r) for r in rows], labeler.batch_size, labeler.slice_tokens)
    topic = np.zeros((len(rows), len(labeler.topic_labels)), dtype=np.float64)
    sentiment = np.zeros((len(rows), len(labeler.sentiment_labels)), dtype=np.float64)
    owners = np.asarray(encoded.owners, dtype=np.int64)
    log.info("labeling %d texts (%d token rows) in chunks of about %d rows", n_texts, len(rows), chunk_rows)
    rows_left = np.bincount(owners, minlength=n_texts)  # per text: its rows not run yet
    started = last_line = time.monotonic()
    group: list[npt.NDArray[np.int64]] = []
    for number, idx in enumerate(slices, start=1):
        group.append(idx)
        if sum(len(g) for g in group) < chunk_rows and number < len(slices):
            continue
        order = np.concatenate(group)
        group = []
        # Consecutive whole slices in sorted order: the labeler sorts and cuts them as one call did.
        # Each row is its own "text" here, so nothing is averaged yet.
        part = Chunks([rows[i] for i in order], list(range(len(order))), [1.0] * len(order), len(order))
        topic[order], sentiment[order] = labeler.encoded_probabilities(part)
        rows_left -= np.bincount(owners[order], minlength=n_texts)
        now = time.monotonic()
        if now - last_line >= progress_seconds:
            last_line = now
            done = int((rows_left == 0).sum())
            log.info("labeled %d of %d texts (%.0f texts/s)", done, n_texts, done / max(now - started, 1e-9))
    if len(rows) != n_texts:  # as encoded_probabilities: chunk rows of long texts averaged
        return (
            aggregate(topic, encoded.owners, encoded.weights, n_texts),
            aggregate(sentiment, encoded.owners, encoded.weights, n_texts),
        )
    return topic, sentiment


def evaluate_texts(
    labeler: OnnxLabeler,
    texts: Sequence[str],
    raw_labels: Sequence[str],
    task: Task,
    *,
    label_map: Mapping[str, str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
) -> dict[str, Any]:
    """Metrics of `labeler`'s `task` head on (texts, raw_labels); labels are mapped through `label_map`
    (default: the dataset map stored in the model), names, aliases, or model indices. The texts are
    labeled in chunks with progress lines (`chunked_probabilities`), with the labels of one call."""
    labels = list(labeler.sentiment_labels if task == "sentiment" else labeler.topic_labels)
    id_map = label_map if label_map is not None else labeler.config.dataset_label_maps.get(task)
    # the aliases `finsent train` reads data with, and the model's own (a model stored only some)
    aliases = (
        {**{k: v for k, v in SENTIMENT_ALIASES.items() if v in labels}, **labeler.config.sentiment_aliases}
        if task == "sentiment"
        else None
    )
    y = resolve_labels(raw_labels, labels, id_map=id_map, aliases=aliases)
    started = time.perf_counter()
    topic, sentiment = chunked_probabilities(
        labeler, texts, chunk_rows=chunk_rows, progress_seconds=progress_seconds
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
