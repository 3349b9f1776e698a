"""What one fetch may bring into a worker's memory is bounded by `kafka.fetch_max_bytes` and
`kafka.max_partition_fetch_bytes`, not by the backlog (kafka-python's own default is 50 MiB a fetch).
Against both brokers: Tansu keeps to the bounds; noida-db ignores them and answers with the whole backlog
(docs/performance.md), which this pins down so that the docs stay true if it changes."""

from __future__ import annotations

import time

from kafka import KafkaProducer

from finsent.runner import make_consumer
from finsent.settings import Settings
from tests.servers import create_topic

BOUND = 64 * 1024
RECORDS = 6000
VALUE = b"x" * 300  # 6,000 records of 300 bytes: about 1.9 MB of backlog, 29 times the bound


def fetch_size_max(consumer: object) -> float:
    """kafka-python's largest fetch response so far, in bytes (its consumer metric `fetch-size-max`)."""
    for name, metric in consumer.metrics(raw=True).items():  # type: ignore[attr-defined]
        if name.name == "fetch-size-max" and not name.tags.get("topic"):
            return float(metric.value())
    raise AssertionError("kafka-python has no fetch-size-max metric")


def test_the_pipeline_consumer_fetches_at_most_the_configured_bytes(
    broker: str, broker_name: str, unique: str
) -> None:
    topic = f"fetch-bounds-{unique}"
    create_topic(broker, topic, 1)
    producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5, batch_size=16 * 1024)
    for _ in range(RECORDS):
        producer.send(topic, value=VALUE)
    producer.flush(timeout=30)
    producer.close()
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": broker,
                "fetch_max_bytes": BOUND,
                "max_partition_fetch_bytes": BOUND,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
            },
            "pipeline": {"input_topics": [topic], "group_id": topic},
        }
    )
    consumer = make_consumer(settings)
    try:
        assert consumer.config["fetch_max_bytes"] == BOUND
        assert consumer.config["max_partition_fetch_bytes"] == BOUND
        consumer.subscribe([topic])
        got = 0
        deadline = time.monotonic() + 60
        while got < RECORDS:
            assert time.monotonic() < deadline, f"read {got} of {RECORDS} records"
            got += sum(len(batch) for batch in consumer.poll(timeout_ms=200, max_records=500).values())
        consumer.poll(timeout_ms=200)  # a fetch is measured once its records are used up
        largest = fetch_size_max(consumer)
    finally:
        consumer.close(autocommit=False)
    backlog = RECORDS * len(VALUE)
    if broker_name == "tansu":
        # a broker returns at least one record batch (16 KiB here) past the bound, so no message is stuck
        assert 0 < largest <= BOUND + 16 * 1024 + 4096, largest
    else:
        assert largest >= backlog, f"noida-db now keeps to the fetch bounds ({largest:.0f} bytes): see docs"
