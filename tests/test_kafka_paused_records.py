"""kafka-python 3.0.12 leaves a partition for good once it was paused part-way through its fetched
records and resumed while another partition's records kept coming (finsent.kafka_internals
.release_parked_records). The labeler pauses and resumes its partitions for flow control, and a
rebalance left some paused: one input partition stopped. Against both brokers."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from finsent.kafka_internals import release_parked_records
from tests.servers import create_topic

PER_PARTITION = 2000


def poll_into(consumer: KafkaConsumer, got: dict[int, int], polls: int, max_records: int) -> set[int]:
    """Poll `polls` times, counting records per partition; the partitions of the last non-empty poll."""
    last: set[int] = set()
    for _ in range(polls):
        records = consumer.poll(timeout_ms=100, max_records=max_records)
        for tp, batch in records.items():
            got[tp.partition] += len(batch)
        if records:
            last = {tp.partition for tp in records}
    return last


def test_a_partition_paused_mid_way_through_its_records_is_read_to_its_end_after_a_resume(
    broker: str, unique: str
) -> None:
    topic = f"parked-{unique}"
    create_topic(broker, topic, 2)
    producer = KafkaProducer(bootstrap_servers=broker)
    for i in range(2 * PER_PARTITION):
        producer.send(topic, value=b"m%d" % i, partition=i % 2)
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=broker, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    try:
        consumer.assign([p0, p1])
        got = {0: 0, 1: 0}
        deadline = time.monotonic() + 30
        while 0 not in poll_into(consumer, got, 1, max_records=5):  # p0's records are in-line now
            assert time.monotonic() < deadline, "partition 0 never came"
        consumer.pause(p0)
        poll_into(consumer, got, 20, max_records=5)  # p1 goes on; p0's in-line records are parked
        consumer.resume(p0)
        assert release_parked_records(consumer) == 1
        deadline = time.monotonic() + 60
        while got != {0: PER_PARTITION, 1: PER_PARTITION}:
            assert time.monotonic() < deadline, f"read {got} of {PER_PARTITION} per partition"
            poll_into(consumer, got, 10, max_records=50)
    finally:
        consumer.close()
