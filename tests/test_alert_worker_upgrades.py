"""The alert worker across changes around it: a labeled topic created again, a second deployment sharing
the state topic, state saved by an earlier release and by a later one (a rollback)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from prometheus_client import CollectorRegistry

from alerts.detector import SNAPSHOT_VERSION, Detector
from alerts.events import LabeledEvent
from alerts.state_codec import encode_state
from alerts.synthetic import make_events
from finsent.alert_state import NewerState, StateStore, ensure_state_topic
from finsent.alert_worker import STATE_VERSION, AlertWorker, PartitionState
from finsent.settings import Settings
from tests.servers import create_topic
from tests.test_alerts_worker import produce
from tests.test_cli_errors import finsent_process

W = 60
LOGGER = "finsent.alert_worker"


def config(broker: str, unique: str, group: str = "", window_s: int = W) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": broker, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        "pipeline": {"labeled_topic": f"labeled-{unique}", "watermark_interval_s": 0},
        "elasticsearch": {"enabled": False},
        "metrics": {"enabled": False},
        "alerts": {
            "keys": ["ticker", "all"],
            "window_s": window_s,
            "allowed_lateness_s": 0,
            "idle_clock": "wall",
            "idle_advance_s": 1e9,
            "notify_max_age_s": 1e10,
            "group_id": group or f"alerts-{unique}",
            "state_topic": f"alert-state-{unique}",
            "state_interval_s": 1e9,  # saved when the test says so
        },
    }


def events(count: int, start: float, prefix: str) -> list[LabeledEvent]:
    """`count` ACME events in one window from `start`, with ids and texts of their own."""
    made = make_events([{"ticker:ACME": (count, 0.1)}], start=start, window_s=W, seed=3)
    return [
        replace(e, event_id=f"{prefix}{e.event_id}", message_id=f"{prefix}{i}", text=f"{prefix} {e.text}")
        for i, e in enumerate(made)
    ]


class Run:
    """A worker driven step by step in the test's thread (set up, stepped, saved, closed)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.registry = CollectorRegistry()
        self.worker = AlertWorker(Settings.model_validate(cfg), registry=self.registry)
        self.worker._setup()

    def counted(self) -> float:
        return self.registry.get_sample_value("finsent_alert_events_total") or 0.0

    def step_until(self, n: float, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counted() < n:
            assert time.monotonic() < deadline, f"timed out at {self.counted()} of {n} events counted"
            self.worker.step(200)

    def settle(self, seconds: float = 2.0) -> None:
        """Step on for a while: nothing more may be counted."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.worker.step(200)

    def close(self, save: bool = True) -> None:
        try:
            if save:
                self.worker._persist_and_commit(handover=True)
        finally:
            self.worker.consumer.close(autocommit=False)
            self.worker.store.close()
            self.worker.dispatcher.close()


def saved(cfg: dict[str, Any], group: str | None) -> dict[int, dict[str, Any]]:
    kw = {"bootstrap_servers": cfg["kafka"]["bootstrap_servers"]}
    store = StateStore(kw, cfg["alerts"]["state_topic"], cfg["pipeline"]["labeled_topic"], group_id=group)
    try:
        return store.load({0}, timeout_s=20)
    finally:
        store.close()


# ------------------------------------------------------------------------------- labeled topic recreated


def test_a_labeled_topic_created_again_is_counted_from_its_start(
    broker: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The saved state says offset 60; the topic is deleted and created again and gets 20 events. The
    consumer's seek to 60 is out of range and it starts from 0: those 20 must be counted (with a warning),
    not skipped as already read until the new log passes offset 60."""
    cfg = config(broker, unique)
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(broker, topic, partitions=1)
    first = events(60, 1_700_000_000.0, "a")
    produce(broker, topic, first)
    run = Run(cfg)
    try:
        run.step_until(60)
    finally:
        run.close()
    assert saved(cfg, cfg["alerts"]["group_id"])[0]["offset"] == 60

    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    deadline = time.monotonic() + 30
    while True:  # a deleted topic may take a moment to go
        try:
            create_topic(broker, topic, partitions=1)
            break
        except Exception:
            assert time.monotonic() < deadline, "the labeled topic could not be created again"
            time.sleep(0.5)
    produce(broker, topic, events(20, 1_700_000_000.0 + W, "b"))

    run = Run(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            run.step_until(20)
            run.settle()
        assert run.counted() == 20
        assert run.worker.parts[0].next_offset == 20
        assert set(run.worker.parts[0].detector.keys) == {"ticker:ACME"}  # baselines kept
    finally:
        run.close()
    warnings = [r.getMessage() for r in caplog.records if "ends at" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "offset 60" in warnings[0] and "ends at 20" in warnings[0]
    assert saved(cfg, cfg["alerts"]["group_id"])[0]["offset"] == 20


# ------------------------------------------------------------------------------ deployments and upgrades


def test_two_deployments_on_one_state_topic_keep_their_own_state(noida: Any, unique: str) -> None:
    """A shadow deployment (another alerts.group_id, another window) next to the live one, on the same
    state topic: neither restores nor overwrites the other's state."""
    live = config(noida.kafka, unique, group=f"live-{unique}")
    shadow = config(noida.kafka, unique, group=f"shadow-{unique}", window_s=10 * W)
    topic = live["pipeline"]["labeled_topic"]
    create_topic(noida.kafka, topic, partitions=1)
    produce(noida.kafka, topic, events(30, 1_700_000_000.0, "a"))
    run = Run(live)
    try:
        run.step_until(30)
    finally:
        run.close()
    produce(noida.kafka, topic, events(10, 1_700_000_000.0 + W, "b"))
    run = Run(shadow)
    try:
        run.step_until(40)  # from the start: the live deployment's offset is not the shadow's
        run.settle()
        assert run.counted() == 40
    finally:
        run.close()
    assert saved(live, f"live-{unique}")[0]["offset"] == 30
    assert saved(live, f"live-{unique}")[0]["detector"]["window_s"] == W
    assert saved(shadow, f"shadow-{unique}")[0]["offset"] == 40
    assert saved(shadow, f"shadow-{unique}")[0]["detector"]["window_s"] == 10 * W

    produce(noida.kafka, topic, events(5, 1_700_000_000.0 + 2 * W, "c"))
    run = Run(live)
    try:
        run.step_until(15)  # its own 10 + 5 since its save, not the shadow's 5
        run.settle()
        assert run.counted() == 15
        assert run.worker.parts[0].detector.settings.window_s == W
    finally:
        run.close()
    assert saved(live, f"live-{unique}")[0]["offset"] == 45


def test_state_saved_by_an_earlier_release_is_restored_then_saved_under_the_new_key(
    broker: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Earlier releases keyed the state `<labeled topic>:<partition>`: an upgrade restores it, says so, and
    saves under the group's key from then on, leaving the old record as it was."""
    cfg = config(broker, unique)
    group = cfg["alerts"]["group_id"]
    topic = cfg["pipeline"]["labeled_topic"]
    kw = {"bootstrap_servers": broker}
    ensure_state_topic(kw, cfg["alerts"]["state_topic"])
    settings = Settings.model_validate(cfg)
    ps = PartitionState(partition=0, detector=Detector(settings.alerts), next_offset=123)
    old = StateStore(kw, cfg["alerts"]["state_topic"], topic)  # no group: the key earlier releases wrote
    try:
        assert old.key(0) == f"{topic}:0".encode()
        old.save({0: ps.to_record()})
    finally:
        old.close()
    new = StateStore(kw, cfg["alerts"]["state_topic"], topic, group_id=group)
    try:
        assert new.key(0) == f"{topic}:0:{group}".encode()
        with caplog.at_level(logging.INFO, logger="finsent.alert_state"):
            restored = new.load({0}, timeout_s=20)
        assert restored[0]["offset"] == 123
        assert "key of earlier releases" in caplog.text
        new.save({0: {**ps.to_record(), "offset": 124}})
        assert new.load({0}, timeout_s=20)[0]["offset"] == 124  # the new key, once it exists
    finally:
        new.close()
    # the old record is left as it was: another deployment (not yet upgraded) may still need it
    other = StateStore(kw, cfg["alerts"]["state_topic"], topic, group_id=f"other-{unique}")
    try:
        assert other.load({0}, timeout_s=20)[0]["offset"] == 123
    finally:
        other.close()


# ----------------------------------------------------------------------------- state of a newer release


def record(settings: Settings, offset: int = 1234) -> dict[str, Any]:
    detector = Detector(settings.alerts)
    t0 = 1_700_000_040.0
    for i in range(3):
        detector.add(LabeledEvent(f"m{i}|ticker:ACME", "ticker", "ACME", t0 + i, False, 0.1), t0 + 10)
    rec = PartitionState(partition=0, detector=detector, next_offset=offset).to_record()
    read_back: dict[str, Any] = json.loads(json.dumps(rec))
    return read_back


@pytest.mark.parametrize("where", ["state", "detector"])
def test_a_state_of_a_newer_release_stops_the_worker_instead_of_starting_fresh(where: str) -> None:
    """Read as garbled, it was replaced by an empty state at the next save: rolling forward again then
    found the state lost. A record that is merely garbled still starts the partition fresh."""
    settings = Settings()
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=CollectorRegistry())
    try:
        rec = record(settings)
        if where == "state":
            rec["version"] = STATE_VERSION + 1
        else:
            rec["detector"]["version"] = SNAPSHOT_VERSION + 1
        with pytest.raises(NewerState) as caught:
            worker._restore(0, rec)
        message = str(caught.value)
        assert f"version {STATE_VERSION + 1 if where == 'state' else SNAPSHOT_VERSION + 1}" in message
        assert "roll forward" in message and "tombstone" in message and "kcat" in message
        assert "\n" not in message

        for garbled in ("2", None, 0, 1.5):
            rec = record(settings)
            if where == "state":
                rec["version"] = garbled
            else:
                rec["detector"]["version"] = garbled
            assert worker._restore(0, rec).next_offset is None  # started fresh, as before
    finally:
        worker.dispatcher.close()


def test_a_worker_rolled_back_leaves_the_newer_state_as_it_was(
    broker: str, unique: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Through the real path: the restore fails, the worker stops with the one error line (`finsent
    alerts` exits non-zero, `finsent run` retries with backoff), and the newer record stays."""
    cfg = config(broker, unique)
    create_topic(broker, cfg["pipeline"]["labeled_topic"], partitions=1)
    settings = Settings.model_validate(cfg)
    kw = {"bootstrap_servers": broker}
    ensure_state_topic(kw, cfg["alerts"]["state_topic"])
    newer = {**record(settings), "version": STATE_VERSION + 1, "field_of_the_future": {}}
    store = StateStore(
        kw, cfg["alerts"]["state_topic"], cfg["pipeline"]["labeled_topic"], group_id=cfg["alerts"]["group_id"]
    )
    try:
        store.save({0: newer})
    finally:
        store.close()

    worker = AlertWorker(settings, registry=CollectorRegistry())
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # a worker that never stops would hang the test, not fail it
    timer.start()
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(RuntimeError) as caught:
            worker.run(stop)
    finally:
        timer.cancel()
    assert isinstance(caught.value.__cause__, NewerState)
    errors = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "newer" in r.getMessage()
    ]
    assert len(errors) == 1 and f"state version {STATE_VERSION + 1}" in errors[0], errors
    assert saved(cfg, cfg["alerts"]["group_id"])[0] == newer
    # `finsent alerts` says so in its error line and one line more: it printed two tracebacks
    config_file = tmp_path / "finsent.yaml"
    config_file.write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
    done = finsent_process(["alerts", "--config", str(config_file)], {})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "finsent alerts: stopped: alert state could not be handed over or restored "
        "(see the error logged above)"
    )
    assert saved(cfg, cfg["alerts"]["group_id"])[0] == newer


def test_a_state_record_of_a_newer_codec_is_refused_not_read_as_garbage(broker: str, unique: str) -> None:
    kw = {"bootstrap_servers": broker}
    topic = f"alert-state-{unique}"
    ensure_state_topic(kw, topic)
    store = StateStore(kw, topic, "labeled", group_id="g")
    try:
        store.producer.send(topic, key=store.key(0), value=b"FSA2" + encode_state({"version": 1})[4:])
        store.producer.send(topic, key=store.key(1), value=b"garbage")
        store.producer.flush(timeout=30)
        assert store.load({1}, timeout_s=20) == {}  # garbled: ignored (the partition starts fresh)
        with pytest.raises(NewerState, match="codec FSA2"):
            store.load({0, 1}, timeout_s=20)
    finally:
        store.close()
