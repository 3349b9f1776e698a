"""Inference fallback of one batch: a poison text is isolated, a broken model stops the batch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from finsent.metrics import PipelineMetrics
from finsent.processing import encode_batch, label_batch
from inference.types import Prediction
from ingest.decode import DecodeLimits, decode
from ingest.message import KafkaMeta, Message
from tests.pipeline_helpers import FakeLabeler


def messages(texts: list[str]) -> list[Message]:
    out = []
    for i, t in enumerate(texts):
        m = decode(
            f'{{"source": "s", "text": "{t}"}}'.encode(),
            KafkaMeta("raw", 0, i),
            DecodeLimits(),
            datetime.now(UTC),
        )
        assert isinstance(m, Message)
        out.append(m)
    return out


def test_batch_is_labeled_in_one_call() -> None:
    labeler, metrics = FakeLabeler(), PipelineMetrics(CollectorRegistry())
    result = label_batch(labeler, messages(["a plunge", "b", "c"]), metrics)
    assert labeler.calls == [3]
    assert [p.sentiment for p in result.predictions if p] == ["negative", "neutral", "neutral"]
    assert result.errors == {}


def test_poison_text_is_isolated() -> None:
    labeler, registry = FakeLabeler(fail_on="poison"), CollectorRegistry()
    result = label_batch(labeler, messages(["a", "poison", "c"]), PipelineMetrics(registry))
    assert result.predictions[1] is None and result.predictions[0] and result.predictions[2]
    assert "poison text" in result.errors[1]
    assert registry.get_sample_value("finsent_inference_errors_total") == 2.0


def test_model_failing_on_everything_raises() -> None:
    with pytest.raises(RuntimeError, match="every text"):
        label_batch(FakeLabeler(broken=True), messages(["x1", "x2"]), PipelineMetrics(CollectorRegistry()))


def test_a_batch_of_poison_texts_alone_is_dead_lettered_not_raised() -> None:
    """At low traffic a poison text is often alone in its batch: the model still labels a plain text, so
    the text is at fault (a restart would fail on the same record forever)."""
    for texts in (["poison"], ["poison 1", "poison 2"]):
        result = label_batch(
            FakeLabeler(fail_on="poison"), messages(texts), PipelineMetrics(CollectorRegistry())
        )
        assert result.predictions == [None] * len(texts) and len(result.errors) == len(texts)


def test_empty_batch_needs_no_model() -> None:
    labeler = FakeLabeler()
    assert label_batch(labeler, [], PipelineMetrics(CollectorRegistry())).predictions == []
    assert labeler.calls == []


class StagedFake(FakeLabeler):
    """A labeler with a tokenizing stage that fails on texts containing 'untokenizable'."""

    def encode(self, texts: Sequence[str]) -> list[str]:
        if any("untokenizable" in t for t in texts):
            raise ValueError("tokenizer error")
        return [t.upper() for t in texts]

    def label_encoded(self, encoded: list[str]) -> list[Prediction]:
        return self.label([t.lower() for t in encoded])


def test_pre_tokenized_batch_is_labeled_from_its_tokens() -> None:
    staged = StagedFake()
    batch = messages(["a plunge", "b"])
    encoded = encode_batch(staged, batch)
    assert encoded == ["A PLUNGE", "B"]
    result = label_batch(staged, batch, PipelineMetrics(CollectorRegistry()), encoded)
    assert [p.sentiment for p in result.predictions if p] == ["negative", "neutral"]


def test_failed_tokenizing_falls_back_to_the_texts() -> None:
    staged = StagedFake()
    batch = messages(["untokenizable plunge", "b"])
    assert encode_batch(staged, batch) is None
    result = label_batch(staged, batch, PipelineMetrics(CollectorRegistry()), None)
    assert [p.sentiment for p in result.predictions if p] == ["negative", "neutral"]
