"""A labeled topic deleted under a running labeler (a client then re-creates it, with the broker's default
partitions, where the broker creates topics on use), and a broker away for longer than the producer's
delivery timeout. A batch's flush waits for its own records only (never for watermarks), and at most the
delivery timeout plus a margin: kafka-python 3.0.12 stops sending for good once a record it had sent and
was retrying expires (its idempotent producer drops its producer id and never asks for another), so such
a producer is replaced, and so is one whose writes the broker keeps refusing (Tansu, to the re-created
topic). Every failed attempt is counted in finsent_output_errors_total{output="kafka"}: labeling goes on
within a bounded time, never a silent stall (before, /healthz and /readyz said 200, nothing was counted,
and the labeler never labeled again).

Delivery timeouts are short here (4 s, with a 2 s margin; 2 minutes and 10 s by default)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from prometheus_client import CollectorRegistry

import finsent.outputs.kafka_outputs as kafka_outputs
from finsent.app import run_pipeline
from finsent.metrics import PipelineMetrics
from finsent.outputs.kafka_outputs import FLUSH_DRIVEN, KafkaOutputs, make_producer
from finsent.processing import Batch, BatchWriter, Labeled, WriterConfig
from finsent.settings import KafkaSettings
from finsent.watermarks import watermark_record
from inference.types import Labeler
from ingest.decode import DecodeLimits, decode
from ingest.message import KafkaMeta, Message
from tests.pipeline_helpers import (
    make_settings,
    publish,
    read_topic,
    real_labeler,
    topics,
    valid_message,
    wait_for,
)
from tests.servers import Tansu, create_topic
from tests.test_outputs_writer import PRED

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)

DELIVERY_MS = 4000
REQUEST_MS = 2000  # delivery_timeout_ms must be at least linger_ms (1 s) + request_timeout_ms
MARGIN_S = 2.0
SHORT = {"delivery_timeout_ms": DELIVERY_MS, "request_timeout_ms": REQUEST_MS}
RECOVERY_S = 40.0
"""How long labeling may take to go on: the delivery timeout and margin (6 s) once or twice, a new
producer, and the writer's backoff between attempts (at most 0.5 s here), with room for a slow machine."""


def kafka_errors(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("finsent_output_errors_total", {"output": "kafka"}) or 0.0


class Writer:
    """A BatchWriter with the Kafka outputs alone, as the runner builds it (a factory for a replacement
    producer included), with short delivery timeouts."""

    def __init__(self, broker: str, labeled: str, dead: str) -> None:
        settings = KafkaSettings(bootstrap_servers=broker)

        def new_producer() -> KafkaProducer:
            return make_producer(settings, **FLUSH_DRIVEN, **SHORT)

        self.outputs = KafkaOutputs(
            new_producer(), labeled_topic=labeled, dead_letter_topic=dead, new_producer=new_producer
        )
        self.outputs.delivery_margin_s = MARGIN_S
        self.outputs.stall_warning_s = 1.0
        self.registry = CollectorRegistry()
        self.stop = threading.Event()
        self.writer = BatchWriter(
            kafka=self.outputs,
            es=None,
            config=WriterConfig(
                key_types=("all",),
                index_prefix="unused",
                labeled_enabled=True,
                elasticsearch_enabled=False,
                author_key=None,
                backoff_max_s=0.5,
            ),
            metrics=PipelineMetrics(self.registry),
            model_version="v-test",
            stop=self.stop,
        )

    def write(self, first: int, n: int, within_s: float) -> float:
        """Write messages first..first+n-1 as one batch; fail the test if that is not done within
        `within_s` (the writer retries until then), or if it took half the delivery timeout or longer
        without a failed attempt counted (a silent wait: a write takes milliseconds here). Returns the
        seconds it took."""
        errors = kafka_errors(self.registry)
        now = datetime.now(UTC)
        records = [
            decode(
                json.dumps(valid_message(i)).encode(),
                KafkaMeta("raw", 0, i, 1, f"k{i}".encode()),
                DecodeLimits(),
                now,
            )
            for i in range(first, first + n)
        ]
        assert all(isinstance(r, Message) for r in records)
        batch = Batch(records=list(records), offsets={}, ingested_at=now)
        timer = threading.Timer(within_s, self.stop.set)
        timer.start()
        started = time.monotonic()
        try:
            self.writer.write(batch, Labeled([PRED] * n, {}, 0.01))
        except Exception as e:
            raise AssertionError(
                f"messages {first}..{first + n - 1} not written within {within_s:.0f} s ({e!r}); "
                f"{kafka_errors(self.registry):.0f} Kafka output errors counted"
            ) from e
        finally:
            timer.cancel()
        took = time.monotonic() - started
        assert took < DELIVERY_MS / 2000 or kafka_errors(self.registry) > errors, (
            f"messages {first}..{first + n - 1}: written after {took:.1f} s, no failed attempt counted"
        )
        return took

    def watermark(self) -> None:
        self.outputs.send_watermark(*watermark_record("g", {"raw": 1}, {("raw", 0): time.time()}))

    def close(self) -> None:
        self.stop.set()
        self.outputs.close(timeout_s=0)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for w in made:
        w.close()


def event_ids(broker: str, topic: str, expected: int) -> set[str]:
    return {json.loads(r.value)["event_id"] for r in read_topic(broker, topic, expected, timeout_s=20)}


def delete_topic(broker: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


def recreated_on_use(broker: str, topic: str) -> int:
    """Have a producer ask for the deleted `topic`'s partitions, which makes both brokers create it again
    with their default partitions (as Apache Kafka does with auto.create.topics.enable); returns its
    partition count. Tansu takes the labeler's writes to a deleted topic until then, and loses them
    (noida-db refuses them, and the labeler's own metadata requests create it again)."""
    producer = KafkaProducer(bootstrap_servers=broker, max_block_ms=20_000)
    try:
        return len(producer.partitions_for(topic) or ())
    finally:
        producer.close()


def test_batches_after_the_labeled_topic_is_deleted_are_written_not_waited_on_for_ever(
    broker: str, unique: str, writers: list[Writer], caplog: pytest.LogCaptureFixture
) -> None:
    """The labeled topic (6 partitions) is deleted, and another client re-creates it on use (1 partition
    on noida-db, 4 on Tansu), while watermarks are on their way to all six partitions. The batches after
    that are written within a bounded time (watermarks to partitions that no longer exist are not waited
    for; a producer stuck on them, or whose writes the broker keeps refusing, is replaced, and each failed
    attempt counted), and the change of partitions is said."""
    labeled, dead = f"labeled-{unique}", f"dead-{unique}"
    create_topic(broker, labeled, 6)
    create_topic(broker, dead, 1)
    w = Writer(broker, labeled, dead)
    writers.append(w)
    w.write(0, 8, within_s=20)
    w.watermark()
    delete_topic(broker, labeled)
    w.watermark()
    assert recreated_on_use(broker, labeled) < 6
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="finsent.outputs.kafka_outputs"):
        # Batches and watermarks, as the labeler sends them, for longer than it takes the records to the
        # old partitions to expire (the delivery timeout) and the producer to be found stuck (the margin).
        first = 100
        while time.monotonic() - started < DELIVERY_MS / 1000 + MARGIN_S + 4:
            w.watermark()  # at first to the partitions the producer still knows: the old topic's
            w.write(first, 10, within_s=RECOVERY_S)
            first += 10
            time.sleep(0.5)
        took = time.monotonic() - started
        # written to the topic as it is now: every event of the batches after the deletion is there
        ids = event_ids(broker, labeled, first - 100)
        assert {f"v{i}|all:*" for i in range(100, first)} <= ids, sorted(ids)[:10]
        w.watermark()
    log = caplog.text
    assert f"the labeled topic {labeled} has " in log and "6 before: it was deleted and created again" in log
    errors = kafka_errors(w.registry)
    assert took < RECOVERY_S + 10, f"{took:.0f} s, {errors:.0f} errors counted\n{log[-3000:]}"
    if "replacing the Kafka producer" in log:  # it took a failed attempt at least, and it was counted
        assert errors >= 1, log[-3000:]


def test_a_broker_away_past_the_delivery_timeout_leaves_no_producer_stuck(
    own_tansu: Tansu, unique: str, writers: list[Writer], caplog: pytest.LogCaptureFixture
) -> None:
    """The broker stops answering (paused) for longer than the delivery timeout, mid-batch. The batch's
    records, sent and being retried, expire; kafka-python 3.0.12 then stopped sending for good, and the
    flush waited for ever, uncounted. Now the attempt fails at the delivery timeout plus the margin at the
    latest, counted, the producer is replaced, and the batch is written once the broker is back."""
    broker = own_tansu.kafka
    labeled, dead = f"labeled-{unique}", f"dead-{unique}"
    create_topic(broker, labeled, 6)
    create_topic(broker, dead, 1)
    w = Writer(broker, labeled, dead)
    writers.append(w)
    w.write(0, 8, within_s=20)
    pid = own_tansu.server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    resumed = threading.Timer(DELIVERY_MS / 1000 * 3, os.kill, (pid, signal.SIGCONT))
    resumed.start()
    try:
        with caplog.at_level(logging.INFO, logger="finsent.outputs.kafka_outputs"):
            took = w.write(100, 12, within_s=RECOVERY_S + DELIVERY_MS / 1000 * 3)
            w.write(200, 12, within_s=RECOVERY_S)  # and the next one, on the same outputs
    finally:
        resumed.cancel()
        os.kill(pid, signal.SIGCONT)
    assert took >= DELIVERY_MS / 1000, "the broker was away: the batch could not be written at once"
    assert kafka_errors(w.registry) >= 1, "the failed attempts are counted"
    assert "replacing the Kafka producer" in caplog.text, caplog.text[-3000:]
    ids = event_ids(broker, labeled, 32)
    assert {f"v{i}|all:*" for i in [*range(100, 112), *range(200, 212)]} <= ids


def test_the_labeler_labels_again_after_its_labeled_topic_is_deleted(
    broker: str,
    es_url: str,
    unique: str,
    labeler: Labeler,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reviewer's case, in `run_pipeline`: the labeled topic is deleted under a running labeler and
    more raw messages come. Before, the labeler never labeled again (its flush waited for watermarks to
    partitions that no longer exist, which kafka-python then never expired), with healthy probes and no
    error counted; now it labels them within a bounded time."""
    monkeypatch.setitem(FLUSH_DRIVEN, "delivery_timeout_ms", DELIVERY_MS)
    monkeypatch.setitem(FLUSH_DRIVEN, "request_timeout_ms", REQUEST_MS)
    monkeypatch.setattr(kafka_outputs, "DELIVERY_MARGIN_S", MARGIN_S)
    t = topics(unique)
    create_topic(broker, t.raw, 1)
    create_topic(broker, t.labeled, 6)
    create_topic(broker, t.dead, 1)
    settings = make_settings(broker, es_url, t, watermark_interval_s=1.0)
    stop = threading.Event()
    registry = CollectorRegistry()
    labeled = 0
    failure: list[BaseException] = []

    def count(batch: Batch, _labeled: Labeled) -> None:
        nonlocal labeled
        labeled += len(batch.messages)

    def target() -> None:
        try:
            run_pipeline(settings, stop, labeler=labeler, registry=registry, on_batch=count)
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=target, daemon=True)
    with caplog.at_level(logging.INFO, logger="finsent.outputs.kafka_outputs"):
        thread.start()
        try:
            publish(broker, t.raw, [(0, None, json.dumps(valid_message(i)).encode()) for i in range(20)])
            wait_for(lambda: labeled >= 20, "the first messages labeled", 60)
            time.sleep(1.5)  # a watermark or two to all six partitions
            delete_topic(broker, t.labeled)
            time.sleep(1.5)  # watermarks go out meanwhile, to partitions that no longer exist
            assert recreated_on_use(broker, t.labeled) < 6
            # more messages, for longer than it takes the records sent to the old partitions to expire
            # (the delivery timeout) and a producer stuck on them to be found (the margin)
            published, started = 20, time.monotonic()
            while time.monotonic() - started < DELIVERY_MS / 1000 + MARGIN_S + 4:
                more = range(100 + published, 105 + published)
                publish(broker, t.raw, [(0, None, json.dumps(valid_message(i)).encode()) for i in more])
                published += 5
                time.sleep(1.0)
            wait_for(
                lambda: labeled >= published,
                f"all {published} messages labeled, {labeled} are "
                f"({kafka_errors(registry):.0f} Kafka output errors counted)\n" + caplog.text[-3000:],
                RECOVERY_S,
            )
            took = time.monotonic() - started
        finally:
            stop.set()
            thread.join(timeout=60)
    assert not thread.is_alive() and not failure, failure
    assert f"the labeled topic {t.labeled} has " in caplog.text, caplog.text[-3000:]
    errors = kafka_errors(registry)
    if "replacing the Kafka producer" in caplog.text:  # after a failed attempt, counted
        assert errors >= 1, caplog.text[-3000:]
    print(f"all labeled {took:.1f} s after the deletion; {errors:.0f} Kafka output errors counted")
