"""Restoring alert state from a long state topic: the topic is created with segment settings that let Kafka
compact it (the active segment is never compacted), and a restore keeps only the latest record of each
partition, decodes once, and is not cut off while it keeps reading, however long the log."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition

import finsent.alert_state as alert_state
from alerts.state_codec import decode_state, encode_state
from finsent.alert_state import (
    BROKER_DEFAULT_MAX_MESSAGE_BYTES,
    STATE_HEADROOM_BYTES,
    STATE_MAX_BYTES,
    STATE_TOPIC_CONFIG,
    StateStore,
    ensure_state_topic,
    state_record_limit,
)
from tests import servers

pytestmark = pytest.mark.kafka

LOGGER = "finsent.alert_state"


def _store(bootstrap: str, topic: str) -> StateStore:
    kw = {"bootstrap_servers": bootstrap}
    ensure_state_topic(kw, topic)
    return StateStore(kw, topic, "labeled")


def _write(store: StateStore, records: list[tuple[int | str, bytes | None]]) -> None:
    """Send (partition or raw key, value) records in order and wait for all of them."""
    for key, value in records:
        k = store.key(key) if isinstance(key, int) else key.encode()
        store.producer.send(store.topic, key=k, value=value)
    store.producer.flush(timeout=30)


class SlowConsumer(KafkaConsumer):  # type: ignore[misc]
    """A real consumer that hands over at most `per_poll` records a poll, `delay_s` apart: a read of a long
    log over a slow link, making progress all the time."""

    per_poll = 4
    delay_s = 0.1

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> Any:
        time.sleep(self.delay_s)
        return super().poll(timeout_ms=timeout_ms, max_records=self.per_poll, update_offsets=update_offsets)


# ---------------------------------------------------------------------------------------- latest record


def test_a_long_log_restores_each_partitions_latest_record_decoding_only_that(
    broker: str, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """300 saves of partition 0 of which only the last is readable: had the earlier ones been decoded,
    each would have been logged as unreadable (and decoding would cost as much as the log is long)."""
    store = _store(broker, f"state-{unique}")
    latest = {"v": 300, "detector": {"windows": list(range(50))}}
    records: list[tuple[int | str, bytes | None]] = []
    for i in range(299):
        records.append((0, b"garbage that decode_state would refuse %d" % i))
        if i % 50 == 0:
            records.append(("other-labeled:0", b"not ours"))  # another labeled topic's key
    records.append((0, encode_state(latest)))
    records += [(1, encode_state({"v": 1})), (1, None)]  # deleted: no state
    records += [(2, None), (2, encode_state({"v": 2}))]  # written again after a delete
    records.append((3, encode_state({"v": 3})))  # not asked for
    try:
        _write(store, records)
        decoded: list[bytes] = []

        def counting_decode(data: bytes) -> dict[str, Any]:
            decoded.append(data)
            return decode_state(data)

        monkeypatch.setattr(alert_state, "decode_state", counting_decode)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            found = store.load({0, 1, 2, 4})
        assert found == {0: latest, 2: {"v": 2}}
        assert len(decoded) == 2
        assert "unreadable" not in caplog.text
    finally:
        store.close()


def test_an_unreadable_latest_record_is_logged_and_its_partition_starts_without_state(
    noida: servers.Noida, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(noida.kafka, f"state-{unique}")
    try:
        _write(store, [(0, encode_state({"v": 1})), (0, b"garbled"), (1, encode_state({"v": 1}))])
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            assert store.load({0, 1}) == {1: {"v": 1}}
        assert "ignoring unreadable alert state for partition 0" in caplog.text
    finally:
        store.close()


def test_an_empty_state_topic_is_read_at_once(noida: servers.Noida, unique: str) -> None:
    store = _store(noida.kafka, f"state-{unique}")
    try:
        started = time.monotonic()
        assert store.load({0, 1}, timeout_s=10) == {}
        assert time.monotonic() - started < 8
    finally:
        store.close()


# --------------------------------------------------------------------------------------------- deadlines


def test_a_read_that_keeps_making_progress_is_not_cut_off(
    noida: servers.Noida, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The read takes well over `timeout_s` (200 records, 4 a poll, 0.1 s apart: 5 s or more, against 2 s),
    but records keep coming: it ends at the end of the topic, logging how much it has read meanwhile.
    (Before, `timeout_s` was a fixed deadline for the whole read: a long log failed every restore.)"""
    store = _store(noida.kafka, f"state-{unique}")
    try:
        _write(store, [(i % 3, encode_state({"v": i})) for i in range(200)])
        monkeypatch.setattr(alert_state, "KafkaConsumer", SlowConsumer)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger=LOGGER):
            found = store.load({0, 1, 2}, timeout_s=2.0, progress_every_s=1.0)
        assert time.monotonic() - started > 2.0 * 2  # it did run past the old limit
        assert found == {0: {"v": 198}, 1: {"v": 199}, 2: {"v": 197}}
        assert "MB of alert state from" in caplog.text and "so far" in caplog.text
    finally:
        store.close()


def test_a_read_that_makes_progress_still_ends_at_its_cap(
    noida: servers.Noida, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(noida.kafka, f"state-{unique}")
    try:
        _write(store, [(0, encode_state({"v": i})) for i in range(200)])
        monkeypatch.setattr(alert_state, "KafkaConsumer", SlowConsumer)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish in 1s"):
            store.load({0}, timeout_s=30, max_s=1.0)
        assert time.monotonic() - started < 10
    finally:
        store.close()


def test_a_read_that_gets_nothing_fails_after_the_idle_timeout(
    own_tansu: servers.Tansu, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stops answering (SIGSTOP) once the read has found the topic's partitions, before it
    fetched a record. (Paused before that, the read would fail in KafkaConsumer() already, unable to
    bootstrap.)"""
    pid = own_tansu.server.proc.pid

    class PausingConsumer(KafkaConsumer):  # type: ignore[misc]
        def assign(self, partitions: list[TopicPartition]) -> None:
            super().assign(partitions)
            os.kill(pid, signal.SIGSTOP)

    store = _store(own_tansu.kafka, f"state-{unique}")
    try:
        _write(store, [(0, encode_state({"v": 1}))])
        monkeypatch.setattr(alert_state, "KafkaConsumer", PausingConsumer)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="stalled: no record for 1s"):
            store.load({0}, timeout_s=1.0)
        assert 0.9 < time.monotonic() - started < 10
    finally:
        os.kill(pid, signal.SIGCONT)  # own_tansu resumes it too; the store's producer closes now
        store.close()


# -------------------------------------------------------------------------------------------- the topic


def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return {k: str(v["value"]) for k, v in described["topic"][topic].items()}


def test_the_state_topic_is_created_to_be_compacted_segment_by_segment(
    noida: servers.Noida, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka never compacts the active segment: the topic rolls at 10 min or 64 MiB, not 7 days or 1 GiB."""
    topic = f"state-{unique}"
    limit = ensure_state_topic({"bootstrap_servers": noida.kafka}, topic)
    assert limit == STATE_MAX_BYTES - STATE_HEADROOM_BYTES
    configs = _topic_configs(noida.kafka, topic)
    assert {k: configs.get(k) for k in STATE_TOPIC_CONFIG} == STATE_TOPIC_CONFIG
    assert int(configs["segment.ms"]) <= 10 * 60 * 1000
    assert int(configs["segment.bytes"]) <= 64 * 1024 * 1024
    # it exists now, with the settings: a second call leaves it alone, without a warning
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert ensure_state_topic({"bootstrap_servers": noida.kafka}, topic) == limit
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_an_existing_state_topic_that_rolls_late_is_warned_about(
    noida: servers.Noida, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"state-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=noida.kafka)
    try:  # as the deploy files created it before the segment settings
        admin.create_topics(
            [
                NewTopic(
                    topic, 1, 1, topic_configs={"cleanup.policy": "compact", "max.message.bytes": "16777216"}
                )
            ]
        )
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ensure_state_topic({"bootstrap_servers": noida.kafka}, topic)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "segment.ms and segment.bytes" in warning
    assert f"--entity-name {topic} --add-config segment.ms=600000,segment.bytes=67108864" in warning
    assert "segment.ms" not in _topic_configs(noida.kafka, topic)  # advice only: nothing was changed


def test_an_existing_state_topic_with_a_smaller_record_limit_is_warned_about_and_kept_to(
    noida: servers.Noida, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A state topic created by hand takes the broker's 1 MiB records: a state between that and finsent's
    16 MiB was sent whole and refused at every save (the worker restarted for ever). The worker now sends
    states over the topic's own limit without their event-id hashes, and says how to raise the limit."""
    topic = f"state-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=noida.kafka)
    try:
        config = {**STATE_TOPIC_CONFIG, "max.message.bytes": "1048576"}
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        limit = ensure_state_topic({"bootstrap_servers": noida.kafka}, topic)
    assert limit == 1048576 - STATE_HEADROOM_BYTES
    (warning,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "at most 1048576 bytes" in warning
    assert f"--entity-name {topic} --add-config max.message.bytes={STATE_MAX_BYTES}" in warning


@pytest.mark.parametrize(
    ("configs", "policy_warned"),
    [({"cleanup.policy": "compact"}, False), ({}, True)],
    ids=["compact-only", "no-settings"],
)
def test_a_state_topic_without_its_own_record_limit_is_held_to_the_brokers(
    noida: servers.Noida,
    unique: str,
    caplog: pytest.LogCaptureFixture,
    configs: dict[str, str],
    policy_warned: bool,
) -> None:
    """A topic made with `--config cleanup.policy=compact` alone (or with nothing) takes the broker's
    default 1 MiB records. kafka-python's describe_configs reports only the settings made on the topic
    unless asked for all, so the limit read as unknown, i.e. 16 MiB: a state over 1 MiB was refused at
    every save. A topic that is not compacted is warned about too (retention deletes quiet partitions'
    state)."""
    topic = f"state-{unique}"
    admin = KafkaAdminClient(bootstrap_servers=noida.kafka)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        limit = ensure_state_topic({"bootstrap_servers": noida.kafka}, topic)
    assert limit == BROKER_DEFAULT_MAX_MESSAGE_BYTES - STATE_HEADROOM_BYTES
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(f"at most {BROKER_DEFAULT_MAX_MESSAGE_BYTES} bytes" in w for w in warnings), warnings
    policy = [w for w in warnings if "cleanup.policy=delete" in w]
    assert len(policy) == policy_warned, warnings
    if policy_warned:
        assert policy[0].endswith(f"--entity-name {topic} --add-config cleanup.policy=compact")


def test_the_state_record_limit_follows_the_topic_within_the_producers() -> None:
    assert state_record_limit(None) == STATE_MAX_BYTES - STATE_HEADROOM_BYTES
    assert state_record_limit(64 * 1024 * 1024) == STATE_MAX_BYTES - STATE_HEADROOM_BYTES
    assert state_record_limit(1_000_000) == 1_000_000 - STATE_HEADROOM_BYTES
    assert state_record_limit(1000) == STATE_HEADROOM_BYTES  # a nonsense limit still leaves a usable one
