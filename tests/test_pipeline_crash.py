"""`finsent run` as a real process: SIGKILL in the middle of the stream, restart, still exactly one
Elasticsearch document per message and every offset committed; SIGTERM stops it cleanly (exit 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.pipeline_helpers import committed, env_for, make_settings, publish, topics, valid_message, wait_for
from tests.servers import create_topic
from tests.test_pipeline_e2e import es_ids

REPO = Path(__file__).resolve().parent.parent


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "finsent", "run"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_sigkill_mid_batch_then_restart(broker: str, es_url: str, unique: str, tmp_path: Path) -> None:
    t = topics(unique)
    create_topic(broker, t.raw, 3)
    create_topic(broker, t.labeled, 2)
    create_topic(broker, t.dead, 1)
    n = 1500
    valid = [valid_message(i) for i in range(n)]
    publish(broker, t.raw, [(i % 3, None, json.dumps(m).encode()) for i, m in enumerate(valid)])
    # The restarted worker keeps its identity (like a restarted pod): static group membership lets it take
    # its partitions back at once (noida-db does not expire a killed dynamic member for minutes).
    env = {
        **env_for(make_settings(broker, es_url, t, batch_max_messages=32)),
        "FINSENT_KAFKA__GROUP_INSTANCE_ID": f"worker-{unique}",
    }
    alias = f"{t.prefix}-events"
    log = tmp_path / "worker.log"

    first = start_worker(env, log)
    try:
        wait_for(lambda: sum(es_ids(es_url, alias).values()) >= 100, "first documents", 90)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    written_before = sum(es_ids(es_url, alias).values())
    assert written_before < n, "the worker finished before it could be killed: raise n"

    # The same group and static member: on restart kafka-python rejoins on a metadata change while the
    # revocation waits for batches, and once abandoned that join (finsent.poll_wait.JoinWatch) left the
    # restarted worker without partitions for good (about 1 run in 2 on noida-db).
    group = t.group
    second = start_worker(env, log)
    try:
        expected = {p: sum(1 for i in range(n) if i % 3 == p) for p in range(3)}
        try:
            wait_for(lambda: committed(broker, group, t.raw, 3) == expected, "all offsets committed", 120)
        except AssertionError as exc:
            got = committed(broker, group, t.raw, 3)
            raise AssertionError(f"{exc}: {got} != {expected}\n{log.read_text()[-4000:]}") from None
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            raise
    assert second.returncode == 0, log.read_text()[-3000:]
    assert es_ids(es_url, alias) == Counter(m["id"] for m in valid)
    assert "pipeline stopped" in log.read_text()
