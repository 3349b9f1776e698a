"""Elasticsearch down in the middle of a run: the pipeline stops consuming and committing, loses nothing,
and catches up when Elasticsearch is back."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from inference.types import Labeler
from tests.pipeline_helpers import (
    BulkOutageProxy,
    Topics,
    committed,
    make_settings,
    publish,
    real_labeler,
    topics,
    valid_message,
    wait_for,
)
from tests.servers import Noida, create_topic
from tests.test_pipeline_e2e import (
    Worker,
    es_ids,
)

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)


def worker_behind_outage_proxy(
    noida: Noida, unique: str, labeler: Labeler, raw_partitions: int, **pipeline: Any
) -> tuple[Topics, BulkOutageProxy, Worker]:
    """A worker writing to Elasticsearch through a proxy that can refuse `_bulk` (an outage)."""
    t = topics(unique)
    create_topic(noida.kafka, t.raw, raw_partitions)
    create_topic(noida.kafka, t.labeled, 1)
    create_topic(noida.kafka, t.dead, 1)
    proxy = BulkOutageProxy(noida.es_url)
    return (
        t,
        proxy,
        Worker(make_settings(noida.kafka, proxy.url, t, batch_max_messages=8, **pipeline), labeler),
    )


def test_outage_holds_commits_and_loses_nothing(noida: Noida, unique: str, labeler: Labeler) -> None:
    broker = noida.kafka
    t, proxy, worker = worker_behind_outage_proxy(noida, unique, labeler, 2, max_batches_in_flight=2)
    try:
        first = [valid_message(i) for i in range(20)]
        publish(broker, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(first)])
        wait_for(lambda: committed(broker, t.group, t.raw, 2) == {0: 10, 1: 10}, "first commits", 60)

        proxy.down.set()
        rest = [valid_message(i) for i in range(20, 220)]
        publish(broker, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(rest)])
        wait_for(lambda: proxy.refused >= 3, "bulk requests refused", 30)
        time.sleep(2.0)
        assert committed(broker, t.group, t.raw, 2) == {0: 10, 1: 10}, (
            "committed while Elasticsearch was down"
        )
        consumed = (
            worker.registry.get_sample_value("finsent_messages_consumed_total", {"source": "news"}) or 0
        )
        consumed += (
            worker.registry.get_sample_value("finsent_messages_consumed_total", {"source": "social"}) or 0
        )
        assert consumed < 220, "kept consuming everything while the sink was down"

        def lag() -> float:
            return sum(
                worker.registry.get_sample_value(
                    "finsent_consumer_lag_messages", {"topic": t.raw, "partition": str(p)}
                )
                or 0.0
                for p in range(2)
            )

        # Paused partitions fetch nothing, so the lag comes from the broker's end offsets, not a stale
        # highwater: it counts the whole backlog.
        wait_for(lambda: lag() == 220 - consumed, f"lag gauge at {220 - consumed} (is {lag()})", 10)
        errors = worker.registry.get_sample_value("finsent_output_errors_total", {"output": "elasticsearch"})
        assert errors and errors >= 1

        proxy.down.clear()
        wait_for(lambda: committed(broker, t.group, t.raw, 2) == {0: 110, 1: 110}, "catch-up commits", 90)
        worker.close()
        assert es_ids(noida.es_url, f"{t.prefix}-events") == Counter(m["id"] for m in first + rest)
    finally:
        worker.stop.set()
        proxy.close()


def test_a_stop_gives_the_batches_in_flight_their_time_to_be_written(
    noida: Noida, unique: str, labeler: Labeler
) -> None:
    """SIGTERM set the event the writers retried on, so a batch in flight gave up at its first setback
    (here a short Elasticsearch outage) and was consumed again after the restart, its labeled events
    twice; it gets pipeline.shutdown_timeout_s, retries included, as the docs say."""
    broker = noida.kafka
    t, proxy, worker = worker_behind_outage_proxy(noida, unique, labeler, 1)  # shutdown_timeout_s 10
    try:
        proxy.down.set()
        messages = [valid_message(i) for i in range(8)]
        publish(broker, t.raw, [(0, None, json.dumps(m).encode()) for m in messages])
        wait_for(lambda: proxy.refused >= 1, "the batch's bulk request refused", 60)
        worker.stop.set()
        time.sleep(1.0)
        proxy.down.clear()
        worker.close()
        assert worker.error is None
        assert committed(broker, t.group, t.raw, 1) == {0: 8}
        assert es_ids(noida.es_url, f"{t.prefix}-events") == Counter(m["id"] for m in messages)
    finally:
        worker.stop.set()
        proxy.close()
