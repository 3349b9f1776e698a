"""The labeler's watermarks against real brokers: sent to every labeled partition once the input is read
and written, behind the events they cover, and never while a batch is held by an output outage."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from kafka import KafkaProducer

from finsent.watermarks import parse_watermark
from inference.types import Labeler
from tests.pipeline_helpers import (
    BulkOutageProxy,
    committed,
    make_settings,
    publish,
    read_topic,
    real_labeler,
    topics,
    valid_message,
    wait_for,
)
from tests.servers import create_topic
from tests.test_pipeline_e2e import Worker

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)


def reported(broker: str, topic: str) -> list[tuple[int, int, dict[tuple[str, int], float]]]:
    """(labeled partition, offset, complete times) of every watermark in `topic`."""
    out = []
    for r in read_topic(broker, topic, expected=0, timeout_s=3.0, settle_s=0.5, control=True):
        assert r.key == b"finsent.watermark"
        out.append((r.partition, r.offset, parse_watermark(r.value).complete))
    return out


def newest(marks: list[tuple[int, int, dict[tuple[str, int], float]]], tp: tuple[str, int]) -> float:
    return max((c[tp] for _, _, c in marks if tp in c), default=0.0)


def test_watermarks_follow_the_events_and_stop_while_a_batch_is_held(
    broker: str, es_url: str, unique: str, labeler: Labeler
) -> None:
    t = topics(unique)
    create_topic(broker, t.raw, 2)
    create_topic(broker, t.labeled, 2)
    create_topic(broker, t.dead, 1)
    proxy = BulkOutageProxy(es_url)
    settings = make_settings(broker, proxy.url, t, watermark_interval_s=0.2)
    worker = Worker(settings, labeler)
    raw = [(t.raw, 0), (t.raw, 1)]
    try:
        first = [valid_message(i) for i in range(20)]
        publish(broker, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(first)])
        published = time.time()
        wait_for(lambda: committed(broker, t.group, t.raw, 2) == {0: 10, 1: 10}, "first commits", 60)
        wait_for(
            lambda: all(newest(reported(broker, t.labeled), tp) > published for tp in raw),
            "watermarks covering the first messages",
            30,
        )
        marks = reported(broker, t.labeled)
        assert {p for p, _, _ in marks} == {0, 1}, "a watermark goes to every labeled partition"
        events = read_topic(broker, t.labeled, expected=1)
        for part in (0, 1):
            # the first watermark that covers the messages comes after every event they made
            covering = min(
                o for p, o, c in marks if p == part and all(c.get(tp, 0) > published for tp in raw)
            )
            assert all(e.offset < covering for e in events if e.partition == part)

        proxy.down.set()
        held = [valid_message(i) for i in range(20, 30)]
        publish(broker, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(held)])
        published = time.time()
        wait_for(lambda: proxy.refused >= 2, "bulk requests refused", 30)
        time.sleep(2.0)  # ten watermark intervals
        during = reported(broker, t.labeled)
        assert all(newest(during, tp) < published for tp in raw), "a watermark claimed held messages"

        proxy.down.clear()
        wait_for(lambda: committed(broker, t.group, t.raw, 2) == {0: 15, 1: 15}, "catch-up commits", 60)
        wait_for(
            lambda: all(newest(reported(broker, t.labeled), tp) > published for tp in raw),
            "watermarks again once the outage is over",
            30,
        )
        worker.close()
    finally:
        worker.stop.set()
        proxy.close()


def test_no_watermarks_when_turned_off(broker: str, es_url: str, unique: str, labeler: Labeler) -> None:
    t = topics(unique)
    for topic, parts in ((t.raw, 1), (t.labeled, 1), (t.dead, 1)):
        create_topic(broker, topic, parts)
    settings = make_settings(broker, es_url, t, watermark_interval_s=0, alerts={"idle_clock": "wall"})
    worker = Worker(settings, labeler)
    try:
        publish(broker, t.raw, [(0, None, json.dumps(valid_message(i)).encode()) for i in range(4)])
        wait_for(lambda: committed(broker, t.group, t.raw, 1) == {0: 4}, "commits", 60)
        time.sleep(1.5)
        events: list[Any] = read_topic(broker, t.labeled, expected=1)
        assert events and reported(broker, t.labeled) == []
        worker.close()
    finally:
        worker.stop.set()


def test_a_transactional_input_is_still_reported(
    broker: str, es_url: str, unique: str, labeler: Labeler
) -> None:
    """A transaction's commit marker takes an offset that no consumer ever receives, but the log end
    counts it: the partition must still be claimed once its records are written (exactly-once upstreams
    such as Kafka Connect or Flink write input like this)."""
    t = topics(unique)
    for topic, parts in ((t.raw, 1), (t.labeled, 1), (t.dead, 1)):
        create_topic(broker, topic, parts)
    worker = Worker(make_settings(broker, es_url, t, watermark_interval_s=0.2), labeler)
    try:
        producer = KafkaProducer(bootstrap_servers=broker, transactional_id=f"tx-{unique}")
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(3):
            producer.send(t.raw, json.dumps(valid_message(i)).encode(), partition=0)
        producer.commit_transaction()
        producer.close()
        committed_at = time.time()
        wait_for(lambda: committed(broker, t.group, t.raw, 1) == {0: 3}, "commits", 60)
        wait_for(
            lambda: newest(reported(broker, t.labeled), (t.raw, 0)) > committed_at,
            "a watermark past the transaction",
            30,
        )
        worker.close()
    finally:
        worker.stop.set()


def test_failed_watermark_records_are_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """They fail together: a stop during a Kafka outage closes the producer and fails every pending one
    (24 identical lines in one millisecond in a reviewer's run)."""
    from kafka.errors import IllegalStateError

    from finsent.outputs.kafka_outputs import WatermarkFailures

    failed = WatermarkFailures(interval_s=60)
    with caplog.at_level(logging.WARNING, logger="finsent.outputs.kafka_outputs"):
        for _ in range(24):
            failed(IllegalStateError("Producer is closed forcefully."))
        failed.interval_s = 0.0
        failed(IllegalStateError("Producer is closed forcefully."))
        failed.interval_s = 60.0
        for _ in range(5):
            failed(IllegalStateError("Producer is closed forcefully."))
        failed.flush()  # the producer's close: what was held back is counted
        failed.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("1 watermark record(s) not written (IllegalStateError")
    assert lines[1].startswith("24 watermark record(s) not written")
    assert lines[2].startswith("5 watermark record(s) not written")
