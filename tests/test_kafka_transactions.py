"""The workers' consumers read only what transactional producers committed (`kafka.isolation_level`):
an exactly-once producer upstream (Kafka Streams, Flink) aborts and retries, and with Kafka's default
(read_uncommitted) its aborted records were labeled, indexed and counted as well. Against noida-db, which
filters aborted records for read_committed consumers (the Tansu broker returns them either way)."""

from __future__ import annotations

import time

from kafka import KafkaProducer, TopicPartition

from finsent.runner import make_consumer
from finsent.settings import Settings
from tests.servers import Noida, create_topic


def test_the_labelers_consumer_skips_what_an_aborted_transaction_wrote(noida: Noida, unique: str) -> None:
    topic = f"tx-{unique}"
    create_topic(noida.kafka, topic, 1)
    producer = KafkaProducer(bootstrap_servers=noida.kafka, transactional_id=f"tx-{unique}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed")
    producer.commit_transaction()
    producer.close()
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": noida.kafka,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "pipeline": {"input_topics": [topic], "group_id": topic},
        }
    )
    assert settings.kafka.isolation_level == "read_committed"  # the default, for the alert worker's too
    consumer = make_consumer(settings)
    try:
        assert consumer.config["isolation_level"] == "read_committed"
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while b"committed" not in values:
            assert time.monotonic() < deadline, f"read {values}"
            values += [r.value for r in consumer.poll(timeout_ms=200).get(tp, [])]
        assert values == [b"committed"]
    finally:
        consumer.close(autocommit=False)
