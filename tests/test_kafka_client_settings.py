"""The Kafka section's client settings reach every client the workers build (consumer, producer, admin)."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient

from finsent.outputs.kafka_outputs import make_producer
from finsent.runner import make_consumer
from finsent.settings import KafkaSettings, Settings

pytestmark = pytest.mark.kafka


def test_reconnect_backoff_is_bounded_by_default() -> None:
    """kafka-python's own bound is 30 s: a worker took that long to notice a restarted broker."""
    assert KafkaSettings().client_kwargs()["reconnect_backoff_max_ms"] == 1_000


@pytest.mark.parametrize("backoff_ms", [1_000, 4_000])
def test_every_client_gets_the_reconnect_backoff(broker: str, backoff_ms: int) -> None:
    settings = Settings(kafka={"bootstrap_servers": broker, "reconnect_backoff_max_ms": backoff_ms})
    consumer = make_consumer(settings)
    producer = make_producer(settings.kafka)
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        for client in (consumer, producer, admin):
            assert client.config["reconnect_backoff_max_ms"] == backoff_ms, type(client).__name__
            assert client.config["request_timeout_ms"] == settings.kafka.request_timeout_ms
        # retried until delivery_timeout_ms, not 10 times 100 ms apart: a leader election outlasts that
        assert producer.config["retries"] == float("inf")
        assert producer.config["delivery_timeout_ms"] <= 120_000
    finally:
        consumer.close()
        producer.close(timeout=5)
        admin.close()
