"""What happens to one micro-batch once it is assembled: label it, then write every output durably.

Inference and writing are separate calls so the runner can overlap them (batch N+1 is labeled while
batch N is written). Both run in worker threads; nothing here touches the consumer."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka.structs import TopicPartition

from finsent.labeled_events import labeled_events
from finsent.metrics import PipelineMetrics
from finsent.outputs.es_documents import build_document, events_index
from finsent.outputs.es_sink import ElasticsearchSink, IndexAction, SinkStopped, backoff
from finsent.outputs.kafka_outputs import KafkaOutputs, OutputError
from inference.types import Labeler, Prediction, StagedLabeler
from ingest.message import DeadLetter, ErrorCode, Message

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Decoded records of one micro-batch and the offsets to commit once it is written."""

    records: list[Message | DeadLetter]
    offsets: dict[TopicPartition, int]
    ingested_at: datetime
    messages: list[Message] = field(init=False)
    dead_letters: list[DeadLetter] = field(init=False)

    def __post_init__(self) -> None:
        self.messages = [r for r in self.records if isinstance(r, Message)]
        self.dead_letters = [r for r in self.records if isinstance(r, DeadLetter)]


@dataclass(frozen=True)
class Labeled:
    """Predictions aligned with `batch.messages`; None where that message is dead-lettered: `errors` gives
    the reason, `codes` the code where it is not `inference_failed` (a text the model cannot read)."""

    predictions: list[Prediction | None]
    errors: dict[int, str]
    seconds: float
    codes: dict[int, ErrorCode] = field(default_factory=dict)


UNREADABLE = (
    "the model knows no word of the text: its tokenizer reads only unknown tokens, punctuation or symbols "
    "(emoji, a script its vocabulary lacks, a word too long for it), even with styled letters folded and "
    "emoji set apart"
)
"""The reason given for a prediction marked `unreadable` (dead-lettered as `unreadable`)."""


def without_unreadable(labeled: Labeled) -> Labeled:
    """`labeled` with each prediction the labeler marked unreadable taken out as an `unreadable` dead
    letter: its label is the model's answer to an empty input, not a reading of the text."""
    unreadable = [i for i, p in enumerate(labeled.predictions) if p is not None and p.unreadable]
    if not unreadable:
        return labeled
    predictions = list(labeled.predictions)
    errors, codes = dict(labeled.errors), dict(labeled.codes)
    for i in unreadable:
        predictions[i] = None
        errors[i] = UNREADABLE
        codes[i] = "unreadable"
    return Labeled(predictions, errors, labeled.seconds, codes)


def encode_batch(labeler: StagedLabeler, messages: Sequence[Message]) -> Any:
    """Tokenize a batch ahead of the model (the runner does it while the model runs the previous batch).
    None if that fails: `label_batch` then labels from the texts, one at a time if it must."""
    try:
        return labeler.encode([m.text for m in messages])
    except Exception as e:
        log.warning("tokenizing a batch of %d failed (%s); labeling from the texts", len(messages), e)
        return None


def label_batch(
    labeler: Labeler, messages: Sequence[Message], metrics: PipelineMetrics, encoded: Any = None
) -> Labeled:
    """Label the texts (from `encoded`, their `encode_batch` result, when given); if the batch call fails,
    fall back to one text at a time so one poison text cannot block the rest. If every text fails and so
    does a plain canary text, the model itself is broken: raise (the batch is not committed). Texts the
    model cannot read get no label (`without_unreadable`)."""
    return without_unreadable(_label_batch(labeler, messages, metrics, encoded))


def _label_batch(
    labeler: Labeler, messages: Sequence[Message], metrics: PipelineMetrics, encoded: Any
) -> Labeled:
    started = time.perf_counter()
    if not messages:
        return Labeled([], {}, 0.0)
    texts = [m.text for m in messages]
    try:
        if encoded is not None and isinstance(labeler, StagedLabeler):
            preds: list[Prediction | None] = list(labeler.label_encoded(encoded))
        else:
            preds = list(labeler.label(texts))
        if len(preds) != len(texts):
            raise RuntimeError(f"labeler returned {len(preds)} predictions for {len(texts)} texts")
        return Labeled(preds, {}, time.perf_counter() - started)
    except Exception as e:
        metrics.inference_errors.inc()
        log.warning("inference failed on a batch of %d (%s); retrying one text at a time", len(texts), e)
    preds = []
    errors: dict[int, str] = {}
    for i, text in enumerate(texts):
        try:
            preds.append(labeler.label([text])[0])
        except Exception as e:
            metrics.inference_errors.inc()
            preds.append(None)
            errors[i] = f"inference failed: {type(e).__name__}: {e}"[:500]
    if len(errors) == len(texts) and not model_answers(labeler):
        raise RuntimeError(f"inference failed for every text of the batch: {next(iter(errors.values()))}")
    return Labeled(preds, errors, time.perf_counter() - started)


CANARY_TEXT = "Shares of Acme Corp were little changed in early trading."


def model_answers(labeler: Labeler) -> bool:
    """Whether the model still labels a plain text. When every text of a batch failed, this tells a broken
    model (raise: nothing is committed, the worker restarts) from a batch of poison texts, typically one
    alone at low traffic (dead-letter them: a restart would fail on the same record forever)."""
    try:
        return len(labeler.label([CANARY_TEXT])) == 1
    except Exception as e:
        log.error("the model failed on a plain canary text too (%s: %s)", type(e).__name__, e)
        return False


@dataclass(frozen=True)
class WriterConfig:
    key_types: tuple[str, ...]
    index_prefix: str
    labeled_enabled: bool
    elasticsearch_enabled: bool
    author_key: bytes | None
    backoff_max_s: float = 30.0
    store_authors: bool = True


class BatchWriter:
    """Writes one labeled batch to every enabled output; returns only when all of it is durable."""

    def __init__(
        self,
        *,
        kafka: KafkaOutputs,
        es: ElasticsearchSink | None,
        config: WriterConfig,
        metrics: PipelineMetrics,
        model_version: str,
        stop: threading.Event,
    ) -> None:
        self.kafka = kafka
        self.es = es if config.elasticsearch_enabled else None
        self.config = config
        self.metrics = metrics
        self.model_version = model_version
        self.stop = stop

    def write(self, batch: Batch, labeled: Labeled) -> None:
        """Retry the whole batch's outputs until they succeed (ES ids make retries overwrite, not duplicate)
        or the worker stops (then raise SinkStopped: the batch is not committed)."""
        attempt = 0
        while True:
            try:
                dead = self._attempt(batch, labeled)
                break
            except OutputError as e:
                self.kafka.discard()
                self.metrics.output_errors.labels(output="kafka").inc()
                log.warning("writing the batch to Kafka failed (%s); retrying", e)
                if self.stop.wait(backoff(attempt, self.config.backoff_max_s)):
                    raise SinkStopped("stopping while Kafka outputs were unwritten") from e
                attempt += 1
        self._record_metrics(batch, labeled, dead)

    def _attempt(self, batch: Batch, labeled: Labeled) -> list[DeadLetter]:
        """Elasticsearch first, then Kafka: a document Elasticsearch refuses for good becomes a dead letter
        and gets no labeled events, so the labeled topic, the index and the metrics count the same
        messages. Labeled sends only leave the producer at the flush (see FLUSH_DRIVEN), so writing them
        after the bulk request costs no overlap."""
        labeled_at = datetime.now(UTC)
        dead = list(batch.dead_letters)
        done: list[tuple[Message, Prediction]] = []
        for i, (message, pred) in enumerate(zip(batch.messages, labeled.predictions, strict=True)):
            if pred is None:
                reason = labeled.errors.get(i, "inference failed")
                code = labeled.codes.get(i, "inference_failed")
                dead.append(DeadLetter(code, reason, message.raw, message.meta))
            else:
                done.append((message, pred))
        refused = self._index(batch, done, labeled_at) if self.es is not None else {}
        for message, pred in done:
            refusal = refused.get(self._target(message)) if refused else None
            if refusal is not None:
                dead.append(DeadLetter("rejected_by_sink", refusal, message.raw, message.meta))
            elif self.config.labeled_enabled:
                for key, value in labeled_events(
                    message,
                    pred,
                    key_types=self.config.key_types,
                    labeled_at=labeled_at,
                    model_version=self.model_version,
                ):
                    self.kafka.send_labeled(key, value)
        for dl in dead:
            self.kafka.send_dead_letter(dl)
        self.kafka.flush(stop=self.stop)
        return dead

    def _target(self, message: Message) -> tuple[str, str]:
        """(index, id) of the message's document."""
        return events_index(self.config.index_prefix, message.published_at), message.id

    def _index(
        self, batch: Batch, done: list[tuple[Message, Prediction]], labeled_at: datetime
    ) -> dict[tuple[str, str], str]:
        """Write the documents; returns the reason for each (index, id) Elasticsearch refused for good."""
        assert self.es is not None
        actions = [
            IndexAction(
                *self._target(message),
                build_document(
                    message,
                    pred,
                    ingested_at=batch.ingested_at,
                    labeled_at=labeled_at,
                    model_version=self.model_version,
                    author_key=self.config.author_key,
                    store_author=self.config.store_authors,
                ),
            )
            for message, pred in done
        ]
        if not actions:
            return {}
        return {(r.index, r.doc_id): r.reason for r in self.es.write(actions, stop=self.stop)}

    def _record_metrics(self, batch: Batch, labeled: Labeled, dead: list[DeadLetter]) -> None:
        """Counters are added up per batch and incremented once per label set; histograms observe per
        message through children looked up once."""
        m = self.metrics
        now = time.time()
        rejected = {(d.meta.topic, d.meta.partition, d.meta.offset) for d in dead}
        by_source: Tally[str] = Tally()
        by_label: Tally[tuple[str, str]] = Tally()
        by_ticker: Tally[tuple[str, str]] = Tally()
        topic_confidence = m.confidence.labels(head="topic")
        sentiment_confidence = m.confidence.labels(head="sentiment")
        for message, pred in zip(batch.messages, labeled.predictions, strict=True):
            if pred is None or (message.meta.topic, message.meta.partition, message.meta.offset) in rejected:
                continue
            by_source[message.source] += 1
            by_label[(pred.topic, pred.sentiment)] += 1
            topic_confidence.observe(pred.topic_score)
            sentiment_confidence.observe(pred.sentiment_score)
            for ticker in message.tickers:
                by_ticker[(m.ticker_label(ticker), pred.sentiment)] += 1
            if message.meta.timestamp_ms is not None and message.meta.timestamp_ms > 0:
                m.publish_to_label.observe(max(0.0, now - message.meta.timestamp_ms / 1000))
        for source, n in by_source.items():
            m.labeled.labels(source=m.source_label(source)).inc(n)
        for (topic, sentiment), n in by_label.items():
            m.labels.labels(topic=topic, sentiment=sentiment).inc(n)
        for (ticker, sentiment), n in by_ticker.items():
            m.ticker_labels.labels(ticker=ticker, sentiment=sentiment).inc(n)
        for reason, n in Tally(dl.error for dl in dead).items():
            m.dead_lettered.labels(reason=reason).inc(n)
        m.batch_size.observe(len(batch.records))
        if batch.messages:
            m.inference_seconds.observe(labeled.seconds)
        m.batches.inc()
        m.last_batch.set(now)
