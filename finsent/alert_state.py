"""Detector state in a compacted Kafka topic: one record per alert deployment and labeled-topic partition.

Key `<labeled topic>:<partition>:<alerts.group_id>` (earlier releases: `<labeled topic>:<partition>`, read
once when no record has the new key yet); the value holds the detector snapshot, the next labeled offset it
reflects, the notification outbox and which alerts were notified. It is written (and acknowledged) before
the labeled offsets are committed, and read back when a partition is assigned, so a restart or a
rebalance resumes with baselines, open windows and firing alerts exactly where they were."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from alerts.state_codec import MAGIC, SnapshotDecodeError, decode_state, encode_state
from finsent.kafka_topics import BROKER_DEFAULT_REPLICATION
from finsent.settings import CLIENT_CLOSE_TIMEOUT_S

log = logging.getLogger(__name__)

# The largest state record: the producer's max_request_size and the state topic's max.message.bytes (the
# broker default is about 1 MiB, which a busy partition's snapshot can outgrow). deploy/compose.yaml and
# deploy/k8s/kafka-topics.yaml set the same value.
STATE_MAX_BYTES = 16 * 1024 * 1024
STATE_SEGMENT_MS = 10 * 60 * 1000
STATE_SEGMENT_BYTES = 64 * 1024 * 1024
# Kafka never compacts a topic's active segment, which by default rolls only at 1 GiB or after 7 days: every
# save (up to ~0.5 MB per partition each alerts.state_interval_s) would stay in it, and a restore reads the
# topic from its start. Rolling at 10 minutes or 64 MiB, and compacting once a tenth of the log is
# superseded, keeps what a restore reads to about one segment plus one record per partition.
# deploy/compose.yaml and deploy/k8s/kafka-topics.yaml set the same values (tests/test_deploy_static.py).
STATE_TOPIC_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(STATE_MAX_BYTES),
    "segment.ms": str(STATE_SEGMENT_MS),
    "segment.bytes": str(STATE_SEGMENT_BYTES),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(60 * 60 * 1000),  # how long a tombstone stays visible to a restore: 1 h
}
SAVE_TIMEOUT_S = 30.0
"""How long a save waits for the broker's acknowledgement before it fails (the worker then restarts)."""
SAVE_SLICE_S = 1.0
"""How late a stoppable save notices the stop."""
SEND_BLOCK_S = 5.0
"""Longest a save's send() waits for the state topic's metadata before the save fails."""
LOAD_IDLE_TIMEOUT_S = 20.0
"""A restore fails when no record arrived for this long (before reaching the end of the state topic)."""
LOAD_MAX_S = 240.0
"""A restore fails after this long even while records keep arriving: below kafka.max_poll_interval_ms's
default (300 s), as the read runs inside the group's rebalance callback."""
LOAD_PROGRESS_LOG_S = 10.0
"""How often a long restore logs how much it has read."""


class SaveStopped(Exception):
    """A save was abandoned because the worker is stopping; nothing was committed past the last save."""


class NewerState(Exception):
    """A state record written by a newer release: this one can neither read it nor, starting fresh,
    overwrite it (rolling forward again would find the state lost)."""


def newer_state(topic: str, key: bytes, found: str, reads: str) -> NewerState:
    """The one-line error for a state record of a newer release, with what the operator can do."""
    name = key.decode(errors="replace")
    return NewerState(
        f"the alert state record {name!r} in {topic} was written by a newer finsent ({found}; this release "
        f"reads {reads}): roll forward to that release, or, to start the partition fresh, delete the record "
        f"with a tombstone (echo {name + '|'!r} | kcat -b <broker> -t {topic} -P -Z -K '|')"
    )


def state_key(labeled_topic: str, partition: int, group_id: str | None) -> bytes:
    """The state record's key: `<labeled topic>:<partition>:<group id>`, or without the group id (None)
    as earlier releases wrote it. A topic name holds no ':', so the group id (which may) goes last."""
    if group_id is None:
        return f"{labeled_topic}:{partition}".encode()
    return f"{labeled_topic}:{partition}:{group_id}".encode()


def _newer_codec(value: bytes) -> bool:
    """Whether an undecodable record carries the magic of a later codec version (FSA2, ...)."""
    mark = value[len(MAGIC) - 1 : len(MAGIC)]
    return value.startswith(MAGIC[:-1]) and mark.isdigit() and mark > MAGIC[-1:]


# What the state topic is created with, best first: a broker that rejects a setting gets the next.
_FALLBACK_CONFIGS: tuple[dict[str, str], ...] = (
    STATE_TOPIC_CONFIG,
    {"cleanup.policy": "compact", "max.message.bytes": str(STATE_MAX_BYTES)},
    {"cleanup.policy": "compact"},
    {},
)
# Settings without which the topic's log grows until restores time out (see STATE_TOPIC_CONFIG).
_SEGMENT_KEYS = ("segment.ms", "segment.bytes")


STATE_HEADROOM_BYTES = 64 * 1024
"""Room left in a state record's limit for its key, headers and batch framing."""
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
"""Apache Kafka's default message.max.bytes: the limit of a topic created without its own."""


def ensure_state_topic(client_kwargs: dict[str, Any], topic: str) -> int:
    """Create the compacted state topic if it is missing (one partition: it is small), allowing records
    as large as the producer may send and rolling segments early so that compaction keeps it small. An
    existing topic is left as it is, with a warning if it rolls its segments later than that or takes
    smaller records. Returns the largest state value to send as it is (`StateStore.max_record_bytes`):
    a record over the topic's `max.message.bytes` is refused by the broker at every save."""
    admin = KafkaAdminClient(**client_kwargs)
    try:
        if topic in set(admin.list_topics()):
            return state_record_limit(_check_existing(admin, topic))
        created_with = _create(admin, topic)
    finally:
        admin.close()
    probe = KafkaConsumer(**client_kwargs, enable_auto_commit=False)  # no group: no auto-commit warning
    try:
        deadline = time.monotonic() + 15
        while not probe.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        probe.close()
    if "max.message.bytes" in created_with:
        return state_record_limit(STATE_MAX_BYTES)
    log.warning(
        "alert state topic %s was created without max.message.bytes=%d (the broker refused it): a state "
        "record is then limited by the broker's message.max.bytes (1 MiB by default)",
        topic,
        STATE_MAX_BYTES,
    )
    return state_record_limit(BROKER_DEFAULT_MAX_MESSAGE_BYTES)


def state_record_limit(topic_max_message_bytes: int | None) -> int:
    """The largest state value sent as it is, for a topic taking records of `topic_max_message_bytes`
    (None: not reported, assumed to be finsent's own STATE_MAX_BYTES), never above the producer's
    STATE_MAX_BYTES."""
    limit = min(STATE_MAX_BYTES, topic_max_message_bytes or STATE_MAX_BYTES)
    return max(limit - STATE_HEADROOM_BYTES, STATE_HEADROOM_BYTES)


def _check_existing(admin: KafkaAdminClient, topic: str) -> int | None:
    """Warn when an existing state topic (created by hand, or before STATE_TOPIC_CONFIG had the segment
    settings) rolls its segments later than ours: its uncompacted active segment then grows to the broker
    default (1 GiB or 7 days), all of which every restore reads; or takes records smaller than ours: a busy
    partition's state is then saved without its event-id hashes, or not at all. Advice only: nothing is
    changed. Returns the topic's max.message.bytes: the broker's default (1 MiB) when it reports the
    topic's settings but not that one, None when it reports none at all.

    Every setting is asked for (`config_filter="all"`): kafka-python's default filter keeps only those set
    on the topic itself, so a topic created with `cleanup.policy=compact` alone looked like one taking
    16 MiB records while the broker took 1 MiB, and every save of a state over 1 MiB failed."""
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
        configs = described["topic"][topic]
        if not configs:  # reports no setting of the topic, not even its cleanup.policy: cannot tell
            return None
        too_late = [
            k for k in _SEGMENT_KEYS if k in configs and int(configs[k]["value"]) > int(STATE_TOPIC_CONFIG[k])
        ]
        max_bytes = (
            int(configs["max.message.bytes"]["value"])
            if "max.message.bytes" in configs
            else BROKER_DEFAULT_MAX_MESSAGE_BYTES
        )
        policy = str(configs.get("cleanup.policy", {}).get("value") or "")
    except Exception as exc:  # the check is advice: the topic exists and is used as it is
        log.debug("could not read the settings of %s: %s", topic, exc)
        return None
    if policy and "compact" not in policy.split(","):
        log.warning(
            "alert state topic %s has cleanup.policy=%s: retention deletes the state of quiet partitions "
            "and every restore reads all saves kept; make it compacted with kafka-configs.sh "
            "--bootstrap-server <broker> --alter --entity-type topics --entity-name %s --add-config "
            "cleanup.policy=compact",
            topic,
            policy,
            topic,
        )
    if too_late:
        wanted = ",".join(
            f"{k}={STATE_TOPIC_CONFIG[k]}"
            for k in ("segment.ms", "segment.bytes", "min.cleanable.dirty.ratio")
        )
        log.warning(
            "alert state topic %s has %s unset or above finsent's: Kafka never compacts the active segment, "
            "so every restore reads more of the log; set them with kafka-configs.sh --bootstrap-server "
            "<broker> --alter --entity-type topics "
            "--entity-name %s --add-config %s",
            topic,
            " and ".join(too_late),
            topic,
            wanted,
        )
    if max_bytes is not None and max_bytes < STATE_MAX_BYTES:
        log.warning(
            "alert state topic %s takes records of at most %d bytes (max.message.bytes): a busy partition's "
            "state over that is saved without its event-id hashes, or refused; raise it with "
            "kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics --entity-name %s "
            "--add-config max.message.bytes=%d",
            topic,
            max_bytes,
            topic,
            STATE_MAX_BYTES,
        )
    return max_bytes


def _create(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    """Create the topic with the best settings the broker accepts (it may exist meanwhile); returns them
    (STATE_TOPIC_CONFIG when another worker created it meanwhile)."""
    for configs in _FALLBACK_CONFIGS:
        try:
            # replication -1: the broker's default.replication.factor (1 pinned every state to one broker)
            admin.create_topics([NewTopic(topic, 1, BROKER_DEFAULT_REPLICATION, topic_configs=dict(configs))])
            return configs
        except TopicAlreadyExistsError:
            return STATE_TOPIC_CONFIG
        except KafkaError as exc:
            if not configs:
                raise
            log.warning("creating %s with %s failed (%s); trying with less", topic, configs, exc)
    raise AssertionError("the last fallback, no settings, either succeeds or raises")


# What a state too large for the topic is saved without, in this order: first the open windows' text
# hashes (texts seen before a restart may count once more), then their event-id hashes too (events read
# again may count twice). 8 bytes per event each.
LEAN_STEPS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"text_hashes"}), "text hashes, so texts seen before a restart may be counted once more"),
    (
        frozenset({"text_hashes", "id_hashes"}),
        "event-id and text hashes, so events read again after a restart may be counted twice",
    ),
)


def _without(value: Any, keys: frozenset[str]) -> Any:
    """A copy of a state (nested dicts and lists) without the entries named `keys`."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


class StateStore:
    def __init__(
        self,
        client_kwargs: dict[str, Any],
        topic: str,
        labeled_topic: str,
        *,
        consumer_kwargs: dict[str, Any] | None = None,
        max_record_bytes: int = STATE_MAX_BYTES - STATE_HEADROOM_BYTES,
        group_id: str | None = None,
    ) -> None:
        """`consumer_kwargs` (default: `client_kwargs`) for the consumer that reads the state back, with
        the fetch bounds (`KafkaSettings.consumer_kwargs`): the producer refuses those keys.
        `max_record_bytes`: the largest state record sent as it is (room left for the key and headers).
        `group_id`: the alert deployment (`alerts.group_id`) whose records these are, so that two
        deployments sharing the state topic (a shadow run of new settings) keep their own; None, for a
        reader that is no deployment (tools, tests): each partition's latest record, whoever wrote it,
        and saves under the key of earlier releases."""
        self.max_record_bytes = max_record_bytes
        self.group_id = group_id
        # partition -> the key of the record its last load found (the old one at an upgrade), for errors
        self.loaded_from: dict[int, bytes] = {}
        self.client_kwargs = client_kwargs
        self.consumer_kwargs = consumer_kwargs if consumer_kwargs is not None else client_kwargs
        self.topic = topic
        self.labeled_topic = labeled_topic
        # max_block_ms: send() waits that long for the topic's metadata (or buffer room), outside
        # save()'s timeout and deaf to its stop; kafka-python's default is 60 s.
        self.producer = KafkaProducer(
            **client_kwargs,
            acks="all",
            max_request_size=STATE_MAX_BYTES,
            max_block_ms=int(SEND_BLOCK_S * 1000),
        )

    def key(self, partition: int) -> bytes:
        """Where this deployment's state of `partition` is saved."""
        return state_key(self.labeled_topic, partition, self.group_id)

    def legacy_key(self, partition: int) -> bytes:
        """The key of releases before the group id was in it: shared by every deployment."""
        return state_key(self.labeled_topic, partition, None)

    def _any_group(self, key: bytes | None, partitions: set[int]) -> int | None:
        """The wanted partition whose state `key` holds, whichever deployment saved it (group_id None)."""
        parts = (key or b"").split(b":", 2)
        if len(parts) == 3 and parts[0] == self.labeled_topic.encode() and parts[1].isdigit():
            p = int(parts[1])
            return p if p in partitions else None
        return None

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
            self.producer.send(self.topic, key=self.key(p), value=self._encoded(p, s))
            for p, s in states.items()
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

    def _encoded(self, partition: int, state: dict[str, Any]) -> bytes:
        """The state record; over the topic's record limit, without the open windows' text hashes, then
        without their event-id hashes too (`LEAN_STEPS`).

        Those hashes (8 bytes per event counted in an open window, and 8 per text with
        `alerts.repeated_texts: once`) are what lets a replay, and a text posted again, count once, and
        they grow with the message rate: the partition holding the `all` key passes 16 MiB at about 850
        messages/s with 900 s windows, and about 1,700 without the text hashes (as before texts were
        counted once). Refused by Kafka, the save would fail at every restart. Without them the worker
        runs on, warned."""
        value = encode_state(state)
        if len(value) <= self.max_record_bytes:
            return value
        for keys, without in LEAN_STEPS:
            lean = encode_state(_without(state, keys))
            if len(lean) <= self.max_record_bytes:
                log.warning(
                    "the alert state of %s[%d] is %.1f MB, over the state topic's %.1f MB: saved without the "
                    "open windows' %s (%.1f MB; add labeled-topic partitions, or shorten alerts.window_s)",
                    self.labeled_topic,
                    partition,
                    len(value) / 1e6,
                    self.max_record_bytes / 1e6,
                    without,
                    len(lean) / 1e6,
                )
                return lean
        raise ValueError(
            f"the alert state of {self.labeled_topic}[{partition}] is {len(lean) / 1e6:.1f} MB even "
            f"without its event-id hashes, over the state topic's {self.max_record_bytes / 1e6:.1f} MB "
            "(too many keys: lower alerts.max_keys or alerts.key_ttl_windows, or watch fewer key types)"
        )

    def load(
        self,
        partitions: set[int],
        timeout_s: float = LOAD_IDLE_TIMEOUT_S,
        *,
        max_s: float = LOAD_MAX_S,
        progress_every_s: float = LOAD_PROGRESS_LOG_S,
    ) -> dict[int, dict[str, Any]]:
        """Latest state of each wanted partition, read from the start of the state topic.

        Only the latest record of each wanted partition is kept while reading, and decoded at the end, so
        a long uncompacted log costs reading time, not decoding time. The read fails (TimeoutError) when
        no record arrived for `timeout_s` before the end of the topic was reached, or when it has taken
        `max_s` in all; a long read logs how much it has read every `progress_every_s`.

        A partition with no record under this deployment's key gets the one under the key of earlier
        releases (once: the next save uses the new key), so an upgrade keeps its state. Raises NewerState
        for a record of a later codec: read as garbled, it would be overwritten by a fresh state."""
        wanted = {self.key(p): p for p in partitions}
        legacy = {self.legacy_key(p): p for p in partitions} if self.group_id is not None else {}
        latest: dict[int, tuple[bytes, bytes | None]] = {}  # partition -> (the record's key, its value)
        older: dict[int, bytes | None] = {}
        records_read = bytes_read = 0
        consumer = KafkaConsumer(**self.consumer_kwargs, enable_auto_commit=False, group_id=None)
        try:
            tps = [
                TopicPartition(self.topic, p)
                for p in sorted(consumer.partitions_for_topic(self.topic) or {0})
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            started = last_record = next_log = time.monotonic()
            next_log += progress_every_s
            while True:
                batch = consumer.poll(timeout_ms=300, max_records=500)
                now = time.monotonic()
                for records in batch.values():
                    last_record = now
                    for r in records:
                        records_read += 1
                        bytes_read += max(r.serialized_key_size, 0) + max(r.serialized_value_size, 0)
                        p = wanted.get(r.key)
                        if p is not None:
                            latest[p] = (r.key, r.value)  # None: a tombstone, the state was deleted
                        elif r.key in legacy:
                            older[legacy[r.key]] = r.value
                        elif self.group_id is None and (p := self._any_group(r.key, partitions)) is not None:
                            latest[p] = (r.key, r.value)
                done = True
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or consumer.position(tp) < hw:
                        done = False
                if done and not batch:
                    break
                if now - last_record >= timeout_s:
                    raise TimeoutError(
                        f"reading alert state from {self.topic} stalled: no record for {timeout_s:.0f}s "
                        f"(read {bytes_read / 1e6:.1f} MB in {now - started:.0f}s)"
                    )
                if now - started >= max_s:
                    raise TimeoutError(
                        f"reading alert state from {self.topic} did not finish in {max_s:.0f}s "
                        f"(read {bytes_read / 1e6:.1f} MB, {records_read} records)"
                    )
                if now >= next_log:
                    next_log = now + progress_every_s
                    log.info(
                        "read %.1f MB of alert state from %s so far (%d records in %.0fs)",
                        bytes_read / 1e6,
                        self.topic,
                        records_read,
                        now - started,
                    )
            took = time.monotonic() - started
            if took >= progress_every_s:
                log.info(
                    "read %.1f MB of alert state from %s in %.0fs (%d records)",
                    bytes_read / 1e6,
                    self.topic,
                    took,
                    records_read,
                )
        finally:
            consumer.close()
        for p, value in sorted(older.items()):
            if p not in latest and value is not None:
                log.info(
                    "partition %d: alert state read from the key of earlier releases (%s); saved under %s "
                    "from now on",
                    p,
                    self.legacy_key(p).decode(errors="replace"),
                    self.key(p).decode(errors="replace"),
                )
                latest[p] = (self.legacy_key(p), value)
        found: dict[int, dict[str, Any]] = {}
        for p, (key, value) in latest.items():
            if value is None:
                continue
            self.loaded_from[p] = key
            try:
                found[p] = decode_state(value)
            except SnapshotDecodeError as exc:
                if _newer_codec(value):
                    codec = value[: len(MAGIC)].decode(errors="replace")
                    raise newer_state(self.topic, key, f"codec {codec}", f"codec {MAGIC.decode()}") from None
                log.error("ignoring unreadable alert state for partition %d: %s", p, exc)
        return found

    def close(self) -> None:
        self.producer.close(timeout=CLIENT_CLOSE_TIMEOUT_S)
