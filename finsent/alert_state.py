"""Detector state in a compacted Kafka topic: one record per labeled-topic partition.

Key `<labeled topic>:<partition>`; the value holds the detector snapshot, the next labeled offset it
reflects, the notification outbox and which alerts were notified. It is written (and acknowledged) before
the labeled offsets are committed, and read back when a partition is assigned, so a restart or a
rebalance resumes with baselines, open windows and firing alerts exactly where they were."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from alerts.state_codec import SnapshotDecodeError, decode_state, encode_state
from finsent.settings import CLIENT_CLOSE_TIMEOUT_S

log = logging.getLogger(__name__)

# The largest state record: the producer's max_request_size and the state topic's max.message.bytes (the
# broker default is about 1 MiB, which a busy partition's snapshot can outgrow). deploy/compose.yaml and
# deploy/k8s/kafka-topics.yaml set the same value.
STATE_MAX_BYTES = 16 * 1024 * 1024
STATE_TOPIC_CONFIG: dict[str, str] = {"cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)}
SAVE_TIMEOUT_S = 30.0
"""How long a save waits for the broker's acknowledgement before it fails (the worker then restarts)."""
SAVE_SLICE_S = 1.0
"""How late a stoppable save notices the stop."""
SEND_BLOCK_S = 5.0
"""Longest a save's send() waits for the state topic's metadata before the save fails."""


class SaveStopped(Exception):
    """A save was abandoned because the worker is stopping; nothing was committed past the last save."""


# What the state topic is created with, best first: a broker that rejects a setting gets the next.
_FALLBACK_CONFIGS: tuple[dict[str, str], ...] = (STATE_TOPIC_CONFIG, {"cleanup.policy": "compact"}, {})


def ensure_state_topic(client_kwargs: dict[str, Any], topic: str) -> None:
    """Create the compacted state topic if it is missing (one partition: it is small), allowing records
    as large as the producer may send."""
    admin = KafkaAdminClient(**client_kwargs)
    try:
        if topic in set(admin.list_topics()):
            return
        _create(admin, topic)
    finally:
        admin.close()
    probe = KafkaConsumer(**client_kwargs)
    try:
        deadline = time.monotonic() + 15
        while not probe.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        probe.close()


def _create(admin: KafkaAdminClient, topic: str) -> None:
    """Create the topic with the best settings the broker accepts (it may exist meanwhile)."""
    for configs in _FALLBACK_CONFIGS:
        try:
            admin.create_topics([NewTopic(topic, 1, 1, topic_configs=dict(configs))])
            return
        except TopicAlreadyExistsError:
            return
        except KafkaError as exc:
            if not configs:
                raise
            log.warning("creating %s with %s failed (%s); trying with less", topic, configs, exc)


class StateStore:
    def __init__(
        self,
        client_kwargs: dict[str, Any],
        topic: str,
        labeled_topic: str,
        *,
        consumer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """`consumer_kwargs` (default: `client_kwargs`) for the consumer that reads the state back, with
        the fetch bounds (`KafkaSettings.consumer_kwargs`): the producer refuses those keys."""
        self.client_kwargs = client_kwargs
        self.consumer_kwargs = consumer_kwargs if consumer_kwargs is not None else client_kwargs
        self.topic = topic
        self.labeled_topic = labeled_topic
        # max_block_ms: send() waits that long for the topic's metadata (or buffer room), outside
        # save()'s timeout and deaf to its stop; kafka-python's default is 60 s.
        self.producer = KafkaProducer(
            **client_kwargs,
            acks="all",
            retries=5,
            max_request_size=STATE_MAX_BYTES,
            max_block_ms=int(SEND_BLOCK_S * 1000),
        )

    def key(self, partition: int) -> bytes:
        return f"{self.labeled_topic}:{partition}".encode()

    def save(
        self,
        states: dict[int, dict[str, Any]],
        timeout_s: float = SAVE_TIMEOUT_S,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Write and wait for the acknowledgement of every partition's state; raise on failure. With `stop`,
        the wait ends (SaveStopped) within about a second of it being set: with Kafka away, a save that
        is under way when the pod is told to stop would otherwise hold the shutdown for all of
        `timeout_s`, and the shutdown's own save would come on top of it."""
        futures = [
            self.producer.send(self.topic, key=self.key(p), value=encode_state(s)) for p, s in states.items()
        ]
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                self.producer.flush(timeout=max(0.0, min(left, SAVE_SLICE_S)))
                break
            except KafkaTimeoutError:
                if stop is not None and stop.is_set():
                    raise SaveStopped("stopping while the alert state was unacknowledged") from None
                if left <= SAVE_SLICE_S:
                    raise
        for f in futures:
            f.get(timeout=max(0.0, deadline - time.monotonic()))

    def load(self, partitions: set[int], timeout_s: float = 20.0) -> dict[int, dict[str, Any]]:
        """Latest state of each wanted partition, read from the start of the state topic."""
        wanted = {self.key(p): p for p in partitions}
        found: dict[int, dict[str, Any]] = {}
        consumer = KafkaConsumer(**self.consumer_kwargs, enable_auto_commit=False, group_id=None)
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
        self.producer.close(timeout=CLIENT_CLOSE_TIMEOUT_S)
