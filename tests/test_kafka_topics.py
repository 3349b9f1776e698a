"""finsent.kafka_topics.ensure_topics against both brokers: creates what is missing with the partitions
asked for, leaves existing topics alone, and returns only once producers can see every partition."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer

from finsent.kafka_topics import ensure_topics


def test_ensure_topics_creates_missing_and_keeps_existing(broker: str) -> None:
    a, b = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    client = {"bootstrap_servers": broker}
    ensure_topics(client, [(a, 3)])
    # `a` exists with 3 partitions: asking for 1 now changes nothing; `b` is created alongside.
    ensure_topics(client, [(a, 1), (b, 2)])
    probe = KafkaConsumer(bootstrap_servers=broker)
    try:
        assert len(probe.partitions_for_topic(a) or ()) == 3
        assert len(probe.partitions_for_topic(b) or ()) == 2
    finally:
        probe.close()
