"""`finsent demo` on a configured broker: the bundled sample is replayed, labeled and dead-lettered in full,
and the command exits 0; plus the pure helpers it uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def test_a_demo_stopped_by_sigterm_stops_its_local_server(tmp_path: Path) -> None:
    """The local noida-db runs in a session of its own: a demo killed by SIGTERM (CI cancelling a job,
    `timeout`, `docker stop`) without unwinding left it running, its ports and data behind."""
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
        demo.send_signal(signal.SIGTERM)
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
