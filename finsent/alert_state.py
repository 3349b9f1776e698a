"""Detector state in a compacted Kafka topic: one record per labeled-topic partition.

Key `<labeled topic>:<partition>`; the value holds the detector snapshot, the next labeled offset it
reflects, the notification outbox and which alerts were notified. It is written (and acknowledged) before
the labeled offsets are committed, and read back when a partition is assigned, so a restart or a
rebalance resumes with baselines, open windows and firing alerts exactly where they were."""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from alerts.state_codec import SnapshotDecodeError, decode_state, encode_state

log = logging.getLogger(__name__)


def ensure_state_topic(client_kwargs: dict[str, Any], topic: str) -> None:
    """Create the compacted state topic if it is missing (one partition: it is small)."""
    admin = KafkaAdminClient(**client_kwargs)
    try:
        if topic in set(admin.list_topics()):
            return
        try:
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            return
        except KafkaError as exc:
            log.warning("creating %s with cleanup.policy=compact failed (%s); creating it plain", topic, exc)
            try:
                admin.create_topics([NewTopic(topic, 1, 1)])
            except TopicAlreadyExistsError:
                return
    finally:
        admin.close()
    probe = KafkaConsumer(**client_kwargs)
    try:
        deadline = time.monotonic() + 15
        while not probe.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        probe.close()


class StateStore:
    def __init__(self, client_kwargs: dict[str, Any], topic: str, labeled_topic: str) -> None:
        self.client_kwargs = client_kwargs
        self.topic = topic
        self.labeled_topic = labeled_topic
        self.producer = KafkaProducer(
            **client_kwargs, acks="all", retries=5, max_request_size=16 * 1024 * 1024
        )

    def key(self, partition: int) -> bytes:
        return f"{self.labeled_topic}:{partition}".encode()

    def save(self, states: dict[int, dict[str, Any]], timeout_s: float = 30.0) -> None:
        """Write and wait for the acknowledgement of every partition's state; raise on failure."""
        futures = [
            self.producer.send(self.topic, key=self.key(p), value=encode_state(s)) for p, s in states.items()
        ]
        self.producer.flush(timeout=timeout_s)
        for f in futures:
            f.get(timeout=timeout_s)

    def load(self, partitions: set[int], timeout_s: float = 20.0) -> dict[int, dict[str, Any]]:
        """Latest state of each wanted partition, read from the start of the state topic."""
        wanted = {self.key(p): p for p in partitions}
        found: dict[int, dict[str, Any]] = {}
        consumer = KafkaConsumer(**self.client_kwargs, enable_auto_commit=False, group_id=None)
        try:
            tps = [
                TopicPartition(self.topic, p)
                for p in sorted(consumer.partitions_for_topic(self.topic) or {0})
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=300, max_records=500)
                for records in batch.values():
                    for r in records:
                        p = wanted.get(r.key)
                        if p is None:
                            continue
                        if r.value is None:
                            found.pop(p, None)
                            continue
                        try:
                            found[p] = decode_state(r.value)
                        except SnapshotDecodeError as exc:
                            log.error("ignoring unreadable alert state for partition %d: %s", p, exc)
                done = True
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or consumer.position(tp) < hw:
                        done = False
                if done and not batch:
                    break
            else:
                raise TimeoutError(
                    f"reading alert state from {self.topic} did not finish in {timeout_s:.0f}s"
                )
        finally:
            consumer.close()
        return found

    def close(self) -> None:
        self.producer.close(timeout=5)
