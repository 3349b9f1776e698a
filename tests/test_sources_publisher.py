"""KafkaPublisher's delivery outcome per record: a record Kafka acknowledges only after its run gave up
waiting counts as published and is never sent a second time; one Kafka gave up on is sent again; and a
broker that is away costs one bounded wait per batch, not a minute per record.

The first tests drive the publisher over a stand-in producer, for what needs acknowledgements in a given
order (futures resolved by hand); the others run against a real broker, answering, paused (SIGSTOP) or
stopped."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kafka
import pytest
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from ingest.sources.checkpoint import StateStore
from ingest.sources.config import SourcesSettings, parse_sources
from ingest.sources.publisher import KafkaPublisher
from ingest.sources.service import SourcesService
from tests.servers import Noida, Tansu, create_topic
from tests.test_sources_kafka import consume


class FakeFuture:
    """What the publisher reads of kafka-python's FutureRecordMetadata, resolved by the test."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.exception: BaseException | None = None

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def succeed(self) -> FakeFuture:
        self._done.set()
        return self

    def fail(self, e: BaseException) -> FakeFuture:
        self.exception = e
        self._done.set()
        return self

    def get(self, timeout: float | None = None) -> None:
        if not self._done.wait(timeout):
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")
        if self.exception is not None:
            raise self.exception


class FakeProducer:
    """Records what was sent; `on_send` decides each send's future (or raises as send() does)."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[bytes] = []
        self.futures: list[FakeFuture] = []
        self.on_send: Callable[[bytes], FakeFuture] = lambda value: FakeFuture().succeed()

    def send(self, topic: str, *, key: bytes, value: bytes) -> FakeFuture:
        self.sent.append(value)
        future = self.on_send(value)
        self.futures.append(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or 0.0)
        for f in self.futures:
            if not f._done.wait(max(0.0, deadline - time.monotonic())):
                raise KafkaTimeoutError(f"Failed to flush buffered records within {timeout} secs")

    def close(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], tuple[KafkaPublisher, FakeProducer]]]:
    monkeypatch.setattr(kafka, "KafkaProducer", FakeProducer)

    def make(flush_timeout_s: float) -> tuple[KafkaPublisher, FakeProducer]:
        publisher = KafkaPublisher({"bootstrap_servers": "unused:1"}, flush_timeout_s=flush_timeout_s)
        producer = publisher._producer
        assert isinstance(producer, FakeProducer)
        return publisher, producer

    yield make


def msg(n: int) -> dict[str, Any]:
    return {"id": f"drops:{n}", "source": "drops", "text": f"item {n}"}


def ids(producer: FakeProducer) -> list[str]:
    return [json.loads(v)["id"] for v in producer.sent]


def test_a_record_kafka_gave_up_on_is_sent_again(fake: Any) -> None:
    publisher, producer = fake(0.2)
    pending = FakeFuture()
    producer.on_send = lambda value: pending
    (error,) = publisher.publish("raw", "drops", [msg(1)])
    assert error is not None and error.retriable
    pending.fail(KafkaTimeoutError("Expiring 1 record(s): 120000 ms has passed since batch creation"))
    producer.on_send = lambda value: FakeFuture().succeed()
    assert publisher.publish("raw", "drops", [msg(1)]) == [None]
    assert ids(producer) == ["drops:1", "drops:1"]


def test_an_unresolved_earlier_send_holds_the_rest_of_the_batch_back(fake: Any) -> None:
    publisher, producer = fake(0.3)
    pending = FakeFuture()
    producer.on_send = lambda value: pending
    publisher.publish("raw", "drops", [msg(1)])
    producer.on_send = lambda value: FakeFuture().succeed()
    started = time.monotonic()
    errors = publisher.publish("raw", "drops", [msg(1), msg(2), msg(3)])
    assert time.monotonic() - started < 2.0  # it waited once, within its flush timeout
    assert all(e is not None and e.retriable for e in errors)
    assert ids(producer) == ["drops:1"]  # nothing overtakes drops:1, nothing sent twice
    pending.succeed()
    assert publisher.publish("raw", "drops", [msg(1), msg(2), msg(3)]) == [None, None, None]
    assert ids(producer) == ["drops:1", "drops:2", "drops:3"]


def test_an_earlier_send_to_another_topic_or_under_another_key_is_not_taken_for_this_one(fake: Any) -> None:
    publisher, producer = fake(0.2)
    pending = FakeFuture()
    producer.on_send = lambda value: pending
    publisher.publish("raw", "drops", [msg(1)])
    pending.succeed()
    producer.on_send = lambda value: FakeFuture().succeed()
    assert publisher.publish("other-topic", "drops", [msg(1)]) == [None]
    assert publisher.publish("raw", "wire", [msg(1)]) == [None]
    assert ids(producer) == ["drops:1", "drops:1", "drops:1"]  # sent each time: nothing taken as sent


# -- against a real broker ----------------------------------------------------------------------------


@pytest.mark.kafka
def test_a_record_the_client_refuses_does_not_stop_the_rest(noida: Noida, unique: str) -> None:
    """kafka-python refuses a record over its max_request_size (1 MiB) in send(): that record fails for
    good, and the ones after it are still sent, in order."""
    topic = f"raw-{unique}"
    create_topic(noida.kafka, topic, partitions=1)
    publisher = KafkaPublisher({"bootstrap_servers": noida.kafka}, flush_timeout_s=10)
    try:
        too_large = {**msg(1), "text": "x" * 1_100_000}
        first, *rest = publisher.publish(topic, "drops", [too_large, msg(2), msg(3)])
    finally:
        publisher.close()
    assert first is not None and not first.retriable
    assert first.message.startswith("MessageSizeTooLargeError"), first
    assert rest == [None, None]
    records = consume(noida.kafka, topic, expected=2, timeout=15)
    assert [json.loads(r.value)["id"] for r in records] == ["drops:2", "drops:3"]


@pytest.mark.kafka
def test_send_waits_for_metadata_no_longer_than_the_flush_timeout(noida: Noida) -> None:
    for flush_timeout_s, max_block_ms in ((2.0, 2000), (300.0, 60_000)):  # kafka-python's default: ceiling
        publisher = KafkaPublisher({"bootstrap_servers": noida.kafka}, flush_timeout_s=flush_timeout_s)
        try:
            assert publisher._producer.config["max_block_ms"] == max_block_ms
        finally:
            publisher.close()


@pytest.mark.kafka
def test_a_record_acknowledged_after_its_run_gave_up_is_published_once(
    own_tansu: Tansu, unique: str, tmp_path: Path
) -> None:
    """The reported bug: the broker paused mid-publish; the run fails, the broker resumes and takes the
    record; the next run must count it as published rather than publish it a second time."""
    topic = f"raw-{unique}"
    create_topic(own_tansu.kafka, topic, partitions=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = drop / "a.jsonl"
    lines.write_text('{"id": "1", "text": "Fed minutes due"}\n', encoding="utf-8")
    settings = SourcesSettings(state_dir=tmp_path / "state", topic=topic, dedup_horizon_hours=1)
    publisher = KafkaPublisher({"bootstrap_servers": own_tansu.kafka}, flush_timeout_s=2)
    registry = CollectorRegistry()
    sources = parse_sources([{"name": "drops", "kind": "files", "path": str(drop)}], env={})
    service = SourcesService(sources, settings, publisher, registry)
    try:
        assert service.run_all_once()[0].published == 1
        with lines.open("a", encoding="utf-8") as f:
            f.write('{"id": "2", "text": "ECB holds rates"}\n')
        os.kill(own_tansu.server.proc.pid, signal.SIGSTOP)
        (failed,) = service.run_all_once()
        assert not failed.ok and failed.published == 0
        os.kill(own_tansu.server.proc.pid, signal.SIGCONT)
        # The next run counts drops:2 once its late acknowledgement is in (the first such run, unless
        # the machine is slow to resume the broker).
        late = [service.run_all_once()[0] for _ in range(5)]
        assert sum(r.published for r in late) == 1 and late[-1].ok
        cp = StateStore(tmp_path / "state").load_checkpoint("drops")
        assert next(iter(cp.files.values())).offset == lines.stat().st_size
    finally:
        service.stop()
        publisher.close()
    records = consume(own_tansu.kafka, topic, expected=2, timeout=15)
    assert [json.loads(r.value)["id"] for r in records] == ["drops:1", "drops:2"]


@pytest.mark.kafka
def test_a_down_broker_fails_a_batch_for_an_unknown_topic_in_one_bounded_wait(
    own_tansu: Tansu, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No metadata cached for the topic and no broker to ask: the first send waits at most the flush
    timeout, the others are not attempted, and every record is reported as not published."""
    publisher = KafkaPublisher({"bootstrap_servers": own_tansu.kafka}, flush_timeout_s=2)
    producer = publisher._producer
    sent: list[bytes] = []
    real_send = producer.send

    def counted_send(topic: str, **kwargs: Any) -> Any:
        sent.append(kwargs["value"])
        return real_send(topic, **kwargs)

    monkeypatch.setattr(producer, "send", counted_send)
    try:
        own_tansu.server.stop()
        started = time.monotonic()
        errors = publisher.publish(f"raw-{unique}", "drops", [msg(n) for n in range(1, 6)])
        elapsed = time.monotonic() - started
        assert len(errors) == 5 and all(e is not None and e.retriable for e in errors), errors
        assert len(sent) == 1  # the rest of the batch is not attempted
        assert elapsed < 8.0, elapsed  # was a minute per record
    finally:
        publisher.close()
