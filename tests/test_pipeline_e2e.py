"""End to end against the real brokers (noida-db and Tansu) and the Elasticsearch API, with the real model:
valid messages land once in Elasticsearch and once per alert key on the labeled topic, malformed ones on
the dead-letter topic with their reason, committed offsets cover exactly what was written."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from alerts.events import KEY_TYPES
from finsent.app import run_pipeline
from finsent.processing import Batch, Labeled
from finsent.settings import Settings
from inference.types import Labeler
from ingest.enrich import cashtags, merge_tickers
from tests.pipeline_helpers import (
    MALFORMED,
    committed,
    headers,
    make_settings,
    publish,
    read_topic,
    real_labeler,
    topics,
    valid_message,
    wait_for,
)
from tests.servers import create_topic, free_port

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)


def es_ids(es_url: str, alias: str) -> Counter[str]:
    client = Elasticsearch(es_url, request_timeout=10)
    if not client.indices.exists_alias(name=alias):
        return Counter()
    client.indices.refresh(index=alias)
    resp = client.search(index=alias, size=10_000, query={"match_all": {}}, source=False)
    return Counter(hit["_id"] for hit in resp["hits"]["hits"])


class Worker:
    """`run_pipeline` in a thread, stopped like SIGTERM would."""

    def __init__(self, settings: Settings, labeler: Labeler) -> None:
        self.stop = threading.Event()
        self.registry = CollectorRegistry()
        self.labeled = 0
        self.error: BaseException | None = None

        def count(batch: Batch, _labeled: Labeled) -> None:
            self.labeled += len(batch.messages)

        def target() -> None:
            try:
                run_pipeline(
                    settings,
                    self.stop,
                    labeler=labeler,
                    registry=self.registry,  # type: ignore[arg-type]
                    on_batch=count,
                )
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker did not stop"
        assert self.error is None, self.error


def test_a_record_too_big_to_forward_is_dead_lettered_truncated(
    broker: str, es_url: str, unique: str, labeler: Labeler, workers: list[Worker]
) -> None:
    """A 1.5 MB record arrives compressed (the broker checks the compressed size); over max_message_bytes
    it is dead-lettered, but cannot be forwarded whole in one produce request (1 MiB): its first bytes
    go, with the original size in a header, and the records after it are labeled."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(broker, topic, 1)
    big = json.dumps({"id": "big-1", "source": "newswire", "text": "x " * 750_000}).encode()
    producer = KafkaProducer(
        bootstrap_servers=broker, compression_type="gzip", max_request_size=4_000_000, acks="all"
    )
    producer.send(t.raw, value=big, partition=0)
    producer.send(t.raw, value=json.dumps(valid_message(1)).encode(), partition=0)
    producer.flush()
    producer.close()
    workers.append(Worker(make_settings(broker, es_url, t), labeler))
    wait_for(lambda: committed(broker, t.group, t.raw, 1) == {0: 2}, "offsets committed past both records")
    workers[0].close()
    (dead,) = read_topic(broker, t.dead, expected=1)
    h = headers(dead)
    assert h["finsent.error"] == b"oversized" and int(h["finsent.truncated"]) == len(big)
    assert big.startswith(dead.value) and len(dead.value) < 1_048_576
    assert es_ids(es_url, f"{t.prefix}-events") == Counter([valid_message(1)["id"]])


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.thread.is_alive():
            w.stop.set()
            w.thread.join(timeout=60)


def test_end_to_end(broker: str, es_url: str, unique: str, labeler: Labeler, workers: list[Worker]) -> None:
    t = topics(unique)
    create_topic(broker, t.raw, 3)
    create_topic(broker, t.labeled, 4)
    create_topic(broker, t.dead, 1)
    n = 90
    valid = [valid_message(i) for i in range(n)]
    records = [(i % 3, m["id"].encode(), json.dumps(m).encode()) for i, m in enumerate(valid)]
    records += [(i % 3, None, raw) for i, (raw, _) in enumerate(MALFORMED)]
    publish(broker, t.raw, records)
    per_partition = Counter(p for p, _, _ in records)

    port = free_port()
    settings = make_settings(broker, es_url, t, metrics_port=port)
    workers.append(Worker(settings, labeler))
    wait_for(lambda: sum(es_ids(es_url, f"{t.prefix}-events").values()) >= n, "documents in Elasticsearch")
    wait_for(lambda: committed(broker, t.group, t.raw, 3) == dict(per_partition), "offsets committed", 30)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"started": True, "consuming": True}
    lag_zero = f'finsent_consumer_lag_messages{{partition="0",topic="{t.raw}"}} 0.0'
    wait_for(lambda: lag_zero in httpx.get(f"http://127.0.0.1:{port}/metrics").text, "lag gauge at 0", 10)
    assert "finsent_model_info{" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    registry = workers[0].registry
    workers[0].close()

    ids = es_ids(es_url, f"{t.prefix}-events")
    assert ids == Counter(m["id"] for m in valid)

    expected_keys: Counter[str] = Counter()
    for m in valid:
        tickers = merge_tickers(m["tickers"], cashtags(m["text"]))
        expected_keys.update([f"ticker:{x}" for x in tickers] + [f"source:{m['source']}", "all:*"])
    labeled = read_topic(broker, t.labeled, expected=sum(expected_keys.values()) + n)
    events = [json.loads(r.value) for r in labeled]
    assert len(events) == sum(expected_keys.values()) + n
    assert len({e["event_id"] for e in events}) == len(events), "an event was written twice"
    assert Counter(e["id"] for e in events if e["key_type"] == "all") == Counter(m["id"] for m in valid)
    keys = Counter(r.key.decode() for r in labeled)
    for key, count in expected_keys.items():
        assert keys[key] == count, key
    assert sum(1 for e in events if e["key_type"] == "topic") == n
    for r, e in zip(labeled, events, strict=True):
        assert r.key.decode() == f"{e['key_type']}:{e['key']}"
        assert set(e["sentiment_probs"]) == set(labeler.sentiment_labels)

    dead = read_topic(broker, t.dead, expected=len(MALFORMED))
    assert sorted(r.value for r in dead) == sorted(raw for raw, _ in MALFORMED)
    by_value = {r.value: headers(r) for r in dead}
    for raw, code in MALFORMED:
        h = by_value[raw]
        assert h["finsent.error"].decode() == code
        assert h["finsent.reason"] and h["finsent.topic"].decode() == t.raw
        assert int(h["finsent.offset"]) >= 0 and int(h["finsent.partition"]) in (0, 1, 2)

    assert registry.get_sample_value("finsent_messages_labeled_total", {"source": "news"}) == n / 2
    assert registry.get_sample_value("finsent_messages_dead_lettered_total", {"reason": "schema"}) == 2
    assert (registry.get_sample_value("finsent_batches_total") or 0) >= 1
    assert set(KEY_TYPES) == {e["key_type"] for e in events}


def test_two_workers_split_partitions(
    broker: str, es_url: str, unique: str, labeler: Labeler, workers: list[Worker]
) -> None:
    t = topics(unique)
    create_topic(broker, t.raw, 4)
    create_topic(broker, t.labeled, 2)
    create_topic(broker, t.dead, 1)
    settings = make_settings(broker, es_url, t)
    workers.append(Worker(settings, labeler))
    wait_for(lambda: _lag_partitions(workers[0], t.raw) == [0, 1, 2, 3], "the first worker assigned", 45)
    workers.append(Worker(settings, real_labeler()))  # a second model: as in a second process

    wait_for(lambda: all(_assigned(w, t.raw) for w in workers), "both workers assigned", 45)
    n = 120
    valid = [valid_message(i) for i in range(n)]
    publish(broker, t.raw, [(i % 4, None, json.dumps(m).encode()) for i, m in enumerate(valid)])
    wait_for(lambda: sum(w.labeled for w in workers) >= n, "all labeled", 60)
    # Each partition's lag is exported by its owner only: a worker that gave partitions away at the
    # rebalance kept exporting them, stale, so sums over the group counted them twice.
    wait_for(
        lambda: sorted(p for w in workers for p in _lag_partitions(w, t.raw)) == [0, 1, 2, 3],
        "one lag series per partition across the group",
        30,
    )
    for w in workers:
        w.close()
    assert all(w.labeled > 0 for w in workers), [w.labeled for w in workers]
    assert sum(w.labeled for w in workers) == n
    assert es_ids(es_url, f"{t.prefix}-events") == Counter(m["id"] for m in valid)
    events = [json.loads(r.value) for r in read_topic(broker, t.labeled, expected=n * 3, settle_s=0.2)]
    assert Counter(e["event_id"] for e in events if e["key_type"] == "all") == Counter(
        f"{m['id']}|all:*" for m in valid
    )


def _lag_partitions(worker: Worker, topic: str) -> list[int]:
    """The partitions of `topic` (of 4) for which `worker` exports a lag series."""
    return [
        p
        for p in range(4)
        if worker.registry.get_sample_value(
            "finsent_consumer_lag_messages", {"topic": topic, "partition": str(p)}
        )
        is not None
    ]


def _assigned(worker: Worker, topic: str) -> bool:
    """A worker is in the group once it reports lag for at least one partition of `topic`."""
    return bool(_lag_partitions(worker, topic))


def test_authors_can_be_left_out_of_the_documents(
    broker: str, es_url: str, unique: str, labeler: Labeler, workers: list[Worker]
) -> None:
    """`pipeline.store_authors: false`: only clear text or a pseudonym could be stored, though a post's
    author is personal data an index may have no use for."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(broker, topic, 1)
    message = {**valid_message(1), "author": "jane@example.com"}
    publish(broker, t.raw, [(0, None, json.dumps(message).encode())])
    workers.append(Worker(make_settings(broker, es_url, t, store_authors=False), labeler))
    wait_for(lambda: committed(broker, t.group, t.raw, 1) == {0: 1}, "offset committed past the message")
    workers[0].close()
    client = Elasticsearch(es_url, request_timeout=10)
    client.indices.refresh(index=f"{t.prefix}-events")
    (hit,) = client.search(index=f"{t.prefix}-events", query={"match_all": {}})["hits"]["hits"]
    assert hit["_source"]["author"] is None and hit["_source"]["id"] == message["id"]
