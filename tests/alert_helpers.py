"""Helpers shared by the detector tests: settings of one-minute windows, and feeding events through."""

from __future__ import annotations

from alerts.config import AlertSettings
from alerts.detector import Detector
from alerts.events import LabeledEvent
from alerts.model import Alert

W = 60
BASE = AlertSettings(window_s=W, allowed_lateness_s=0)


def cfg(**changes: object) -> AlertSettings:
    return AlertSettings(**{**BASE.model_dump(), **changes})


def feed(detector: Detector, events: list[LabeledEvent]) -> list[Alert]:
    """Add the events one by one, advancing after each; the alerts that came out, in order."""
    out: list[Alert] = []
    for e in events:
        detector.add(e)
        out.extend(detector.advance())
    return out
