"""`finsent demo` on a configured broker: the bundled sample is replayed, labeled and dead-lettered in full,
and the command exits 0; plus the pure helpers it uses."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer

from finsent import demo
from finsent.demo import Progress, run_demo, sample_stream_path, shifted_lines
from finsent.settings import Settings
from ingest.decode import DecodeLimits, decode
from ingest.message import KafkaMeta, Message
from tests.servers import Noida, Recorder


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


def test_the_demos_settings_never_name_the_deployments_topics_groups_indices_or_channels() -> None:
    configured = Settings(
        kafka={"bootstrap_servers": "kafka.prod:9092", "security_protocol": "SASL_SSL"},
        elasticsearch={"url": "https://ops:s3cr3tPASS@es.prod:9200", "index_prefix": "prod"},
        pipeline={"input_topics": ["news", "posts"], "group_id": "labelers"},
        alerts={"group_id": "alerters", "notifiers": {"webhook": {"enabled": True, "url": "https://hook/x"}}},
    )
    theirs = demo.demo_settings(configured, None)
    p, a = theirs.pipeline, theirs.alerts
    assert p.input_topics == ("news-demo", "posts-demo") and p.group_id == "labelers-demo"
    assert (p.labeled_topic, p.dead_letter_topic) == ("finsent.labeled-demo", "finsent.dead-letter-demo")
    assert (a.group_id, a.state_topic) == ("alerters-demo", "finsent.alert-state-demo")
    assert theirs.elasticsearch.index_prefix == "prod-demo"
    assert theirs.kafka == configured.kafka and theirs.elasticsearch.url == configured.elasticsearch.url
    assert not a.notifiers.webhook.enabled and a.notifiers.log.enabled
    line = demo.where_it_writes(theirs)
    assert "news-demo, posts-demo" in line and "prod-demo-*" in line and "https://es.prod:9200" in line
    assert "s3cr3tPASS" not in line and "ops" not in line
    local = demo.demo_settings(configured, ("127.0.0.1:1", "http://127.0.0.1:2"))
    assert local.kafka.bootstrap_servers == "127.0.0.1:1" and local.kafka.security_protocol == "PLAINTEXT"
    assert (
        local.elasticsearch.url == "http://127.0.0.1:2" and local.elasticsearch.index_prefix == "finsent-demo"
    )


def test_the_live_frame_fits_the_terminal_and_shows_log_lines_inside_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line wider than the terminal wraps, and the redraw (one row up per line) then drew every frame
    below the last; a log line written between two redraws was drawn over. The records the frame took
    are written out in full once it is done (a traceback, an INFO line the frame does not show)."""
    progress = Progress(total=1)
    progress.latest.append("x" * 300)
    with caplog.at_level(logging.INFO), demo.logs_in_frame(progress):
        logging.getLogger("finsent.alerts").warning("CRITICAL ticker:ACME\nsecond line")
        logging.getLogger("finsent.runner").info("partitions assigned")
        try:
            raise RuntimeError("the pipeline broke")
        except RuntimeError:
            logging.getLogger("finsent.demo").exception("pipeline failed")
        assert caplog.records == []  # not on the terminal while the frame is drawn
    assert [r.getMessage() for r in caplog.records] == [
        "CRITICAL ticker:ACME\nsecond line",
        "partitions assigned",
        "pipeline failed",
    ]
    assert "RuntimeError: the pipeline broke" in caplog.text
    assert "partitions assigned" not in "\n".join(progress.logs)
    frame = demo.clipped(progress.render(), 80)
    assert all(len(line) <= 79 for line in frame.split("\n"))
    assert "log:" in frame and "WARNING finsent.alerts: CRITICAL ticker:ACME second line" in frame
    assert frame.endswith("Ctrl-C stops the demo")


def demo_settings(noida: Noida, unique: str, **sections: Any) -> Settings:
    """The demo on the test's noida-db, topics of its own, alerts off; `sections` replace whole sections."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": noida.kafka,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "elasticsearch": {"url": noida.es_url, "index_prefix": f"demo{unique}", "number_of_replicas": 0},
        "pipeline": {
            "input_topics": [f"raw-{unique}"],
            "group_id": f"g-{unique}",
            "labeled_topic": f"labeled-{unique}",
            "dead_letter_topic": f"dead-{unique}",
        },
        "alerts": {"enabled": False},
    }
    return Settings(**{**base, **sections})


def test_demo_runs_to_completion(
    noida: Noida, unique: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = demo_settings(noida, unique)
    assert run_demo(settings, rate=500) == 0
    out = capsys.readouterr().out
    total = len([x for x in sample_stream_path().read_text(encoding="utf-8").splitlines() if x.strip()])
    assert f"sent {total}/{total}" in out
    assert "dead-lettered 5" in out and "demo finished" in out


def test_a_demo_on_a_deployments_broker_writes_and_notifies_nothing_of_theirs(
    noida: Noida, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote 470 synthetic records into the configured raw topic, read as the production groups,
    indexed into the production indices and sent fake critical alerts to the real webhook."""
    hook = Recorder()
    try:
        settings = demo_settings(
            noida,
            unique,
            alerts={
                "group_id": f"a-{unique}",
                "state_topic": f"state-{unique}",
                "notifiers": {"webhook": {"enabled": True, "url": f"http://127.0.0.1:{hook.port}/"}},
            },
        )
        assert run_demo(settings, rate=500) == 0
    finally:
        hook.close()
    out = capsys.readouterr().out
    assert f"raw-{unique}-demo" in out and f"demo{unique}-demo-*" in out and "alerts to the log only" in out
    consumer = KafkaConsumer(bootstrap_servers=noida.kafka)
    try:
        topics = consumer.topics()
    finally:
        consumer.close()
    assert f"raw-{unique}-demo" in topics and f"labeled-{unique}-demo" in topics
    assert not {f"raw-{unique}", f"labeled-{unique}", f"dead-{unique}", f"state-{unique}"} & topics
    es = Elasticsearch(noida.es_url)
    es.indices.refresh(index=f"demo{unique}-demo-events-*")
    assert es.count(index=f"demo{unique}-demo-events-*")["count"] > 0
    assert not es.indices.get(index=f"demo{unique}-events-*", allow_no_indices=True)
    assert hook.bodies == []


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_demo_stopped_by_a_signal_stops_its_local_server(tmp_path: Path, signum: int) -> None:
    """The local noida-db runs in a session of its own: a demo killed by SIGTERM (CI cancelling a job,
    `timeout`, `docker stop`) or SIGHUP (its terminal closed, an SSH session dropped) without unwinding
    left it running, its ports and data behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env["TMPDIR"] = str(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "finsent", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the server is up once the demo goes on to the model
            if "loading the model" in line:
                break
        servers = [pid for pid, cmd in _children(demo.pid) if "noida-db" in cmd]
        assert len(servers) == 1, _children(demo.pid)
        demo.send_signal(signum)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{servers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    outlived = Path(f"/proc/{servers[0]}").exists()
    if outlived:
        os.kill(servers[0], signal.SIGKILL)  # not left behind by a failing run either
    assert not outlived, "the demo's noida-db outlived it"
    assert not list(tmp_path.glob("finsent-demo-*")), "its data directory was left behind"
