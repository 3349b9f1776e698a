"""Labeled events whose sentiment labels are not the ones `alerts.negative_label` names (another labeler's
bearish/bullish, or a mismatched override): skipped and counted, not silently taken as not negative."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from alerts.detector import Detector
from alerts.events import InvalidEvent, parse_event
from finsent.alert_worker import AlertWorker, PartitionState
from finsent.demo import Progress
from finsent.settings import Settings
from inference.types import Prediction
from tests.test_alerts_detector import BEARISH_EVENT

EVENT = BEARISH_EVENT


def test_an_event_without_the_negative_label_is_invalid_under_its_own_reason() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(EVENT, "negative")
    assert caught.value.code == "label"
    assert "'negative'" in str(caught.value) and "bearish" in str(caught.value)
    assert parse_event(EVENT, "bearish").negative  # the setting that matches the labeler
    neutral = {**EVENT, "sentiment": "neutral"}
    assert not parse_event(neutral, "bearish").negative
    # the event's own label, or no probabilities to compare with, are taken as they are
    assert parse_event({**EVENT, "sentiment": "negative", "sentiment_probs": {}}, "negative").negative
    assert not parse_event({**EVENT, "sentiment_probs": None}, "negative").negative


def test_the_worker_counts_such_events_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings()
    registry = CollectorRegistry()
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=registry)
    try:
        skipped = {"reason": "label"}
        assert registry.get_sample_value("finsent_alert_events_skipped_total", skipped) == 0
        ps = PartitionState(partition=0, detector=Detector(settings.alerts))
        with caplog.at_level(logging.DEBUG, logger="finsent.alert_worker"):
            for i in range(5):
                event = {**EVENT, "event_id": f"m{i}|ticker:A"}
                assert not worker._count(ps, json.dumps(event).encode(), now=1.7e9, offset=i)
        assert registry.get_sample_value("finsent_alert_events_skipped_total", skipped) == 5
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "negative_label" in warnings[0].getMessage() and "'negative'" in warnings[0].getMessage()
        assert ps.detector.keys == {}
    finally:
        worker.dispatcher.close()


def test_the_demo_counts_the_configured_negative_label() -> None:
    """The demo's "negative mentions" line counts what the alerts count, not the literal "negative"."""
    pred = Prediction("Markets", 0.9, "bearish", 0.8, {}, {"bearish": 0.8, "bullish": 0.2})
    message = SimpleNamespace(text="ACME falls", tickers=["ACME"])
    batch = SimpleNamespace(messages=[message], dead_letters=[])
    progress = Progress(total=1, negative_label="bearish")
    progress.on_batch(batch, SimpleNamespace(predictions=[pred]))  # type: ignore[arg-type]
    assert progress.negatives == {"ACME": 1}
    default = Progress(total=1)
    default.on_batch(batch, SimpleNamespace(predictions=[pred]))  # type: ignore[arg-type]
    assert default.negatives == {}


def test_keys_that_read_as_other_keys_and_times_of_other_shapes_are_refused() -> None:
    """The pipeline never writes them, but the labeled topic takes any producer's records: a zero-width
    space made "AC\\u200bME" an alert of its own that read as ACME's, a bidi override turned a source name
    around in titles, and `fromisoformat` read "2026-W24" as June 8th."""
    from alerts.events import InvalidEvent, parse_event

    base = {"key_type": "ticker", "key": "ACME", "id": "m", "published_at": "2026-06-15T09:30:00Z"}
    base["sentiment"] = "negative"
    for key in ("AC\u200bME", "news\u202eriew", "A\u2028B", "x" * 257):
        with pytest.raises(InvalidEvent) as caught:
            parse_event({**base, "key": key}, "negative")
        assert caught.value.code == "schema", key
    assert parse_event({**base, "key": "x" * 256}, "negative").key == "x" * 256
    for shape in ("2026-W24", "2026-06-15", "20260615", "June 15, 2026"):
        with pytest.raises(InvalidEvent, match="is not an RFC 3339 time"):
            parse_event({**base, "published_at": shape}, "negative")
    for shape, ts in (
        ("2026-06-15 09:30:00", 1781515800.0),  # without a zone: UTC, as documented
        ("2026-06-15t09:30:00z", 1781515800.0),
        ("2026-06-15T15:00:00+05:30", 1781515800.0),
        (1781515800, 1781515800.0),
    ):
        assert parse_event({**base, "published_at": shape}, "negative").ts == ts
