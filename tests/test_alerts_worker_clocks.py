"""Alert-worker fixes from a review of the alerts stage: its clocks in a backlog and on a quiet partition,
its keys, lag, escalations, bookkeeping and unwritten documents, through AlertWorker.step() over an
in-memory consumer (tests/test_alerts_delivery.py's helpers)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from alerts.config import AlertSettings
from alerts.events import InvalidEvent, LabeledEvent, parse_event
from alerts.state_codec import decode_state
from alerts.synthetic import make_events
from tests.test_alerts_delivery import NORMAL as LIVE_NORMAL
from tests.test_alerts_delivery import SPIKE as LIVE_SPIKE
from tests.test_alerts_delivery import (
    START,
    Clock,
    DownIndex,
    MemoryStateStore,
    Receiver,
    W,
    alert_settings,
    by_window,
    live,
    start_worker,
    values,
    webhook_dispatcher,
)
from tests.test_alerts_worker import labeled_json

NORMAL = {"ticker:A": (60, 0.1)}
SPIKE = {"ticker:A": (60, 0.6)}


def test_one_event_dated_hours_ahead_in_a_backlog_does_not_make_the_rest_late() -> None:
    """Its wall clock is when it was labeled: compared with the worker's own now (hours later in a
    backlog), a source writing local time without an offset moved event time to now."""
    window, start = 900, 1_700_000_100.0
    registry = CollectorRegistry()
    settings = AlertSettings(keys=["ticker"], volume_rule=False)
    events = make_events(
        [NORMAL] * 40 + [SPIKE] * 8, window_s=window, start=start, seed=1, shuffle_within_window=False
    )
    history, backlog = events[: 40 * 60], events[40 * 60 :]
    clock = Clock(start + 40 * window)
    receiver = Receiver(clock)
    dispatcher = webhook_dispatcher(receiver, clock)
    worker, consumer = start_worker(settings, dispatcher, clock, MemoryStateStore(), registry=registry)
    for i in range(40):
        consumer.feed(values(history[i * 60 : (i + 1) * 60]))
        clock.now = start + (i + 1) * window + 1
        worker.step()
    clock.now = max(e.ts for e in backlog) + 5  # two hours down, then the backlog in one poll
    ahead = LabeledEvent(
        "x1|ticker:TZ", "ticker", "TZ", backlog[10].ts + 8 * 3600, False, 0.1, "hi", "", "x1"
    )
    record = labeled_json(ahead)
    record["labeled_at"] = labeled_json(backlog[10])["labeled_at"]
    records = values(backlog)
    records.insert(11, json.dumps(record).encode())
    consumer.feed(records)
    worker.step()
    worker.step()
    assert registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "late"}) == 0
    assert receiver.alerts() == [("A", "firing")]


def test_records_the_detector_does_not_count_do_not_keep_a_quiet_partitions_windows_open() -> None:
    """Events of a key type this worker ignores, one every 30 s, restarted the idle clock: the alert of
    a ticker gone quiet never resolved."""
    window, start = 60, 1_700_000_040.0
    settings = AlertSettings(
        window_s=window,
        allowed_lateness_s=0,
        keys=["ticker"],
        idle_clock="wall",
        idle_advance_s=60,
        volume_rule=False,
    )
    clock = Clock(start)
    receiver = Receiver(clock)
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore())
    plans = [NORMAL] * 40 + [{"ticker:A": (60, 0.7)}] * 2
    for events in by_window(make_events(plans, window_s=window, start=start, seed=1)):
        consumer.feed(values(events))
        clock.now = max(e.ts for e in events) + 1
        worker.step()
    for i in range(120):  # an hour of topic events only
        clock.now += 30
        ignored = LabeledEvent(
            f"n{i}|topic:Macro", "topic", "Macro", clock.now - 2, False, 0.1, "", "", f"n{i}"
        )
        consumer.feed([json.dumps(labeled_json(ignored)).encode()])
        worker.step()
    assert receiver.alerts() == [("A", "firing"), ("A", "resolved")]


@pytest.mark.parametrize("key", ["ACME\n2026-12-01 ERROR finsent: forged", "AC\x1bME", "A\x85B"])
def test_a_key_with_a_control_character_is_a_schema_error(key: str) -> None:
    """Keys go into log lines, e-mails and chat messages: a newline in one forged log lines."""
    event = {"key_type": "ticker", "key": key, "id": "m1", "published_at": 1.0, "sentiment": "negative"}
    with pytest.raises(InvalidEvent, match="control character") as caught:
        parse_event(event, "negative")
    assert caught.value.code == "schema" and key not in str(caught.value)


def test_the_alert_worker_exports_its_consumer_lag() -> None:
    """KEDA scales the alert workers on this lag; the dashboards and FinsentConsumerLagGrowing read it
    from Prometheus, where only the labelers exported it."""
    registry = CollectorRegistry()
    clock = Clock(1_700_000_000.0)
    receiver = Receiver(clock)
    settings = AlertSettings(keys=["ticker"], volume_rule=False)
    worker, consumer = start_worker(
        settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore(), registry=registry
    )
    events = make_events([NORMAL] * 2, window_s=900, start=clock.now - 1800, seed=1)
    consumer.feed(values(events[:50]))
    consumer.feed(values(events[50:]))
    worker.step()  # read the first 50; the stub's highwater says the rest are there
    labels = {"topic": worker.topic, "partition": "0"}
    assert registry.get_sample_value("finsent_consumer_lag_messages", labels) == len(events) - 50
    worker.step()
    assert registry.get_sample_value("finsent_consumer_lag_messages", labels) == 0


def test_an_escalation_of_an_episode_never_notified_is_sent_as_a_plain_firing_alert() -> None:
    """Its warning was too old to notify when the backlog was read: "escalated from warning" named an
    alert nobody got (and resolved it in Alertmanager)."""

    warning = {"ticker:A": (60, 0.28)}
    plans = [LIVE_NORMAL] * 40 + [warning] + [LIVE_NORMAL] * 2 + [LIVE_SPIKE] * 3
    windows = by_window(make_events(plans, window_s=W, start=START, seed=1))
    clock = Clock(START)
    receiver = Receiver(clock)
    settings = alert_settings(volume_rule=False, notify_max_age_s=150)
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore())
    for events in windows[:40]:
        consumer.feed(values(events))
        clock.now = max(e.ts for e in events) + 1
        worker.step()
    clock.now = max(e.ts for e in windows[45]) + 1  # stopped a few minutes, then all of it at once
    consumer.feed([v for events in windows[40:46] for v in values(events)])
    worker.step()
    worker.step()
    sent = [a for body in receiver.bodies for a in body["alerts"]]
    assert [(a["status"], a["severity"], a["escalated_from"]) for a in sent] == [("firing", "critical", "")]


def test_delivered_notifications_leave_no_bookkeeping_behind() -> None:
    """The partition of each notification was kept for ever, though only queued ones need it."""

    plans: list[dict[str, tuple[int, float]]] = []
    for _ in range(2):
        plans += [{f"ticker:K{j}": (60, 0.1) for j in range(10)}] * 30
        plans += [{f"ticker:K{j}": (60, 0.7) for j in range(10)}] * 2
        plans += [{f"ticker:K{j}": (60, 0.05) for j in range(10)}] * 10
    clock = Clock(START)
    receiver = Receiver(clock)
    settings = alert_settings(volume_rule=False)
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore())
    live(worker, consumer, clock, by_window(make_events(plans, window_s=W, start=START, seed=5)))
    assert len(receiver.alerts()) >= 20 and worker.dispatcher.pending() == 0
    assert worker._origin == {}


def test_an_alert_document_elasticsearch_refused_is_written_after_a_restart() -> None:
    """It waited in memory only, while the outbox was cleared and the offsets committed: a deploy during
    an Elasticsearch outage lost the firing alert's document."""

    clock, store = Clock(START), MemoryStateStore()
    receiver = Receiver(clock)
    worker, consumer = start_worker(alert_settings(), webhook_dispatcher(receiver, clock), clock, store)
    worker.index = down = DownIndex()
    live(
        worker,
        consumer,
        clock,
        by_window(make_events([LIVE_NORMAL] * 60 + [LIVE_SPIKE] * 2, window_s=W, start=START, seed=4)),
    )
    assert receiver.alerts() == [("A", "firing")] and down.written == []
    saved = decode_state(store.records[0])
    assert saved["outbox"] == [] and [a["status"] for a in saved["unindexed"]] == ["firing"]
    again, _ = start_worker(alert_settings(), webhook_dispatcher(receiver, clock), clock, store)
    again.index = back = DownIndex()
    back.down = False
    for _ in range(3):
        clock.now += 70
        again.step()
    assert [status for _, status in back.written] == ["firing"]
    assert decode_state(store.records[0])["unindexed"] == []  # written: the next save drops it


def test_a_lateness_near_the_notify_age_still_notifies_live_alerts() -> None:
    """A window closes `allowed_lateness_s` after its end, and its alert's age was counted from the end:
    with a lateness of an hour (slow feeds) every live alert was too old to notify when it fired, so an
    episode was indexed and counted but reached nobody."""
    normal, spike = {"ticker:A": (60, 0.1)}, {"ticker:A": (60, 0.6)}
    clock = Clock(START)
    receiver = Receiver(clock)
    settings = AlertSettings(window_s=W, allowed_lateness_s=3600, keys=["ticker"], volume_rule=False)
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore())
    plans = [normal] * 30 + [spike] * 5 + [normal] * 80
    live(worker, consumer, clock, by_window(make_events(plans, window_s=W, start=START, seed=1)))
    assert receiver.alerts() == [("A", "firing"), ("A", "resolved")]
