"""`finsent evaluate` labels in chunks with progress lines, and its chunks give the labels of one call: they
are cut on the labeler's own length-sorted slice boundaries (dynamic int8 quantizes each slice as a whole,
so other cuts could move labels)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.evaluate import chunked_probabilities, evaluate_texts
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


@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 10_000])
def test_chunks_give_the_probabilities_of_one_call(labeler: OnnxLabeler, chunk_rows: int) -> None:
    texts = _texts()
    assert len(labeler.encode(texts).rows) > len(texts)  # long texts split into several rows
    one_call = labeler.probabilities(texts)
    chunked = chunked_probabilities(labeler, texts, chunk_rows=chunk_rows, progress_seconds=3600)
    for a, b in zip(one_call, chunked, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_evaluate_logs_progress_and_reports_like_one_call(
    labeler: OnnxLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    texts = _texts()
    labels = ["positive" if "soar" in t else "negative" for t in texts]
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        chunked = evaluate_texts(labeler, texts, labels, "sentiment", chunk_rows=8, progress_seconds=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.evaluate"]
    rows = len(labeler.encode(texts).rows)
    assert lines[0] == f"labeling {len(texts)} texts ({rows} token rows) in chunks of about 8 rows"
    lines = lines[1:]
    assert len(lines) > 3
    assert lines[-1].startswith(f"labeled {len(texts)} of {len(texts)} texts (")
    assert lines[0].startswith("labeled ") and lines[0].endswith(" texts/s)")
    done = [int(line.split()[1]) for line in lines]
    assert done == sorted(done)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        whole = evaluate_texts(labeler, texts, labels, "sentiment", chunk_rows=10_000, progress_seconds=0)
    assert not [r for r in caplog.records if r.name == "inference.evaluate"]  # one call: no progress
    for timing in ("seconds", "texts_per_second"):
        chunked.pop(timing), whole.pop(timing)
    assert chunked == whole


def test_progress_lines_are_at_most_every_few_seconds(
    labeler: OnnxLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="inference.evaluate"):
        chunked_probabilities(labeler, _texts(), chunk_rows=4, progress_seconds=3600)
    lines = [r.getMessage() for r in caplog.records if r.name == "inference.evaluate"]
    assert len(lines) == 1 and lines[0].startswith("labeling ")  # the start, then no progress line
