"""`finsent evaluate` labels a large input in one call with progress lines: the progress hook changes no
probability (dynamic int8 quantizes each slice as a whole, so the labels of other cuts could differ)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.evaluate import evaluate_texts, probabilities_with_progress
from inference.labeler import OnnxLabeler, load_labeler

WORDS = ("jump", "plunge", "drift", "soar to a record after the blowout quarter", "slip")


@pytest.fixture(scope="module")
def labeler() -> OnnxLabeler:
    # small slices (at most 4 rows, 96 tokens) so that a small input has many, on two streams
    return load_labeler(threads=2, streams=2, batch_size=4, slice_tokens=96)


def _texts() -> list[str]:
    texts = [f"$ACME shares {w} after the {q} results" for w in WORDS for q in ("first", "second", "third")]
    texts += ["Fed holds rates", "Oil prices jump. " * 60, "", "Acme declares a dividend of $0.25. " * 30]
    return texts * 3


@pytest.mark.parametrize("progress_rows", [1, 10_000])
def test_progress_gives_the_probabilities_of_one_call(labeler: OnnxLabeler, progress_rows: int) -> None:
    texts = _texts()
    assert len(labeler.encode(texts).rows) > len(texts)  # long texts split into several rows
    one_call = labeler.probabilities(texts)
    with_progress = probabilities_with_progress(
        labeler, texts, progress_rows=progress_rows, progress_seconds=0
    )
    for a, b in zip(one_call, with_progress, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_run_rows_reports_every_row_once(labeler: OnnxLabeler) -> None:
    rows = labeler.encode(_texts()).rows
    seen: list[int] = []
    labeler.run_rows(rows, seen.extend)
    assert sorted(seen) == list(range(len(rows)))


def test_evaluate_logs_progress_and_reports_like_one_call(
    labeler: OnnxLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    texts = _texts()
    labels = ["positive" if "soar" in t else "negative" for t in texts]
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        with_progress = evaluate_texts(
            labeler, texts, labels, "sentiment", progress_rows=8, progress_seconds=0
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.evaluate"]
    rows = len(labeler.encode(texts).rows)
    assert lines[0] == f"labeling {len(texts)} texts ({rows} token rows)"
    lines = lines[1:]
    assert len(lines) > 3
    assert lines[-1].startswith(f"labeled {len(texts)} of {len(texts)} texts (")
    assert lines[0].startswith("labeled ") and lines[0].endswith(" texts/s)")
    done = [int(line.split()[1]) for line in lines]
    assert done == sorted(done)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        whole = evaluate_texts(labeler, texts, labels, "sentiment", progress_rows=10_000, progress_seconds=0)
    assert not [r for r in caplog.records if r.name == "inference.evaluate"]  # a small input: no lines
    for timing in ("seconds", "texts_per_second"):
        with_progress.pop(timing), whole.pop(timing)
    assert with_progress == whole


def test_progress_lines_are_at_most_every_few_seconds(
    labeler: OnnxLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        probabilities_with_progress(labeler, _texts(), progress_rows=4, progress_seconds=3600)
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.evaluate"]
    assert len(lines) == 1 and lines[0].startswith("labeling ")  # the start, then no progress line
