"""What the alert worker reports beyond its counts: which keys late events were of, and model changes."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from alerts.config import AlertSettings
from alerts.model import rfc3339
from alerts.synthetic import make_events
from finsent.late_report import REPORT_EVERY_S, LateTally, late_summary
from tests.test_alerts_delivery import (
    START,
    Clock,
    MemoryStateStore,
    Receiver,
    W,
    by_window,
    live,
    start_worker,
    webhook_dispatcher,
)
from tests.test_alerts_worker import labeled_json


def test_the_summary_names_the_late_sources_first_with_how_late() -> None:
    by_key = {
        "ticker:ACME": [40.0, 14_400.0],
        "all:all": [41.0, 14_400.0],
        "source:ny-api": [40.0, 14_410.0],
        "source:wire": [1.0, 95.0],
    }
    line = late_summary(122, by_key, 60.0, 300)
    assert line.startswith(
        "122 labeled event(s) in the last 60 s came after their window had closed "
        "(alerts.allowed_lateness_s=300) and were not counted; most: source:ny-api (40, up to 4.0 h after "
        "its date), source:wire (1, up to 2 min after its date)."
    )
    assert "dates_timezone" in line
    only_tickers = late_summary(3, {"ticker:B": [1.0, 30.0], "ticker:A": [2.0, 7.0]}, 61.0, 0)
    assert (
        "most: ticker:A (2, up to 7 s after its date), ticker:B (1, up to 30 s after its date)."
        in only_tickers
    )


def test_the_tally_reports_once_a_minute_at_most_and_stays_bounded() -> None:
    tally = LateTally()
    assert tally.report(100.0, 300) is None  # nothing late: nothing to say
    for i in range(5_000):
        tally.add(f"ticker:K{i}", 10.0, 100.0)
    assert tally.report(100.0 + REPORT_EVERY_S - 1, 300) is None
    line = tally.report(100.0 + REPORT_EVERY_S, 300)
    assert line is not None and line.startswith("5000 labeled event(s) in the last 60 s")
    assert len(tally.by_key) == 0 and tally.total == 0
    for i in range(5_000):
        tally.add(f"ticker:K{i}", 10.0, 500.0)
    assert len(tally.by_key) == 1_000 and tally.total == 5_000


def test_a_source_dated_hours_off_is_named_in_the_workers_log(caplog: pytest.LogCaptureFixture) -> None:
    """An API writing New York time read as UTC: every message came after its window had closed and was
    counted only as finsent_alert_events_skipped_total{reason="late"}, which names no source."""
    clock = Clock(START)
    receiver = Receiver(clock)
    settings = AlertSettings(window_s=W, allowed_lateness_s=0, keys=["ticker", "source"])
    worker, consumer = start_worker(settings, webhook_dispatcher(receiver, clock), clock, MemoryStateStore())
    live(
        worker,
        consumer,
        clock,
        by_window(make_events([{"ticker:A": (20, 0.1)}] * 5, window_s=W, start=START)),
    )
    early = make_events([{"source:ny-api": (30, 0.1)}], window_s=W, start=clock.now - 4 * 3600, seed=2)
    labeled_now = [
        {**labeled_json(replace(e, event_id=f"ny{i}")), "labeled_at": rfc3339(clock.now)}
        for i, e in enumerate(early)
    ]
    consumer.feed([json.dumps(obj).encode() for obj in labeled_now])
    with caplog.at_level(logging.WARNING, logger="finsent.alert_worker"):
        worker.step()
        clock.now += REPORT_EVERY_S
        worker.step()
    lines = [r.getMessage() for r in caplog.records if "came after their window had closed" in r.getMessage()]
    assert len(lines) == 1
    assert "most: source:ny-api (30, up to 4.0 h after its date)" in lines[0]


def test_the_worker_exports_the_model_changes_its_detectors_notice() -> None:
    """Detector.model_changes was counted, logged and never exported."""
    from prometheus_client import CollectorRegistry

    clock = Clock(START)
    registry = CollectorRegistry()
    settings = AlertSettings(window_s=W, allowed_lateness_s=0, keys=["ticker"])
    worker, consumer = start_worker(
        settings, webhook_dispatcher(Receiver(clock), clock), clock, MemoryStateStore(), registry=registry
    )
    for i, window in enumerate(
        by_window(make_events([{"ticker:A": (20, 0.1)}] * 4, window_s=W, start=START))
    ):
        version = "model-a" if i < 2 else "model-b"
        consumer.feed([json.dumps({**labeled_json(e), "model_version": version}).encode() for e in window])
        clock.now = max(e.ts for e in window) + 1
        worker.step()
    assert registry.get_sample_value("finsent_alert_model_changes_total") == 1.0
