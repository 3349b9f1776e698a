"""The latency runs' publisher, in its own process as real producers are (in the bench's process it took
the GIL from the pipeline's threads): JSON messages at a fixed rate for a fixed time, then one line on
stdout: `<messages sent> <CPU seconds> <seconds>`, both from the first message to the last flush.

    python bench/load_generator.py BOOTSTRAP TOPIC RATE SECONDS TEXTS_JSON [LINGER_MS]

`linger_ms` (default 5) lets a request carry the records of 5 ms (about 2 at 300/s) instead of one:
kafka-python's cost per request made the generator take about a third more CPU with 1 ms, on the 2 cores
the pipeline and the local server also run on (`python bench/pipeline.py --generator-linger-ms 1` shows
it). The record timestamp is taken at send(), so the linger counts in the measured latency."""

from __future__ import annotations

import json
import os
import sys
import time

LINGER_MS = 5


def main(argv: list[str]) -> int:
    from kafka import KafkaProducer

    bootstrap, topic, rate, seconds, texts_file = argv[0], argv[1], float(argv[2]), float(argv[3]), argv[4]
    linger_ms = int(argv[5]) if len(argv) > 5 else LINGER_MS
    with open(texts_file, encoding="utf-8") as f:
        texts: list[str] = json.load(f)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    producer.partitions_for(topic)  # the topic's metadata before the clock starts: no catch-up burst
    cpu0 = os.times()
    started = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - started < seconds:
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            value = json.dumps({"id": f"l{sent}", "source": "bench", "text": texts[sent % len(texts)]})
            producer.send(topic, value=value.encode())
            sent += 1
        producer.flush()
        cpu1, ended = os.times(), time.monotonic()
    finally:
        producer.close()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    print(sent, f"{cpu:.3f}", f"{ended - started:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
