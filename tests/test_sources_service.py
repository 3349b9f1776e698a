"""Cycles and the service without Kafka: tailing with checkpoints across restarts, dedup across sources,
stale items, a broken source next to good ones, stdin, and `finsent sources check` (publishes nothing)."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finsent.cli import main
from ingest.sources.config import SourcesSettings, parse_sources
from ingest.sources.publisher import PublishError, StreamPublisher
from ingest.sources.service import SourcesService
from tests.fixtures.sources.server import FIXTURES, FixtureServer, Reply


def make_service(
    state: Path, entries: list[dict[str, Any]], out: io.StringIO, *, horizon_h: float = 24 * 3650, **kw: Any
) -> tuple[SourcesService, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = SourcesSettings(state_dir=state, dedup_horizon_hours=horizon_h)
    service = SourcesService(parse_sources(entries, env={}), settings, StreamPublisher(out), registry, **kw)
    return service, registry


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_files_are_tailed_with_a_checkpoint_across_restarts(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.jsonl").write_bytes((FIXTURES / "items.jsonl").read_bytes())
    (drop / "b.csv").write_bytes((FIXTURES / "items.csv").read_bytes())
    (drop / ".hidden.jsonl").write_text('{"text": "never read"}\n')
    entries = [
        {
            "name": "drops",
            "kind": "files",
            "path": str(drop),
            "fields": {
                "title": "title || headline",
                "published_at": "published_at || published",
                "tickers": "tickers || symbols",
            },
        }
    ]
    out = io.StringIO()
    service, _registry = make_service(tmp_path / "state", entries, out)
    assert service.clients == {}  # a files source makes no HTTP client (no pool, no address guard)
    (report,) = service.run_all_once()
    assert report.ok and report.published == 4
    first = lines(out)
    assert {m["id"] for m in first} == {"drops:f1", "drops:f2", "drops:c1", "drops:c2"}
    assert next(m for m in first if m["id"] == "drops:c2")["tickers"] == ["AMD", "NVDA"]

    # Restart: nothing again; then appended lines (one partial, one bad) are picked up once.
    out2 = io.StringIO()
    service2, registry2 = make_service(tmp_path / "state", entries, out2)
    assert service2.run_all_once()[0].published == 0 and out2.getvalue() == ""
    with (drop / "a.jsonl").open("ab") as f:
        f.write(b'{"id": "f3", "text": "Boeing delays deliveries"}\nnot json\n{"id": "f4", "text": "par')
    (report,) = service2.run_all_once()
    assert [m["id"] for m in lines(out2)] == ["drops:f3"]
    assert report.invalid == 1
    assert metric(registry2, "finsent_source_errors_total", source="drops", kind="invalid_json") == 1
    with (drop / "a.jsonl").open("ab") as f:
        f.write(b'tial line"}\n')
    service2.run_all_once()
    assert [m["id"] for m in lines(out2)] == ["drops:f3", "drops:f4"]
    assert lines(out2)[-1]["text"] == "partial line"
    assert metric(registry2, "finsent_source_items_published_total", source="drops") == 2
    service.stop()
    service2.stop()


def test_duplicates_across_sources_and_restarts(tmp_path: Path, server: FixtureServer) -> None:
    a = server.file("/a.xml", "rss.xml", "application/rss+xml")
    b = server.file("/b.xml", "rss.xml", "application/rss+xml")
    entries = [{"name": "wire-a", "kind": "rss", "url": a}, {"name": "wire-b", "kind": "rss", "url": b}]
    out = io.StringIO()
    service, registry = make_service(tmp_path / "state", entries, out)
    ra, rb = service.run_all_once()
    assert (ra.published, rb.published, rb.duplicates) == (3, 0, 3)
    assert metric(registry, "finsent_source_duplicates_total", source="wire-b") == 3
    # Published in time order (the feed lists newest first).
    assert [m["published_at"] for m in lines(out)] == sorted(m["published_at"] for m in lines(out))
    service.stop()
    out2 = io.StringIO()
    service2, _ = make_service(tmp_path / "state", entries, out2)
    assert [r.published for r in service2.run_all_once()] == [0, 0] and out2.getvalue() == ""
    service2.stop()


def test_items_older_than_the_horizon_are_skipped(tmp_path: Path, server: FixtureServer) -> None:
    url = server.file("/a.xml", "rss.xml", "application/rss+xml")
    out = io.StringIO()
    service, _registry = make_service(
        tmp_path / "s", [{"name": "w", "kind": "rss", "url": url}], out, horizon_h=24
    )
    (report,) = service.run_all_once()  # the fixture items are from 2024
    assert report.published == 0 and report.duplicates == 3
    service.stop()


def test_a_broken_source_never_stops_the_others(tmp_path: Path, server: FixtureServer) -> None:
    good = server.file("/good.xml", "rss.xml", "application/rss+xml")
    broken = server.file("/broken.xml", "broken.xml", "application/rss+xml")
    down = server.route("/down", lambda r, n: Reply(500, b""))
    entries: list[dict[str, Any]] = [
        {"name": "broken", "kind": "rss", "url": broken},
        {"name": "down", "kind": "rss", "url": down, "retries": 0},
        {"name": "missing-dir", "kind": "files", "path": str(tmp_path / "nope")},
        {"name": "good", "kind": "rss", "url": good},
    ]
    out = io.StringIO()
    service, registry = make_service(tmp_path / "state", entries, out)
    reports = {r.source: r for r in service.run_all_once()}
    assert not reports["broken"].ok and not reports["down"].ok
    assert reports["good"].ok and reports["good"].published == 3
    assert not reports["missing-dir"].ok and reports["missing-dir"].fetched == 0  # a mistyped path
    assert metric(registry, "finsent_source_errors_total", source="missing-dir", kind="not_found") == 1
    assert metric(registry, "finsent_source_errors_total", source="broken", kind="parse") == 1
    assert metric(registry, "finsent_source_errors_total", source="down", kind="http_status") == 1
    # a source that never succeeded keeps the start time, so FinsentSourceSilent fires an hour later
    started = metric(registry, "finsent_source_last_success_timestamp_seconds", source="broken")
    assert 0 < started < metric(registry, "finsent_source_last_success_timestamp_seconds", source="good")
    assert metric(registry, "finsent_source_fetch_seconds_count", source="broken") == 1


def test_scheduled_service_keeps_running_past_failures(tmp_path: Path, server: FixtureServer) -> None:
    good = server.file("/good.xml", "rss.xml", "application/rss+xml", etag='"1"')
    down = server.route("/down", lambda r, n: Reply(503, b"", {"Retry-After": "0"}))
    entries = [
        {"name": "down", "kind": "rss", "url": down, "every": 1, "retries": 0},
        {"name": "good", "kind": "rss", "url": good, "every": 1},
    ]
    out = io.StringIO()
    service, _registry = make_service(tmp_path / "state", entries, out)
    service.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(server.asked("/good.xml")) < 3:
            time.sleep(0.1)
    finally:
        service.stop()
    assert len(server.asked("/good.xml")) >= 3 and len(server.asked("/down")) >= 2
    assert len(lines(out)) == 3  # later polls answered 304
    assert server.asked("/good.xml")[-1].headers.get("if-none-match") == '"1"'
    assert not service.running


def test_stdin_lines(tmp_path: Path) -> None:
    stdin = io.BytesIO(
        b'{"text": "Nvidia hits a record", "tickers": ["nvda"]}\n\nnot json\n'
        b'{"text": "Nvidia hits a record"}\n'
    )
    out = io.StringIO()
    service, _registry = make_service(tmp_path / "s", [{"name": "pipe", "kind": "stdin"}], out, stdin=stdin)
    (report,) = service.run_all_once()
    assert (report.fetched, report.published, report.invalid, report.duplicates) == (3, 1, 1, 1)
    assert lines(out)[0]["tickers"] == ["NVDA"] and lines(out)[0]["source"] == "pipe"


def test_stdin_skips_bad_lines_and_keeps_reading(tmp_path: Path) -> None:
    stdin = io.BytesIO(
        b'{"text": "bad byte \xff here"}\n'
        + b"[" * 50_000
        + b"\n"
        + b'{"text": "huge date", "published_at": 1'
        + b"0" * 400
        + b"}\n"
        + b'{"text": "Fed holds rates"}\n'
    )
    out = io.StringIO()
    service, registry = make_service(tmp_path / "s", [{"name": "pipe", "kind": "stdin"}], out, stdin=stdin)
    (report,) = service.run_all_once()
    assert (report.fetched, report.invalid, report.published) == (4, 2, 2)
    assert [m["text"] for m in lines(out)] == ["huge date", "Fed holds rates"]
    assert "published_at" not in lines(out)[0]  # not a time: left to the Kafka timestamp
    for kind in ("invalid_utf8", "invalid_json"):
        assert metric(registry, "finsent_source_errors_total", source="pipe", kind=kind) == 1
    # the dedup index is saved at the end of input, not only per line
    assert len(json.loads((tmp_path / "s" / "dedup.json").read_text())["entries"]) >= 2
    service.stop()


def test_stdin_reads_on_when_the_dedup_index_cannot_be_saved(tmp_path: Path) -> None:
    """A full or read-only disk ended the reader thread, and the service took that for the end of its
    input: what followed on the pipe was never read, and stop() raised before closing the publisher."""
    stdin = io.BytesIO(b"".join(f'{{"text": "headline {i}"}}\n'.encode() for i in range(20)))
    ticks = iter(range(1_000_000))
    out = io.StringIO()
    service, registry = make_service(
        tmp_path / "s",
        [{"name": "pipe", "kind": "stdin"}],
        out,
        stdin=stdin,
        clock=lambda: 1_700_000_000.0 + next(ticks),  # a second per call: every line asks for a save
    )
    (tmp_path / "s" / "dedup.json").mkdir()  # the index's file cannot be written: every save fails
    (report,) = service.run_all_once()
    assert report.published == 20 and len(lines(out)) == 20
    assert metric(registry, "finsent_source_errors_total", source="pipe", kind="internal") >= 20
    service.stop()  # logs the failed final save instead of raising


class FlakyPublisher(StreamPublisher):
    """Refuses the first `failures` publishes with a retriable error, as a producer does while the
    broker is down."""

    def __init__(self, out: io.StringIO, failures: int) -> None:
        super().__init__(out)
        self.failures = failures

    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        if self.failures > 0:
            self.failures -= 1
            return [PublishError("KafkaTimeoutError: broker down", retriable=True) for _ in messages]
        return super().publish(topic, key, messages)


def test_stdin_retries_a_line_the_broker_could_not_take(tmp_path: Path) -> None:
    out = io.StringIO()
    registry = CollectorRegistry()
    service = SourcesService(
        parse_sources([{"name": "pipe", "kind": "stdin"}], env={}),
        SourcesSettings(state_dir=tmp_path / "s"),
        FlakyPublisher(out, failures=2),
        registry,
        stdin=io.BytesIO(b'{"text": "Fed holds rates"}\n{"text": "ECB cuts"}\n'),
    )
    (report,) = service.run_all_once()
    assert report.published == 2 and [m["text"] for m in lines(out)] == ["Fed holds rates", "ECB cuts"]
    assert metric(registry, "finsent_source_errors_total", source="pipe", kind="publish") == 2
    service.stop()


def test_a_line_that_only_overflows_the_fetch_budget_waits_for_the_next_fetch(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    line = '{{"id": "n{}", "title": "headline number {} about markets"}}\n'.format
    first = "".join(line(i, i) for i in range(17))  # most of a 1024-byte budget
    (drop / "a.jsonl").write_text(first)
    (drop / "b.jsonl").write_text(line(1000, 1000) + line(1001, 1001))
    old = time.time() - 3600
    os.utime(drop / "a.jsonl", (old, old))
    os.utime(drop / "b.jsonl", (old + 1, old + 1))
    entries = [{"name": "drops", "kind": "files", "path": str(drop), "max_bytes_per_fetch": 1024}]
    out = io.StringIO()
    service, _registry = make_service(tmp_path / "state", entries, out)
    assert 1024 - len(first) < len(line(1000, 1000))
    reports = service.run_all_once() + service.run_all_once()
    assert sum(r.invalid for r in reports) == 0
    assert [m["id"] for m in lines(out)][-2:] == ["drops:n1000", "drops:n1001"]
    service.stop()


def test_bad_file_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.jsonl").write_bytes(
        b'{"text": "first"}\n'
        + b"[" * 50_000
        + b'\n{"text": "x", "published_at": "9999-12-31T23:59:59-01:00"}\n'
    )
    (drop / "b.csv").write_text('title,body\nFiling,"' + "long body " * 15_000 + '"\n')
    entries = [{"name": "drops", "kind": "files", "path": str(drop)}]
    out = io.StringIO()
    service, _registry = make_service(tmp_path / "state", entries, out)
    (report,) = service.run_all_once()
    assert report.ok and report.invalid == 1 and report.published == 3
    assert [m.get("title") or m.get("text") for m in lines(out)] == ["first", "x", "Filing"]
    service.stop()


def test_stdin_only_service_ends_with_its_input(tmp_path: Path) -> None:
    out = io.StringIO()
    service, _ = make_service(
        tmp_path / "s",
        [{"name": "pipe", "kind": "stdin", "format": "text"}],
        out,
        stdin=io.BytesIO(b"a b c\n"),
    )
    service.start()
    assert service.wait(timeout=5)
    service.stop()
    assert lines(out)[0]["text"] == "a b c"


def test_check_prints_messages_and_writes_no_state(
    tmp_path: Path,
    server: FixtureServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.sources")
    url = server.file("/rss.xml", "rss.xml", "application/rss+xml")
    down = server.route("/down", lambda r, n: Reply(500, b""))
    config = tmp_path / "sources.yaml"
    config.write_text(
        f"sources:\n  - {{name: wire, kind: rss, url: '{url}'}}\n"
        f"  - {{name: down, kind: rss, url: '{down}', retries: 0}}\n",
        encoding="utf-8",
    )
    state = tmp_path / "state"
    monkeypatch.setenv("FINSENT_SOURCES__STATE_DIR", str(state))
    monkeypatch.setenv("FINSENT_SOURCES__DEDUP_HORIZON_HOURS", str(24 * 3650))  # the fixtures are from 2024
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    rc = main(["sources", "check", "--config", str(config)])
    captured = capsys.readouterr()
    printed = [json.loads(x) for x in captured.out.splitlines()]
    assert rc == 1  # one source failed
    assert [m["id"] for m in printed] == [
        "wire:wire-1002",
        "wire:wire-1001",
        "wire:https://wire.example/news/fed-wait",
    ]
    assert "wire: ok; 3 fetched, 3 would be published" in captured.err
    assert "source wire: 3 fetched, 3 would be published, 0 duplicates" in caplog.text  # its log, too
    assert "down: FAILED (http_status" in captured.err
    assert not state.exists()
    assert main(["sources", "check", "--config", str(config), "--source", "wire"]) == 0
    capsys.readouterr()


def test_check_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text("sources:\n  - {name: x, kind: rss}\n", encoding="utf-8")
    assert main(["sources", "check", "--config", str(config)]) == 2
    assert "sources[0] ('x'): url: Field required" in capsys.readouterr().err
    assert main(["sources", "check", "--config", str(config), "--source", "y"]) == 2


def test_service_needs_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text("sources:\n  - {name: x, kind: stdin}\n", encoding="utf-8")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "")
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    assert main(["sources", "--config", str(config)]) == 2
    assert "bootstrap_servers is not set" in capsys.readouterr().err
    assert os.environ.get("FINSENT_CONFIG") is None


def test_stopping_the_service_saves_what_stdin_published_while_the_pipe_is_idle(tmp_path: Path) -> None:
    """`tail -F file | finsent sources`: the reader blocks on a quiet pipe; SIGTERM must still persist the
    dedup index, or the same lines would be published again after a restart."""
    r, w = os.pipe()
    out = io.StringIO()
    with os.fdopen(r, "rb") as stdin:
        service, _ = make_service(tmp_path / "s", [{"name": "pipe", "kind": "stdin"}], out, stdin=stdin)
        service.start()
        os.write(w, b"".join(b'{"text": "headline %d"}\n' % i for i in range(50)))
        deadline = time.monotonic() + 10
        while len(lines(out)) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        service.stop()
        os.close(w)
    assert len(lines(out)) == 50
    assert len(json.loads((tmp_path / "s" / "dedup.json").read_text())["entries"]) >= 50


def test_each_source_fetches_with_its_own_connection_pool(tmp_path: Path) -> None:
    """A kept-alive connection is reused without the address guard's connect-time check: one that a
    source may open (to its own internal host) must not serve a redirect of another, public, source
    that a rebinding name points at that host. So no two sources share a client, and all are closed."""
    entries = [
        {"name": "internal", "kind": "rss", "url": "http://wiki.corp.test/feed.xml"},
        {"name": "public", "kind": "rss", "url": "https://news.example.com/feed.xml"},
    ]
    service, _ = make_service(tmp_path / "state", entries, io.StringIO())
    internal, public = service.clients["internal"], service.clients["public"]
    assert internal is not public and internal._client is not public._client
    service.stop()
    assert internal._client.is_closed and public._client.is_closed
