"""`finsent sources` against the real brokers (noida-db and Tansu): items arrive once, keyed by source,
checkpoints survive a restart (the service loop runs twice over one state dir), items added during the
downtime arrive, a broken source never stops the others, and a record the broker refuses is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from ingest.sources.checkpoint import StateStore
from ingest.sources.config import SourcesSettings, parse_sources
from ingest.sources.publisher import KafkaPublisher
from ingest.sources.service import SourcesService
from tests.fixtures.sources.server import FIXTURES, FixtureServer, Reply
from tests.servers import Noida, create_topic, free_port, start_tansu

pytestmark = pytest.mark.kafka

NEW_ITEM = b"""<item><title>Nvidia unveils a new data-center chip</title>
<link>https://wire.example/news/nvda-chip</link><guid>wire-1003</guid>
<pubDate>Wed, 03 Jan 2024 09:00:00 GMT</pubDate><category>NASDAQ:NVDA</category></item>
"""


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def consume(broker: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Every record of the topic: waits for `expected`, then a little longer to catch extras."""
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + 1.5
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close()


def published(registry: CollectorRegistry, source: str) -> float:
    return registry.get_sample_value("finsent_source_items_published_total", {"source": source}) or 0.0


def run_service(
    broker: str,
    state: Path,
    entries: list[dict[str, Any]],
    topic: str,
    until: Callable[[CollectorRegistry], bool],
) -> CollectorRegistry:
    """One life of the service: start, run until `until`, stop (as on SIGTERM)."""
    registry = CollectorRegistry()
    settings = SourcesSettings(state_dir=state, topic=topic, dedup_horizon_hours=24 * 3650)
    publisher = KafkaPublisher({"bootstrap_servers": broker}, flush_timeout_s=20)
    assert publisher.idempotent
    service = SourcesService(parse_sources(entries, env={}), settings, publisher, registry)
    service.start()
    try:
        wait_for(lambda: until(registry))
    finally:
        service.stop()
        publisher.close()
    return registry


def test_items_arrive_once_across_a_restart_and_broken_sources(
    broker: str, unique: str, tmp_path: Path, server: FixtureServer
) -> None:
    topic = f"raw-{unique}"
    create_topic(broker, topic, partitions=3)
    feed = {"body": (FIXTURES / "rss.xml").read_bytes()}
    server.route("/wire.xml", lambda r, n: Reply(200, feed["body"], {"Content-Type": "application/rss+xml"}))
    server.file("/broken.xml", "broken.xml", "application/rss+xml")
    server.route("/down", lambda r, n: Reply(503, b"", {"Retry-After": "0"}))
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.jsonl").write_bytes((FIXTURES / "items.jsonl").read_bytes())
    entries = [
        {"name": "broken", "kind": "rss", "url": server.url + "/broken.xml", "every": 1},
        {
            "name": "down",
            "kind": "rss",
            "url": server.url + "/down",
            "every": 1,
            "retries": 1,
            "backoff_s": 0.1,
        },
        {"name": "wire", "kind": "rss", "url": server.url + "/wire.xml", "every": 1},
        {"name": "drops", "kind": "files", "path": str(drop), "every": 1},
    ]
    state = tmp_path / "state"

    first = run_service(
        broker, state, entries, topic, lambda r: published(r, "wire") == 3 and published(r, "drops") == 2
    )
    assert (
        first.get_sample_value("finsent_source_errors_total", {"source": "broken", "kind": "parse"}) or 0
    ) >= 1
    assert (
        first.get_sample_value("finsent_source_errors_total", {"source": "down", "kind": "http_status"}) or 0
    ) >= 1

    # Downtime: the feed gets a new item, the file a new line.
    feed["body"] = feed["body"].replace(b"<item>", NEW_ITEM + b"<item>", 1)
    with (drop / "a.jsonl").open("ab") as f:
        f.write(b'{"id": "f3", "text": "Boeing delays deliveries", "published_at": "2024-01-06T11:00:00Z"}\n')
    asked_before = len(server.asked("/wire.xml"))
    second = run_service(
        broker,
        state,
        entries,
        topic,
        # Let the wire be polled a few times after restart, to show nothing comes twice.
        lambda r: published(r, "drops") == 1 and len(server.asked("/wire.xml")) >= asked_before + 3,
    )
    assert published(second, "wire") == 1
    dup = second.get_sample_value("finsent_source_duplicates_total", {"source": "wire"}) or 0
    assert dup >= 3

    records = consume(broker, topic, expected=7)
    ids = [json.loads(r.value)["id"] for r in records]
    assert sorted(ids) == sorted(
        [
            "wire:wire-1001",
            "wire:wire-1002",
            "wire:https://wire.example/news/fed-wait",
            "wire:wire-1003",
            "drops:f1",
            "drops:f2",
            "drops:f3",
        ]
    )
    # Keyed by source: one partition per source, in publishing order.
    by_source: dict[str, set[int]] = {}
    for r in records:
        assert r.key.decode() == json.loads(r.value)["source"]
        by_source.setdefault(r.key.decode(), set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_source.values())
    wire = sorted((r for r in records if r.key == b"wire"), key=lambda r: r.offset)
    assert [json.loads(r.value)["id"] for r in wire][:3] == [
        "wire:wire-1002",
        "wire:wire-1001",
        "wire:https://wire.example/news/fed-wait",
    ]
    cp = StateStore(state).load_checkpoint("drops")
    assert next(iter(cp.files.values())).offset == (drop / "a.jsonl").stat().st_size


def test_a_record_the_broker_refuses_is_reported_and_does_not_block(
    broker: str, unique: str, tmp_path: Path
) -> None:
    topic = f"raw-{unique}"
    create_topic(broker, topic, partitions=1)
    drop = tmp_path / "drop"
    drop.mkdir()
    huge = json.dumps({"id": "big", "text": "x" * 1_500_000})  # over the producer's 1 MiB request limit
    (drop / "a.jsonl").write_text(
        huge + "\n" + '{"id": "small", "text": "Fed minutes due"}\n', encoding="utf-8"
    )
    entries = [
        {
            "name": "drops",
            "kind": "files",
            "path": str(drop),
            "every": 1,
            "max_item_bytes": 3_000_000,
            "max_bytes_per_fetch": 4_000_000,
        }
    ]
    registry = run_service(
        broker,
        tmp_path / "state",
        entries,
        topic,
        lambda r: (
            (
                r.get_sample_value(
                    "finsent_source_errors_total", {"source": "drops", "kind": "rejected_by_broker"}
                )
                or 0
            )
            >= 1
            and published(r, "drops") == 1
        ),
    )
    assert [json.loads(r.value)["id"] for r in consume(broker, topic, expected=1)] == ["drops:small"]
    cp = StateStore(tmp_path / "state").load_checkpoint("drops")
    assert next(iter(cp.files.values())).offset == (drop / "a.jsonl").stat().st_size
    assert registry.get_sample_value("finsent_source_last_success_timestamp_seconds", {"source": "drops"})


def test_broker_down_holds_the_checkpoint_back(unique: str, tmp_path: Path) -> None:
    """Kafka goes away mid-run: the publish fails, the checkpoint does not move, nothing is lost."""
    tansu = start_tansu(tmp_path / "tansu")
    try:
        topic = f"raw-{unique}"
        create_topic(tansu.kafka, topic, partitions=1)
        drop = tmp_path / "drop"
        drop.mkdir()
        (drop / "a.jsonl").write_text('{"id": "1", "text": "Fed minutes due"}\n', encoding="utf-8")
        settings = SourcesSettings(state_dir=tmp_path / "state", topic=topic, dedup_horizon_hours=1)
        publisher = KafkaPublisher(
            {"bootstrap_servers": tansu.kafka, "request_timeout_ms": 1000}, flush_timeout_s=2
        )
        registry = CollectorRegistry()
        sources = parse_sources([{"name": "drops", "kind": "files", "path": str(drop)}], env={})
        service = SourcesService(sources, settings, publisher, registry)
        assert service.run_all_once()[0].published == 1
        offset = StateStore(tmp_path / "state").load_checkpoint("drops").files
        tansu.server.stop()
        with (drop / "a.jsonl").open("a", encoding="utf-8") as f:
            f.write('{"id": "2", "text": "ECB holds rates"}\n')
        (report,) = service.run_all_once()
        assert not report.ok and report.published == 0 and report.error == "publish: 1 failed"
        assert StateStore(tmp_path / "state").load_checkpoint("drops").files == offset
        assert (
            registry.get_sample_value("finsent_source_errors_total", {"source": "drops", "kind": "publish"})
            == 1
        )
        service.stop()
        publisher.close()
    finally:
        tansu.server.stop()


def test_finsent_sources_command_serves_metrics_and_stops_on_sigterm(
    noida: Noida, unique: str, tmp_path: Path, server: FixtureServer
) -> None:
    topic = f"raw-{unique}"
    create_topic(noida.kafka, topic, partitions=1)
    url = server.file("/wire.xml", "rss.xml", "application/rss+xml")
    config = tmp_path / "sources.yaml"
    config.write_text(f"sources:\n  - {{name: wire, kind: rss, url: '{url}', every: 1}}\n", encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "FINSENT_KAFKA__BOOTSTRAP_SERVERS": noida.kafka,
        "FINSENT_METRICS__PORT": str(port),
        "FINSENT_SOURCES__STATE_DIR": str(tmp_path / "state"),
        "FINSENT_SOURCES__TOPIC": topic,
        "FINSENT_SOURCES__DEDUP_HORIZON_HOURS": str(24 * 3650),
    }
    env.pop("FINSENT_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "sources", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def scrape(path: str) -> tuple[int, str]:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            except httpx.TransportError:
                return 0, ""
            return r.status_code, r.text

        wait_for(lambda: scrape("/readyz")[0] == 200)
        assert scrape("/healthz") == (200, "ok\n")
        wait_for(lambda: 'finsent_source_items_published_total{source="wire"} 3.0' in scrape("/metrics")[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert len(consume(noida.kafka, topic, expected=3)) == 3


def test_a_state_dir_that_cannot_be_made_is_one_line_exit_2(noida: Noida, tmp_path: Path) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text("sources:\n  - {name: wire, kind: rss, url: 'https://example.com/x', every: 60}\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the state directory would have to be made inside a file
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env |= {
        "FINSENT_KAFKA__BOOTSTRAP_SERVERS": noida.kafka,
        "FINSENT_METRICS__ENABLED": "false",
        "FINSENT_SOURCES__STATE_DIR": str(blocker / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "finsent", "sources", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    problem = [x for x in done.stderr.splitlines() if x.startswith("finsent sources: ")]
    assert len(problem) == 1 and problem[0].startswith("finsent sources: sources.state_dir: "), done.stderr
