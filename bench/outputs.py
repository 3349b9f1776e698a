"""CPU per message of the pipeline's output path, before and after its JSON and partitioning changes, in one
run, one table (docs/performance.md):

1. labeled events (one message -> one JSON event per alert key): the stdlib `json` (before) vs orjson;
2. the `_bulk` body of the Elasticsearch documents: elasticsearch-py's NDJSON serialiser over a list of
   dicts (before) vs `finsent.outputs.es_sink.bulk_body` (orjson);
3. parsing a real `_bulk` response of the local server: stdlib `json` (before) vs orjson;
4. producing the labeled events to the local Kafka server and flushing: kafka-python's `DefaultPartitioner`
   (before) vs the pipeline's `KafkaOutputs` and producer (`CachedKeyPartitioner`: key hashes remembered);
5. the document, the labeled events and the index name of each message: timestamps and index names
   formatted at each use (before) vs memoised (after).
The memo caches are emptied before each measurement, and every message has a publication time of its own.
Each variant runs `--rounds` times, alternated; the table shows the best round (the least disturbed by other
work on the machine). The CPU is the whole process's (for 4, including the producer's I/O thread).

    python bench/outputs.py      # about 10 s; starts and stops its own noida-db
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model import mixed_texts  # noqa: E402

from alerts.events import KEY_TYPES  # noqa: E402
from finsent.demo import local_servers  # noqa: E402
from finsent.kafka_topics import ensure_topics  # noqa: E402
from finsent.labeled_events import (  # noqa: E402
    _utc_text,
    alert_keys,
    event_fields,
    key_fields,
    labeled_events,
)
from finsent.outputs.es_documents import _daily_index, build_document, events_index  # noqa: E402
from finsent.outputs.es_sink import IndexAction, bulk_body  # noqa: E402
from finsent.outputs.kafka_outputs import FLUSH_DRIVEN, KafkaOutputs, make_producer  # noqa: E402
from finsent.settings import KafkaSettings  # noqa: E402
from inference.types import Prediction  # noqa: E402
from ingest.decode import DecodeLimits, decode  # noqa: E402
from ingest.message import KafkaMeta, Message  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PRED = Prediction("Macro", 0.9, "negative", 0.8, {}, {"negative": 0.8, "neutral": 0.1, "positive": 0.1})


def bench_messages(n: int, now: datetime) -> list[Message]:
    """Up to `n` texts of ../shared/data (both sets, arrival order), decoded as the pipeline decodes."""
    messages: list[Message] = []
    for i, text in enumerate(mixed_texts(DATA, n)):
        published = (now - timedelta(seconds=i)).isoformat()
        raw = json.dumps({"id": f"m{i}", "source": "bench", "text": text, "published_at": published}).encode()
        decoded = decode(raw, KafkaMeta("raw", 0, i), DecodeLimits(), now)
        if isinstance(decoded, Message):
            messages.append(decoded)
    return messages


def stdlib_labeled_events(message: Message, labeled_at: datetime) -> list[tuple[bytes, bytes]]:
    """`finsent.labeled_events.labeled_events` as it was before orjson: the same fields, stdlib `json`."""
    base = event_fields(message, PRED, labeled_at=labeled_at, model_version="v")
    shared = json.dumps(base, ensure_ascii=False)[1:]
    out: list[tuple[bytes, bytes]] = []
    for key_type, key in alert_keys(message, PRED, KEY_TYPES):
        own = json.dumps(key_fields(message, key_type, key), ensure_ascii=False)[:-1]
        out.append((f"{key_type}:{key}".encode(), f"{own}, {shared}".encode()))
    return out


def client_bulk_body(actions: Sequence[IndexAction]) -> bytes:
    """The body elasticsearch-py built from a list of operation dicts (before `bulk_body`)."""
    from elasticsearch.serializer import NdjsonSerializer

    operations: list[Any] = []
    for a in actions:
        operations.append({"index": {"_index": a.index, "_id": a.doc_id}})
        operations.append(a.source)
    return NdjsonSerializer().dumps(operations)


@contextmanager
def formatted_at_each_use() -> Iterator[None]:
    """The output path as before its memoised helpers: every timestamp and index name formatted anew."""
    import finsent.labeled_events as events_module
    import finsent.outputs.es_documents as documents_module

    saved = events_module._utc_text, documents_module._daily_index
    events_module._utc_text = _utc_text.__wrapped__  # type: ignore[assignment]
    documents_module._daily_index = _daily_index.__wrapped__  # type: ignore[assignment]
    try:
        yield
    finally:
        events_module._utc_text, documents_module._daily_index = saved


def documents_and_events(messages: Sequence[Message], labeled_at: datetime) -> list[Any]:
    """What the batch writer derives from each message before sending anything."""
    return [
        (
            events_index("bench", m.published_at),
            build_document(m, PRED, ingested_at=labeled_at, labeled_at=labeled_at, model_version="v"),
            labeled_events(m, PRED, key_types=KEY_TYPES, labeled_at=labeled_at, model_version="v"),
        )
        for m in messages
    ]


def row(label: str, before: float, after: float, width: int) -> str:
    return f"| {label:<{width}} | {before:6.1f} | {after:5.1f} | {after / before:14.2f} |"


def cpu_us_per_message(work: Callable[[], object], messages: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / messages * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="messages (default 2048, in batches of 256)")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds per variant (default 5)")
    args = ap.parse_args()
    now = datetime.now(UTC)
    messages = bench_messages(args.n, now)
    n = len(messages)
    actions = [
        IndexAction(
            "bench-events", m.id, build_document(m, PRED, ingested_at=now, labeled_at=now, model_version="v")
        )
        for m in messages
    ]
    event_batches = [
        [
            e
            for m in messages[i : i + 256]
            for e in labeled_events(m, PRED, key_types=KEY_TYPES, labeled_at=now, model_version="v")
        ]
        for i in range(0, n, 256)
    ]
    events = [e for batch in event_batches for e in batch]
    assert [json.loads(v) for _, v in events] == [
        json.loads(v) for m in messages for _, v in stdlib_labeled_events(m, now)
    ], "the two labeled-event encodings differ"
    assert [json.loads(x) for x in client_bulk_body(actions).splitlines()] == [
        json.loads(x) for x in bulk_body(actions).splitlines()
    ], "the two bulk bodies differ"
    with formatted_at_each_use():
        plain = documents_and_events(messages, now)
    assert plain == documents_and_events(messages, now), "memoised formatting changed an output"

    results: dict[str, list[float]] = {}

    def measure(name: str, work: Callable[[], object]) -> None:
        _utc_text.cache_clear()  # each round formats every message's timestamps once, as a batch does
        _daily_index.cache_clear()
        results.setdefault(name, []).append(cpu_us_per_message(work, n))

    with local_servers() as (bootstrap, es_url):
        from kafka.partitioner import DefaultPartitioner

        topic = f"outputs-{uuid.uuid4().hex[:8]}"
        ensure_topics({"bootstrap_servers": bootstrap}, [(topic, 6)])
        response = b""
        with httpx.Client(base_url=es_url, timeout=60) as http:
            for i in range(0, n, 256):
                body = bulk_body(actions[i : i + 256])
                response = http.post(
                    "/_bulk", content=body, headers={"content-type": "application/x-ndjson"}
                ).content
        # The pipeline's producer (`finsent run`'s settings): kafka-python's default partitioner (before);
        # the pipeline's own producer and outputs (after).
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        producers = {
            "default": make_producer(kafka, **FLUSH_DRIVEN, partitioner=DefaultPartitioner()),
            "outputs": make_producer(kafka, **FLUSH_DRIVEN),
        }
        outputs = KafkaOutputs(producers["outputs"], labeled_topic=topic, dead_letter_topic=topic)
        try:

            def produce_default() -> None:
                producer = producers["default"]
                for batch in event_batches:
                    for key, value in batch:
                        producer.send(topic, key=key, value=value)
                    producer.flush()

            def produce_outputs() -> None:
                for batch in event_batches:
                    for key, value in batch:
                        outputs.send_labeled(key, value)
                    outputs.flush()

            produce_default()  # metadata, connections
            produce_outputs()
            reps = max(1, n // len(json.loads(response)["items"]))  # responses that hold n items
            for _ in range(args.rounds):
                measure("events json", lambda: [stdlib_labeled_events(m, now) for m in messages])
                measure(
                    "events orjson",
                    lambda: [
                        labeled_events(m, PRED, key_types=KEY_TYPES, labeled_at=now, model_version="v")
                        for m in messages
                    ],
                )
                measure(
                    "bulk client", lambda: [client_bulk_body(actions[i : i + 256]) for i in range(0, n, 256)]
                )
                measure("bulk orjson", lambda: [bulk_body(actions[i : i + 256]) for i in range(0, n, 256)])
                measure("response json", lambda: [json.loads(response) for _ in range(reps)])
                measure("response orjson", lambda: [orjson.loads(response) for _ in range(reps)])
                measure("send default", produce_default)
                measure("send outputs", produce_outputs)
                with formatted_at_each_use():
                    measure("derive plain", lambda: documents_and_events(messages, now))
                measure("derive memoised", lambda: documents_and_events(messages, now))
        finally:
            for producer in producers.values():
                producer.close()

    best = {name: min(values) for name, values in results.items()}
    rows = [
        ("labeled events (%.2f per message): JSON" % (len(events) / n), "events json", "events orjson"),
        ("Elasticsearch _bulk body", "bulk client", "bulk orjson"),
        ("_bulk response of the local server, parsed", "response json", "response orjson"),
        ("send + flush of the labeled events to the local Kafka server", "send default", "send outputs"),
        ("document + labeled events + index name: formatting memoised", "derive plain", "derive memoised"),
    ]
    # The last row overlaps the first (both build the labeled events): the total is of the first four.
    before_total = sum(best[b] for _, b, _ in rows[:4])
    after_total = sum(best[a] for _, _, a in rows[:4])
    width = max(len(r[0]) for r in rows)
    print(f"CPU us per message, best of {args.rounds} alternated rounds, {n} messages in batches of 256")
    print()
    print(f"| {'step':<{width}} | before | after | after / before |")
    print(f"|{'-' * (width + 2)}|--------|-------|----------------|")
    for label, before, after in rows[:4]:
        print(row(label, best[before], best[after], width))
    print(row("all four", before_total, after_total, width))
    for label, before, after in rows[4:]:
        print(row(label, best[before], best[after], width))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
