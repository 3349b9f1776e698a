"""Delivery when things go wrong: receivers that are down, hang, redirect or rate-limit; a worker that
catches up on a backlog during a spike; an event the detector chokes on; state records over 1 MiB; secrets
in the log. No broker: the worker steps over an in-memory consumer and a state store that goes through the
real codec; receivers are httpx MockTransports on a virtual clock (nothing here may sleep)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import BadRequestError
from kafka import TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from alerts.config import AlertSettings, LogChannel, NotifierSettings, SlackChannel, WebhookChannel
from alerts.detector import Detector
from alerts.events import LabeledEvent
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.dispatch import Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.factory import build_dispatcher
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier
from alerts.state_codec import decode_state, encode_state
from alerts.synthetic import make_events
from finsent.alert_metrics import AlertMetrics
from finsent.alert_state import SAVE_TIMEOUT_S, STATE_MAX_BYTES, STATE_TOPIC_CONFIG, SaveStopped, StateStore
from finsent.alert_worker import HANDOVER_SAVE_TIMEOUT_S, AlertWorker, PartitionState
from finsent.commands.alerting import cmd_alerts
from finsent.settings import Settings
from tests.test_alerts_notifiers import make_alert
from tests.test_alerts_worker import labeled_json

W = 60
SECRET_URL = "https://hooks.example.com/services/T0001/B0002/XXXXSECRETXXXX"
Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Receiver:
    """An HTTP receiver behind a MockTransport: answers with `status(now)` and keeps what it accepted."""

    def __init__(self, clock: Clock, status: Callable[[float], int] = lambda now: 200) -> None:
        self.clock, self.status = clock, status
        self.requests: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.retry_after: str | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(self.clock.now)
        status = self.status(self.clock.now)
        if status < 300:
            self.bodies.append(json.loads(request.content))
        headers = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else {}
        return httpx.Response(status, headers=headers)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self), follow_redirects=False)

    def alerts(self) -> list[tuple[str, str]]:
        return [(a["key"], a["status"]) for body in self.bodies for a in body["alerts"]]


class Outcomes:
    """The dispatcher's on_outcome callback, keeping what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, channel: str, outcome: str, n: int) -> None:
        self.seen.append((channel, outcome, n))

    def total(self, channel: str, outcome: str) -> int:
        return sum(n for c, o, n in self.seen if (c, o) == (channel, outcome))


# ---------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])  # `--log-level DEBUG` logged them
def test_build_dispatcher_keeps_webhook_urls_out_of_the_log(
    level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(level)  # as `finsent alerts` configures it
    outcomes = Outcomes()
    settings = NotifierSettings(
        slack=SlackChannel(enabled=True, webhook_url=SecretStr(SECRET_URL)), log=LogChannel(enabled=False)
    )
    receiver = Receiver(Clock())
    d = build_dispatcher(settings, client=receiver.client(), on_outcome=outcomes)
    d.notify([make_alert()])
    assert outcomes.seen == [("slack", "sent", 1)] and len(receiver.requests) == 1
    assert "XXXXSECRETXXXX" not in caplog.text and "hooks.example.com" not in caplog.text


def test_finsent_alerts_quiets_http_logging_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # as cli.main configures it
    assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
    config = tmp_path / "finsent.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": ""}}))
    monkeypatch.setenv("FINSENT_CONFIG", str(config))
    monkeypatch.delenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    assert cmd_alerts(argparse.Namespace(config=config)) == 2  # no broker configured: stops early
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


# -------------------------------------------------------------------------------------------- redirects


def test_a_redirect_is_a_permanent_failure_and_only_its_host_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    seen: list[str] = []

    def moved(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        location = str(request.url).replace("http://", "https://") + "?token=TOPSECRET"
        return httpx.Response(308, headers={"Location": location})

    outcomes = Outcomes()
    settings = NotifierSettings(
        webhook=WebhookChannel(enabled=True, url=SecretStr("http://hooks.example.com/finsent/TOKENPATH")),
        log=LogChannel(enabled=False),
    )
    client = httpx.Client(transport=httpx.MockTransport(moved), follow_redirects=False)
    d = build_dispatcher(settings, client=client, on_outcome=outcomes)
    d.notify([make_alert()])
    d.flush()
    assert outcomes.seen == [("webhook", "failed", 1)] and d.pending() == 0  # not "sent", and not retried
    assert len(seen) == 1
    assert "redirected to host hooks.example.com" in caplog.text
    assert "TOKENPATH" not in caplog.text and "TOPSECRET" not in caplog.text


# ---------------------------------------------------------------------------------- retries and backoff


def slack_dispatcher(
    receiver: Receiver, clock: Clock, outcomes: Outcomes, *, max_pending: int = 1000
) -> tuple[Dispatcher, Channel]:
    channel = Channel(SlackNotifier(receiver.client(), SECRET_URL), TokenBucket(600, 10))
    d = Dispatcher(
        [channel],
        retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=10.0),
        max_pending=max_pending,
        clock=clock,
        on_outcome=outcomes,
    )
    return d, channel


def test_a_short_outage_loses_no_resolve() -> None:
    """The receiver is down for 4 s (more than the old 0.5+1+2 s of inline retries); flushes every 0.5 s
    (the worker's poll) get the resolve through once it is back, without ever sleeping."""
    clock, outcomes = Clock(), Outcomes()
    receiver = Receiver(clock, lambda now: 503 if now < 1_000_004.0 else 200)
    d, _ = slack_dispatcher(receiver, clock, outcomes)
    d.notify([make_alert("A", "resolved")])
    assert d.pending_alerts()["slack"][0].status == "resolved"  # back in the queue (and in the state)
    while clock.now < 1_000_010.0:
        clock.now += 0.5
        d.flush()
    assert d.pending() == 0 and len(receiver.bodies) == 1
    assert outcomes.total("slack", "sent") == 1
    assert outcomes.total("slack", "failed") == 1  # reported once, when still failing after max_retries
    assert [round(t - 1_000_000.0, 1) for t in receiver.requests] == [0.0, 0.5, 1.5, 3.5, 7.5]


def test_retry_after_is_honoured_and_capped() -> None:
    clock, outcomes = Clock(), Outcomes()
    receiver = Receiver(clock, lambda now: 429 if now < 1_000_030.0 else 200)
    receiver.retry_after = "30"
    d, channel = slack_dispatcher(receiver, clock, outcomes)
    d.notify([make_alert()])
    assert channel.not_before == 1_000_030.0
    for t in (1.0, 10.0, 29.9):
        clock.now = 1_000_000.0 + t
        d.flush()
    assert len(receiver.requests) == 1  # nothing before Retry-After
    clock.now = 1_000_030.0
    d.flush()
    assert len(receiver.bodies) == 1 and outcomes.total("slack", "sent") == 1
    receiver.status, receiver.retry_after = (lambda now: 503), "86400"  # a day: capped
    d.notify([make_alert("B")])
    assert channel.not_before == clock.now + RetryPolicy().max_retry_after_s


def test_a_hanging_channel_costs_one_timeout_and_never_holds_the_others_up() -> None:
    clock, outcomes = Clock(), Outcomes()
    hung: list[float] = []

    def hang(request: httpx.Request) -> httpx.Response:
        hung.append(clock.now)
        clock.now += 10.0  # the request timeout
        raise httpx.ReadTimeout("timed out", request=request)

    slack = Receiver(clock)
    am = AlertmanagerNotifier(
        httpx.Client(transport=httpx.MockTransport(hang)), "http://am:9093", firing_ttl_s=240
    )
    d = Dispatcher(
        [
            Channel(am, TokenBucket(600, 10), native_batches=True),
            Channel(SlackNotifier(slack.client(), SECRET_URL), TokenBucket(600, 10)),
        ],
        retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=10.0),
        clock=clock,
        on_outcome=outcomes,
    )
    t0 = clock.now
    d.notify([make_alert("A"), make_alert("B")])
    assert clock.now - t0 == 10.0  # one timeout, no retries slept through (it was 217 s)
    assert len(slack.bodies) == 2  # Slack got both anyway
    clock.now += 0.2
    d.notify([make_alert("C")])  # Alertmanager backs off: C goes to Slack at once
    d.resend([make_alert("A")])  # and the re-send skips a channel in backoff
    assert len(slack.bodies) == 3 and len(hung) == 1
    assert [a.key for a in d.pending_alerts()["alertmanager"]] == ["A", "B", "C"]


def test_permanent_failures_are_dropped_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    clock, outcomes = Clock(), Outcomes()
    receiver = Receiver(clock, lambda now: 404)
    d, _ = slack_dispatcher(receiver, clock, outcomes)
    d.notify([make_alert()])
    clock.now += 60
    d.flush()
    assert d.pending() == 0 and len(receiver.requests) == 1
    assert outcomes.seen == [("slack", "failed", 1)]
    assert "failed permanently: HTTP 404" in caplog.text


def test_a_channel_down_for_days_keeps_a_bounded_queue() -> None:
    clock, outcomes = Clock(), Outcomes()
    receiver = Receiver(clock, lambda now: 503)
    d, _ = slack_dispatcher(receiver, clock, outcomes, max_pending=3)
    for i in range(5):
        clock.now += 3600
        d.notify([make_alert(f"K{i}")])
    assert [a.key for a in d.pending_alerts()["slack"]] == ["K2", "K3", "K4"]  # the oldest went
    assert outcomes.total("slack", "failed") == 5  # each alert counted once: reported stuck, or dropped
    assert outcomes.total("slack", "sent") == 0


# ------------------------------------------------------------------------------------- the worker loop


class StubConsumer:
    """The part of KafkaConsumer that the worker's step and assign callback use: partition 0 only."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.batches: list[list[Any]] = []
        self.offset = 0
        self.commits: list[int] = []

    def feed(self, values: list[bytes]) -> None:
        batch = []
        for v in values:
            batch.append(type("Record", (), {"offset": self.offset, "value": v, "headers": []})())
            self.offset += 1
        self.batches.append(batch)

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Any]]:
        return {TopicPartition(self.topic, 0): self.batches.pop(0)} if self.batches else {}

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int = 0) -> None:
        self.commits.extend(o.offset for o in offsets.values())

    def committed(self, tp: TopicPartition, timeout_ms: int = 0) -> int | None:
        return None

    def highwater(self, tp: TopicPartition) -> int:
        return self.offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass


class MemoryStateStore:
    """The state topic in memory, each record through the real codec. A save that heeds a stop which is set
    gives up (SaveStopped), as StateStore's does with Kafka away; each call is recorded."""

    def __init__(self) -> None:
        self.records: dict[int, bytes] = {}
        self.calls: list[tuple[float, bool]] = []  # (timeout_s, heeds the stop)

    def save(
        self,
        states: dict[int, dict[str, Any]],
        timeout_s: float = 30.0,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.calls.append((timeout_s, stop is not None))
        if stop is not None and stop.is_set():
            raise SaveStopped("stopping while the alert state was unacknowledged")
        self.records.update({p: encode_state(s) for p, s in states.items()})

    def load(self, partitions: set[int]) -> dict[int, dict[str, Any]]:
        return {p: decode_state(self.records[p]) for p in partitions if p in self.records}


def alert_settings(**extra: Any) -> AlertSettings:
    return AlertSettings(window_s=W, allowed_lateness_s=0, keys=["ticker"], **extra)


def start_worker(
    alerts: AlertSettings,
    dispatcher: Dispatcher,
    clock: Clock,
    store: MemoryStateStore,
    registry: CollectorRegistry | None = None,
    detector: Detector | None = None,
) -> tuple[AlertWorker, StubConsumer]:
    settings = Settings.model_validate({"alerts": alerts.model_dump(), "metrics": {"enabled": False}})
    worker = AlertWorker(settings, registry=registry, dispatcher=dispatcher, clock=clock)
    consumer = StubConsumer(worker.topic)
    worker.consumer, worker.store = consumer, store  # what _setup would connect
    worker.on_assigned({0})
    if detector is not None:
        worker.parts[0].detector = detector
    return worker, consumer


def values(events: list[LabeledEvent]) -> list[bytes]:
    return [json.dumps(labeled_json(e)).encode() for e in events]


def by_window(events: list[LabeledEvent]) -> list[list[LabeledEvent]]:
    windows: dict[int, list[LabeledEvent]] = {}
    for e in events:
        windows.setdefault(int(e.ts // W), []).append(e)
    return [windows[k] for k in sorted(windows)]


def live(
    worker: AlertWorker, consumer: StubConsumer, clock: Clock, windows: list[list[LabeledEvent]]
) -> None:
    """Each window read as it ends: fed, the clock just past its last event, one step."""
    for window in windows:
        consumer.feed(values(window))
        clock.now = max(e.ts for e in window) + 1
        worker.step()


def webhook_dispatcher(receiver: Receiver, clock: Clock, outcomes: Outcomes | None = None) -> Dispatcher:
    channel = Channel(WebhookNotifier(receiver.client(), "http://hook.example/x"), TokenBucket(600, 10))
    return Dispatcher([channel], digest_min=50, clock=clock, on_outcome=outcomes)


NORMAL = {"ticker:A": (60, 0.1)}
SPIKE = {"ticker:A": (60, 0.6)}
CALM = {"ticker:A": (60, 0.05)}
START = 1_700_000_040.0


def test_a_spike_going_on_when_the_worker_catches_up_is_notified_once_then_resolved() -> None:
    """The spike began 2 h before the worker came back (its firing transition is too old to notify) and
    still goes on: it is notified once, when its latest window is recent, and so is its resolve."""
    clock = Clock(START + 180 * W)
    receiver = Receiver(clock)
    worker, consumer = start_worker(
        alert_settings(), webhook_dispatcher(receiver, clock), clock, MemoryStateStore()
    )
    consumer.feed(values(make_events([NORMAL] * 60 + [SPIKE] * 120, window_s=W, start=START, seed=1)))
    worker.step()
    assert receiver.alerts() == [("A", "firing")]
    events = make_events([SPIKE] * 5 + [CALM] * 8, window_s=W, start=START + 180 * W, seed=2)
    live(worker, consumer, clock, by_window(events))
    assert receiver.alerts() == [("A", "firing"), ("A", "resolved")]


def test_a_spike_that_rises_to_critical_is_notified_again_as_an_escalation_and_counted() -> None:
    """A warning that becomes critical tells the channels so (before: only Alertmanager's re-send carried
    the new severity, and the other channels never heard of it); the resolve is the episode's own."""
    registry = CollectorRegistry()
    clock = Clock(START)
    receiver = Receiver(clock)
    worker, consumer = start_worker(
        alert_settings(volume_rule=False),
        webhook_dispatcher(receiver, clock),
        clock,
        MemoryStateStore(),
        registry=registry,
    )
    warn = {"ticker:A": (60, 0.28)}
    plans = [NORMAL] * 40 + [warn] + [SPIKE] * 3 + [CALM] * 10
    live(worker, consumer, clock, by_window(make_events(plans, window_s=W, start=START, seed=1)))
    got = [(a["status"], a["severity"], a["escalated_from"]) for b in receiver.bodies for a in b["alerts"]]
    assert got == [("firing", "warning", ""), ("firing", "critical", "warning"), ("resolved", "critical", "")]
    escalation = receiver.bodies[1]["alerts"][0]
    assert escalation["summary"].startswith("Escalated from warning to critical: ")
    assert escalation["alert_id"] == receiver.bodies[0]["alerts"][0]["alert_id"]  # the same episode
    labels = {"rule": "negative_share", "key_type": "ticker"}
    assert registry.get_sample_value("finsent_alerts_escalated_total", labels) == 1.0
    assert registry.get_sample_value("finsent_alerts_fired_total", {**labels, "severity": "warning"}) == 1.0
    assert registry.get_sample_value("finsent_alerts_fired_total", {**labels, "severity": "critical"}) == 0.0


def test_an_escalation_read_late_in_a_backlog_is_notified_when_the_worker_catches_up() -> None:
    """The warning went out live; the windows that raised the episode to critical were read late, after a
    restart (the worker was down longer than notify_max_age_s), too old to notify as they came: the
    escalation is notified once the worker has caught up (the state keeps the severity each episode was
    told at), and only once."""
    clock = Clock(START)
    receiver = Receiver(clock)
    store = MemoryStateStore()
    settings = alert_settings(volume_rule=False, notify_max_age_s=150)
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, store)
    warn = {"ticker:A": (60, 0.28)}
    plans = [NORMAL] * 40 + [warn] + [SPIKE] * 8 + [CALM] * 10
    windows = by_window(make_events(plans, window_s=W, start=START, seed=1))
    live(worker, consumer, clock, windows[:42])
    assert [(a["status"], a["severity"]) for b in receiver.bodies for a in b["alerts"]] == [
        ("firing", "warning")
    ]
    clock.now = max(e.ts for e in windows[48]) + 1
    read = consumer.offset
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, store)
    consumer.offset = read
    consumer.feed([v for window in windows[42:49] for v in values(window)])  # the spike, in one late batch
    worker.step()
    worker.step()
    got = [(a["status"], a["severity"], a["escalated_from"]) for b in receiver.bodies for a in b["alerts"]]
    assert got == [("firing", "warning", ""), ("firing", "critical", "warning")]
    assert receiver.bodies[1]["alerts"][0]["summary"].startswith("Escalated from warning to critical: ")


def test_notified_alerts_saved_by_an_older_version_load_with_their_severity_unknown() -> None:
    ps = PartitionState(partition=0, detector=Detector(alert_settings()), notified={"a": "warning", "b": ""})
    rec = ps.to_record()
    assert rec["notified"] == ["a", "b"] and rec["notified_severity"] == {"a": "warning"}  # ids as before
    assert PartitionState.from_record(alert_settings(), 0, rec).notified == ps.notified
    older = {k: v for k, v in rec.items() if k != "notified_severity"}
    garbled = {**rec, "notified_severity": {"a": 5, "b": "bogus"}}
    for stored in (older, garbled):
        assert PartitionState.from_record(alert_settings(), 0, stored).notified == {"a": "", "b": ""}
    odd_ids = {**rec, "notified": ["a", ["x"], 7, "b"]}  # unreadable ids are left out, not the state
    assert PartitionState.from_record(alert_settings(), 0, odd_ids).notified == ps.notified
    assert PartitionState.from_record(alert_settings(), 0, {**rec, "notified": "a"}).notified == {}


def test_an_old_spike_that_is_over_is_not_notified_when_catching_up() -> None:
    clock = Clock(START + 190 * W)
    receiver = Receiver(clock)
    worker, consumer = start_worker(
        alert_settings(), webhook_dispatcher(receiver, clock), clock, MemoryStateStore()
    )
    plans = [NORMAL] * 60 + [SPIKE] * 10 + [CALM] * 120
    consumer.feed(values(make_events(plans, window_s=W, start=START, seed=3)))
    worker.step()
    worker.step()
    assert receiver.requests == [] and not worker.parts[0].detector.firing()


def test_a_notification_that_failed_is_in_the_saved_state_and_sent_after_a_restart() -> None:
    clock, store = Clock(START), MemoryStateStore()
    down = Receiver(clock, lambda now: 503)
    worker, consumer = start_worker(alert_settings(), webhook_dispatcher(down, clock), clock, store)
    events = make_events([NORMAL] * 60 + [SPIKE] * 2 + [NORMAL], window_s=W, start=START, seed=4)
    live(worker, consumer, clock, by_window(events))
    assert len(down.requests) >= 1 and down.bodies == []
    saved = decode_state(store.records[0])
    assert [(a["key"], a["status"]) for a in saved["pending"]["webhook"]] == [("A", "firing")]

    up = Receiver(clock)  # a restarted worker, and the receiver is back
    restarted, _ = start_worker(alert_settings(), webhook_dispatcher(up, clock), clock, store)
    restarted.step()
    assert up.alerts() == [("A", "firing")]
    restarted.step()
    assert decode_state(store.records[0])["pending"] == {}


@pytest.mark.parametrize("shutdown", [True, False], ids=["then-shutdown", "then-revoke"])
def test_a_save_cut_short_by_the_stop_is_made_by_the_shutdown_and_a_hand_over_ignores_the_stop(
    shutdown: bool,
) -> None:
    clock, store = Clock(START), MemoryStateStore()
    registry = CollectorRegistry()
    worker, consumer = start_worker(
        alert_settings(), webhook_dispatcher(Receiver(clock), clock), clock, store, registry
    )
    stop = threading.Event()
    worker._stop = stop  # as run(stop) sets it
    consumer.feed(values(make_events([NORMAL] * 3, window_s=W, start=START, seed=5)))
    clock.now = START + 3 * W + 1
    worker.step()  # counted, saved
    assert store.calls == [(SAVE_TIMEOUT_S, True)] and store.records
    saved_before = dict(store.records)
    consumer.feed(values(make_events([NORMAL], window_s=W, start=START + 3 * W, seed=6)))
    clock.now += worker.alerts.state_interval_s + 1
    stop.set()
    with pytest.raises(SaveStopped):
        worker.step()  # the periodic save gives up at the stop: nothing marked saved
    assert store.records == saved_before and worker.parts[0].dirty
    if shutdown:
        worker._shutdown()  # what run() does next
        assert store.calls[-1] == (HANDOVER_SAVE_TIMEOUT_S, False) and store.records != saved_before
        assert not worker.parts[0].dirty
        return
    worker.on_revoked({0})  # a hand-over during the stop: saved all the same, with its own budget
    assert store.calls[-1] == (HANDOVER_SAVE_TIMEOUT_S, False) and store.records != saved_before
    assert not worker.parts
    assert registry.get_sample_value("finsent_alert_output_errors_total", {"output": "kafka"}) in (None, 0.0)


class ChokingDetector(Detector):
    """A detector with a bug for one key: what the worker's safety net is for."""

    def add(self, event: LabeledEvent, now: float | None = None) -> str:
        if event.key == "BOOM":
            raise ValueError("cannot convert float NaN to integer")
        return super().add(event, now)


def test_an_event_the_detector_chokes_on_is_skipped_and_its_offset_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock, registry = Clock(START), CollectorRegistry()
    alerts = alert_settings()
    worker, consumer = start_worker(
        alerts,
        webhook_dispatcher(Receiver(clock), clock),
        clock,
        MemoryStateStore(),
        registry,
        ChokingDetector(alerts),
    )
    good = make_events([NORMAL], window_s=W, start=START, seed=5)[:2]
    boom = LabeledEvent("m-boom|ticker:BOOM", "ticker", "BOOM", START + 1, True, 0.9)
    nan = labeled_json(good[0]) | {"event_id": "m-nan|ticker:A"}
    consumer.feed(
        [*values([good[0], boom]), json.dumps(nan).replace(f'"{nan["published_at"]}"', "NaN").encode()]
    )
    consumer.feed(values([good[1]]))
    worker.step()  # must not raise: it did, and the worker crash-looped on the same record
    assert consumer.commits[-1] == 3  # past both bad records
    clock.now += alerts.state_interval_s
    worker.step()
    assert consumer.commits[-1] == 4
    assert registry.get_sample_value("finsent_alert_events_total") == 2
    assert registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "schema"}) == 2
    assert "skipping labeled record" in caplog.text and "@1" in caplog.text


def test_a_labeled_event_with_half_a_character_is_counted_or_skipped_never_crashing_a_notification() -> None:
    """A third-party labeler cut an emoji in two ("\\ud83d" in the JSON): in the key the event is skipped
    as invalid (the key is hashed and quoted everywhere), in the text the half becomes U+FFFD."""
    clock, registry = Clock(START), CollectorRegistry()
    worker, consumer = start_worker(
        alert_settings(), webhook_dispatcher(Receiver(clock), clock), clock, MemoryStateStore(), registry
    )
    (good,) = make_events([NORMAL], window_s=W, start=START, seed=6)[:1]
    cut_text = labeled_json(good) | {"text": "ACME \ud83d plunges"}
    cut_key = labeled_json(good) | {"event_id": "m-cut|ticker:A", "key": "A\ud83d"}
    consumer.feed([json.dumps(cut_text).encode(), json.dumps(cut_key).encode()])
    worker.step()
    assert registry.get_sample_value("finsent_alert_events_total") == 1
    assert registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "schema"}) == 1


# --------------------------------------------------------------------------------------- the state topic


def test_state_topic_allows_records_as_large_as_the_producer_sends() -> None:
    store = StateStore({"bootstrap_servers": ["127.0.0.1:1"], "api_version": (3, 0)}, "s", "l")
    try:
        assert store.producer.config["max_request_size"] == STATE_MAX_BYTES
    finally:
        store.producer.close(timeout=0)
    assert int(STATE_TOPIC_CONFIG["max.message.bytes"]) >= STATE_MAX_BYTES
    assert STATE_TOPIC_CONFIG["cleanup.policy"] == "compact"


def test_deploy_files_create_the_state_topic_like_the_worker_does() -> None:
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    state_topic = Settings.model_validate({}).alerts.state_topic
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    script = compose["services"]["kafka-init"]["command"][0]
    line = next(ln for ln in script.splitlines() if f"--topic {state_topic} " in ln)
    compose_cfg = dict(re.findall(r"--config (\S+?)=(\S+)", line))
    (k8s,) = [
        d
        for d in yaml.safe_load_all((deploy / "k8s" / "kafka-topics.yaml").read_text())
        if d["metadata"]["name"] == state_topic
    ]
    k8s_cfg = {k: str(v) for k, v in k8s["spec"]["config"].items()}
    assert compose_cfg == k8s_cfg == STATE_TOPIC_CONFIG


def test_a_stored_alert_this_version_cannot_read_is_dropped_not_the_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from finsent.alert_worker import PartitionState

    settings = AlertSettings()
    good, other = make_alert("ACME"), make_alert("BETA")
    state = PartitionState(partition=3, detector=Detector(settings), next_offset=42, outbox=[good])
    state.pending = {"slack": [other]}
    rec = decode_state(encode_state(state.to_record()))
    rec["outbox"].append({"rule": "negative_share", "status": "firing"})  # no key, key_type, starts_at
    rec["pending"]["slack"].insert(0, {**other.to_dict(), "added_by_a_newer_version": True})
    with caplog.at_level(logging.WARNING, logger="finsent.alert_worker"):
        restored = PartitionState.from_record(settings, 3, rec)
    assert restored.next_offset == 42 and [a.key for a in restored.outbox] == ["ACME"]
    assert [a.key for a in restored.pending["slack"]] == ["BETA", "BETA"]
    assert "dropping an unreadable stored alert (outbox)" in caplog.text


def test_every_channel_exports_zero_notification_counts_from_the_start() -> None:
    """Prometheus' increase() misses the first increment of a series that appears with it: a channel's
    first failure would never raise FinsentNotificationsFailing."""
    registry = CollectorRegistry()
    clock = Clock()
    dispatcher, _ = slack_dispatcher(Receiver(clock), clock, Outcomes())
    start_worker(alert_settings(), dispatcher, clock, MemoryStateStore(), registry=registry)
    for outcome in ("sent", "failed", "rate_limited"):
        labels = {"channel": "slack", "outcome": outcome}
        assert registry.get_sample_value("finsent_notifications_total", labels) == 0.0


def test_fires_escalations_and_resolves_are_exported_at_zero_once_a_key_type_has_alerted() -> None:
    labels = {"rule": "negative_share", "key_type": "ticker"}
    for first in ("transition", "restored"):
        registry = CollectorRegistry()
        metrics = AlertMetrics(registry)
        assert registry.get_sample_value("finsent_alerts_escalated_total", labels) is None
        if first == "transition":
            metrics.transition(make_alert())
        else:
            metrics.set_firing([make_alert()])  # a restored state's firing alert
        for name in ("finsent_alerts_escalated_total", "finsent_alerts_resolved_total"):
            assert registry.get_sample_value(name, labels) == 0.0, (first, name)
        for severity in ("warning", "critical"):
            fired = registry.get_sample_value("finsent_alerts_fired_total", {**labels, "severity": severity})
            once = (first, severity) == ("transition", "critical")  # make_alert() is critical
            assert fired == (1.0 if once else 0.0), (first, severity)


def test_an_assigned_partition_reports_its_input_unlabeled_before_any_record_comes() -> None:
    """After a restart with the labelers silent (stopped, or held by an Elasticsearch outage) no record
    comes: FinsentAlertWindowsHeld needs the partition's 0 all the same, or `min by (job)` has nothing."""
    registry = CollectorRegistry()
    clock = Clock()
    dispatcher, _ = slack_dispatcher(Receiver(clock), clock, Outcomes())
    start_worker(alert_settings(), dispatcher, clock, MemoryStateStore(), registry=registry)
    labels = {"partition": "0"}
    assert registry.get_sample_value("finsent_alert_input_labeled_until_seconds", labels) == 0.0


class DownIndex:
    """The alert index's write() while Elasticsearch is down (`down`) or refuses some documents for good
    (`refuse`), keeping what it took."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.down = True
        self.refuse: set[str] = set()
        self.tries = 0
        self.written: list[tuple[str, str]] = []
        self.clock = clock
        self.seconds_per_write = 0.0  # a slow Elasticsearch, on the virtual clock

    def write(self, alert: Any) -> None:
        self.tries += 1
        if self.clock is not None:
            self.clock.now += self.seconds_per_write
        if self.down:
            raise ConnectionError("Elasticsearch unreachable")
        if alert.alert_id in self.refuse:
            meta = ApiResponseMeta(400, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "localhost", 9200))
            raise BadRequestError("mapper_parsing_exception", meta, {"error": "mapper_parsing_exception"})
        self.written.append((alert.alert_id, alert.status))


def test_alert_documents_elasticsearch_did_not_take_are_retried_with_backoff() -> None:
    """Latest transition per alert only (a retried firing never overwrites a later resolve); retries wait
    1 s doubling, because each blocks the consumer thread; a document refused for good is dropped and
    does not hold the others back."""
    registry = CollectorRegistry()
    clock = Clock()
    dispatcher, _ = slack_dispatcher(Receiver(clock), clock, Outcomes())
    worker, _ = start_worker(alert_settings(), dispatcher, clock, MemoryStateStore(), registry=registry)
    index = DownIndex()
    worker.index = index  # type: ignore[assignment]
    firing = make_alert("ACME")
    resolved = make_alert("ACME", "resolved", starts_at=firing.starts_at)
    bad, other = make_alert("BAD"), make_alert("BETA")
    for a in (bad, firing, other, resolved):
        worker._index(a, 0)
    assert index.tries == 1  # the first failure set a backoff: the others only queued
    for _ in range(5):
        worker.step()  # within the backoff: no call to Elasticsearch
    assert index.tries == 1
    index.down, index.refuse = False, {bad.alert_id}
    clock.now += 1.5
    worker.step()
    assert sorted(index.written) == sorted([(resolved.alert_id, "resolved"), (other.alert_id, "firing")])
    assert registry.get_sample_value("finsent_alert_output_errors_total", {"output": "elasticsearch"}) == 2
    worker.step()
    assert index.tries == 4  # nothing left to retry


def test_a_long_retry_queue_is_written_a_slice_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage, queued alert documents go out oldest first, a time budget per step, so a slow
    Elasticsearch never keeps the consumer from polling for long (max.poll.interval)."""
    monkeypatch.setattr("finsent.alert_worker.INDEX_STEP_BUDGET_S", 0.25)
    clock = Clock()
    dispatcher, _ = slack_dispatcher(Receiver(clock), clock, Outcomes())
    worker, _ = start_worker(alert_settings(), dispatcher, clock, MemoryStateStore())
    index = DownIndex(clock)
    worker.index = index  # type: ignore[assignment]
    queued = [make_alert(f"K{i}") for i in range(10)]
    for a in queued:
        worker._index(a, 0)
    index.down, index.seconds_per_write = False, 0.1
    clock.now += 1.5
    slices = []
    for _ in range(10):
        before = len(index.written)
        worker.step()
        slices.append(len(index.written) - before)
        if len(index.written) == len(queued):
            break
    assert [alert_id for alert_id, _ in index.written] == [a.alert_id for a in queued]
    assert max(slices) <= 3 and len(slices) >= 4, slices
