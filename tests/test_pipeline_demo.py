"""`finsent demo` on a configured broker: the bundled sample is replayed, labeled and dead-lettered in full,
and the command exits 0; plus the pure helpers it uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from finsent.demo import Progress, run_demo, sample_stream_path, shifted_lines
from finsent.settings import Settings
from ingest.decode import DecodeLimits, decode
from ingest.message import KafkaMeta, Message
from tests.servers import Noida


def test_sample_stream_has_a_negative_burst_and_bad_records() -> None:
    lines = [x for x in sample_stream_path().read_text(encoding="utf-8").splitlines() if x.strip()]
    assert 300 <= len(lines) <= 600
    decoded = [
        decode(line.encode(), KafkaMeta("raw", 0, i, 0), DecodeLimits(), datetime.now(UTC))
        for i, line in enumerate(lines)
    ]
    messages = [d for d in decoded if isinstance(d, Message)]
    assert len(decoded) - len(messages) == 5  # the malformed records, one per kind of problem
    acme = [m for m in messages if "ACME" in m.tickers]
    assert len(acme) >= 60
    assert len({m.source for m in messages}) >= 3


def test_shifted_lines_end_now_and_keep_spacing() -> None:
    lines = [
        json.dumps({"source": "s", "text": "a", "published_at": "2026-01-01T10:00:00Z"}),
        "not json",
        json.dumps({"source": "s", "text": "b", "published_at": "2026-01-01T10:15:00Z"}),
    ]
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    out = shifted_lines(lines, now)
    assert out[1] == b"not json"
    assert json.loads(out[0])["published_at"] == "2026-11-30T11:45:00.000Z"
    assert json.loads(out[2])["published_at"] == "2026-11-30T12:00:00.000Z"


def test_progress_render() -> None:
    p = Progress(total=2, produced=2)
    p.on_alert(
        type(
            "A",
            (),
            {
                "status": "firing",
                "severity": "critical",
                "key_type": "ticker",
                "key": "ACME",
                "summary": "13 negative",
            },
        )()
    )
    text = p.render()
    assert "sent 2/2" in text and "[FIRING] critical ticker:ACME" in text
    assert not p.done()


def test_demo_runs_to_completion(
    noida: Noida, unique: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        kafka={"bootstrap_servers": noida.kafka, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        elasticsearch={"url": noida.es_url, "index_prefix": f"demo{unique}", "number_of_replicas": 0},
        pipeline={
            "input_topics": [f"raw-{unique}"],
            "group_id": f"g-{unique}",
            "labeled_topic": f"labeled-{unique}",
            "dead_letter_topic": f"dead-{unique}",
        },
        alerts={"enabled": False},
    )
    assert run_demo(settings, rate=500) == 0
    out = capsys.readouterr().out
    total = len([x for x in sample_stream_path().read_text(encoding="utf-8").splitlines() if x.strip()])
    assert f"sent {total}/{total}" in out
    assert "dead-lettered 5" in out and "demo finished" in out
