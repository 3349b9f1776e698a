"""The batch writer against real Kafka and Elasticsearch: labeled events per key, documents by id, and a
document Elasticsearch refuses goes to the dead-letter topic as `rejected_by_sink` (and not to the labeled
topic)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from elasticsearch import Elasticsearch
from kafka.errors import KafkaTimeoutError
from kafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from finsent.metrics import PipelineMetrics
from finsent.outputs.es_setup import ensure_index_setup, events_setup
from finsent.outputs.es_sink import ElasticsearchSink, SinkStopped
from finsent.outputs.kafka_outputs import KafkaOutputs, OutputError, make_producer
from finsent.processing import Batch, BatchWriter, Labeled, WriterConfig
from finsent.settings import ElasticsearchSettings, KafkaSettings
from inference.types import Prediction
from ingest.decode import DecodeLimits, decode
from ingest.message import DeadLetter, KafkaMeta, Message
from tests.pipeline_helpers import headers, read_topic
from tests.servers import Noida, create_topic

PRED = Prediction(
    "Earnings",
    0.9,
    "negative",
    0.8,
    {"Earnings": 0.9, "Markets": 0.1},
    {"negative": 0.8, "neutral": 0.1, "positive": 0.1},
)


def test_writer_outputs_and_rejections(noida: Noida, unique: str) -> None:
    labeled_topic, dead_topic, prefix = f"l-{unique}", f"d-{unique}", f"w{unique}"
    create_topic(noida.kafka, labeled_topic, 2)
    create_topic(noida.kafka, dead_topic, 1)
    es = Elasticsearch(noida.es_url, request_timeout=10)
    ensure_index_setup(
        es, events_setup(ElasticsearchSettings(url=noida.es_url, index_prefix=prefix, number_of_replicas=0))
    )
    # An index whose `source` cannot hold text: every document for that day is refused for good.
    es.indices.create(
        index=f"{prefix}-events-2026.11.05", mappings={"properties": {"source": {"type": "long"}}}
    )
    now = datetime.now(UTC)
    raws = [
        b'{"id": "ok", "source": "news", "text": "$ACME falls", "published_at": "2026-11-04T10:00:00Z", '
        b'"author": "ann"}',
        b'{"id": "refused", "source": "news", "text": "$ACME falls", "published_at": "2026-11-05T10:00:00Z"}',
        b"not json",
    ]
    records = [
        decode(r, KafkaMeta("raw", 0, i, 1, f"k{i}".encode()), DecodeLimits(), now)
        for i, r in enumerate(raws)
    ]
    batch = Batch(records=records, offsets={}, ingested_at=now)
    assert [type(r) for r in records] == [Message, Message, DeadLetter]
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    outputs = KafkaOutputs(
        make_producer(KafkaSettings(bootstrap_servers=noida.kafka)),
        labeled_topic=labeled_topic,
        dead_letter_topic=dead_topic,
    )
    writer = BatchWriter(
        kafka=outputs,
        es=ElasticsearchSink(es, stop=threading.Event()),
        config=WriterConfig(
            key_types=("ticker", "all"),
            index_prefix=prefix,
            labeled_enabled=True,
            elasticsearch_enabled=True,
            author_key=b"secret",
        ),
        metrics=metrics,
        model_version="v-test",
        stop=threading.Event(),
    )
    writer.write(batch, Labeled([PRED, PRED], {}, 0.01))
    outputs.close()

    doc = es.get(index=f"{prefix}-events-2026.11.04", id="ok")["_source"]
    assert (
        doc["author"].startswith("anon-") and doc["tickers"] == ["ACME"] and doc["model_version"] == "v-test"
    )
    dead = read_topic(noida.kafka, dead_topic, expected=2, settle_s=0.3)
    by_error = {headers(r)["finsent.error"].decode(): r for r in dead}
    assert set(by_error) == {"rejected_by_sink", "invalid_json"}
    refused = by_error["rejected_by_sink"]
    assert refused.value == raws[1] and refused.key == b"k1"
    assert b"rejected" in headers(refused)["finsent.reason"]
    # The refused document is not labeled either: the index, the labeled topic and the metrics agree.
    records = read_topic(noida.kafka, labeled_topic, expected=2, settle_s=1.0)
    events = [json.loads(r.value) for r in records]
    assert sorted(e["event_id"] for e in events) == ["ok|all:*", "ok|ticker:ACME"]
    # Each in the partition the Java client's key partitioner picks (hashes cached: outputs/partitioner.py).
    assert [r.partition for r in records] == [(murmur2(r.key) & 0x7FFFFFFF) % 2 for r in records]
    assert registry.get_sample_value("finsent_messages_labeled_total", {"source": "news"}) == 1
    negative = {"sentiment": "negative"}
    assert registry.get_sample_value("finsent_labels_total", {"topic": "Earnings", **negative}) == 1
    assert registry.get_sample_value("finsent_ticker_labels_total", {"ticker": "other", **negative}) == 1
    assert registry.get_sample_value("finsent_label_confidence_count", {"head": "topic"}) == 1
    assert (
        registry.get_sample_value("finsent_messages_dead_lettered_total", {"reason": "rejected_by_sink"}) == 1
    )


def test_a_dead_letter_fits_one_produce_request_key_included() -> None:
    from finsent.outputs.kafka_outputs import dead_letter_record

    meta = KafkaMeta("raw", 0, 5, key=b"k" * 2_000_000)
    key, value, hdrs = dead_letter_record(
        DeadLetter("oversized", "too big", b"v" * 3_000_000, meta), 1_000_000
    )
    assert key is not None and value is not None and len(key) + len(value) == 1_000_000
    found = dict(hdrs)
    assert found["finsent.key_truncated"] == b"2000000" and found["finsent.truncated"] == b"3000000"
    small = DeadLetter("schema", "bad", b"{}", KafkaMeta("raw", 0, 6, key=b"id-1"))
    assert dead_letter_record(small, 1_000_000)[:2] == (b"id-1", b"{}")
    # A null tombstone without a key (kafka-python refuses to send one with neither): an empty value.
    tombstone = DeadLetter("not_object", "record has no value (tombstone)", None, KafkaMeta("raw", 0, 7))
    assert dead_letter_record(tombstone, 1_000_000)[:2] == (None, b"")
    keyed = DeadLetter("not_object", "no value", None, KafkaMeta("raw", 0, 8, key=b"k"))
    assert dead_letter_record(keyed, 1_000_000)[:2] == (b"k", None)


class AbsentBrokerProducer:
    """flush() as kafka-python's with the broker away: each wait times out (until delivery_timeout_ms)."""

    def __init__(self) -> None:
        self.config = {"max_request_size": 1_048_576}
        self.flushes = 0

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        if timeout is None:
            raise AssertionError("an unbounded flush outlasts the grace period")
        time.sleep(min(timeout, 0.01))
        raise KafkaTimeoutError("Timeout waiting for future")


def test_a_flush_waiting_on_an_absent_broker_ends_soon_after_the_stop() -> None:
    producer = AbsentBrokerProducer()
    outputs = KafkaOutputs(producer, labeled_topic="l", dead_letter_topic="d")  # type: ignore[arg-type]
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(SinkStopped):
        outputs.flush(stop=stop)
    assert producer.flushes >= 2  # it kept waiting, in slices, until the stop


class RefusingProducer(AbsentBrokerProducer):
    """send() as kafka-python's when the topic's metadata does not come within max_block_ms, or when the
    key partitioner finds the topic gone from the metadata."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def send(self, topic: str, **record: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        KafkaTimeoutError("Failed to update metadata after 60.0 secs."),
        ValueError("Topic l not found in ClusterMetadata"),
    ],
)
def test_a_refused_send_fails_the_batch_not_the_worker(error: Exception) -> None:
    outputs = KafkaOutputs(RefusingProducer(error), labeled_topic="l", dead_letter_topic="d")  # type: ignore[arg-type]
    with pytest.raises(OutputError, match="Kafka send to l failed"):
        outputs.send_labeled(b"all:*", b"{}")
