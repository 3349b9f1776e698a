"""Kafka-client costs behind three pipeline choices, in one run, one table (docs/performance.md):

1. a caught-up consumer waiting inside `poll()` against a broker that answers empty fetches at once
   (noida-db), against the pipeline's way: `poll(timeout_ms=0)` and a short sleep between polls;
2. kafka-python's pure-Python CRC-32C against the C `crc32c` package (record batches, both directions);
3. the bytes of a batch of labeled events, plain and lz4-compressed (`kafka.compression_type`).

    python bench/kafka_client.py     # about 15 s; starts and stops its own noida-db
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from outputs import PRED, bench_messages  # noqa: E402

from alerts.events import KEY_TYPES  # noqa: E402
from finsent.demo import local_servers  # noqa: E402
from finsent.kafka_topics import ensure_topics  # noqa: E402
from finsent.labeled_events import labeled_events  # noqa: E402


def caught_up_cpu(bootstrap: str, wait: Callable[[object], None], seconds: float = 3.0) -> float:
    """CPU seconds this process uses in `seconds` while a consumer with nothing left to read keeps polling."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"caught-up-{time.monotonic_ns()}"
    ensure_topics({"bootstrap_servers": bootstrap}, [(topic, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for _ in range(10):
        producer.send(topic, b"{}")
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=topic, auto_offset_reset="earliest")
    try:
        got = 0
        while got < 10:
            got += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
        cpu, started = time.process_time(), time.monotonic()
        while time.monotonic() - started < seconds:
            wait(consumer)
        return time.process_time() - cpu
    finally:
        consumer.close()


def crc_us_per_kb(crc: Callable[[bytes], int], repeat: int) -> float:
    data = bytes(range(256)) * 64
    started = time.perf_counter()
    for _ in range(repeat):
        crc(data)
    return (time.perf_counter() - started) / repeat / len(data) * 1024 * 1e6


def labeled_batch_bytes(n: int = 256) -> bytes:
    """The labeled events of `n` messages (all key types), as the pipeline writes them."""
    now = datetime.now(UTC)
    values: list[bytes] = []
    for message in bench_messages(n, now):
        events = labeled_events(
            message, PRED, key_types=KEY_TYPES, labeled_at=now, model_version="finsent-minilm-l6"
        )
        values.extend(v for _, v in events)
    return b"".join(values)


def main() -> int:
    import lz4.frame
    from crc32c import crc32c
    from kafka.record._crc32c import crc as crc32c_python

    rows: list[tuple[str, str]] = []
    with local_servers() as (bootstrap, _es_url):
        blocking = caught_up_cpu(bootstrap, lambda c: c.poll(timeout_ms=10))  # type: ignore[attr-defined]

        def non_blocking(c: object) -> None:
            time.sleep(0.01)
            c.poll(timeout_ms=0)  # type: ignore[attr-defined]

        polled = caught_up_cpu(bootstrap, non_blocking)
    rows.append(("caught-up consumer, poll(timeout_ms=10) in a loop: CPU s in 3 s", f"{blocking:.2f}"))
    rows.append(("caught-up consumer, poll(timeout_ms=0) + 10 ms sleep: CPU s in 3 s", f"{polled:.2f}"))
    rows.append(("CRC-32C, kafka-python's pure Python: us per KB", f"{crc_us_per_kb(crc32c_python, 20):.1f}"))
    rows.append(("CRC-32C, the C crc32c package: us per KB", f"{crc_us_per_kb(crc32c, 20000):.2f}"))
    raw = labeled_batch_bytes()
    packed = lz4.frame.compress(raw)
    rows.append(("labeled events of 256 messages, plain: bytes", f"{len(raw):,}"))
    rows.append(("same, lz4: bytes (ratio)", f"{len(packed):,} ({len(raw) / len(packed):.1f}x)"))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
