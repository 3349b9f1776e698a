"""The alert worker's Prometheus metrics, on a registry passed in (names fixed in docs/CONTRACTS.md)."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from alerts.detector import KEY_CAP
from alerts.model import SEVERITY_RANK, Alert
from finsent.metrics import consumer_lag

if TYPE_CHECKING:
    from alerts.notifiers.dispatch import Backlog

NOTIFICATION_OUTCOMES = ("sent", "failed", "rate_limited")
SKIP_REASONS = (
    "late",
    "duplicate",
    "repeated",
    "ignored",
    "schema",
    "not_object",
    "invalid_json",
    "invalid_watermark",
    "window_resized",
    "label",
    KEY_CAP,
)


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "finsent_alert_events", "Labeled events counted by the detector.", registry=registry
        )
        self.events_skipped = Counter(
            "finsent_alert_events_skipped",
            "Labeled events not counted: late, duplicate, repeated (a text counted already for the key "
            "and window), ignored (key type off), invalid, labels without "
            "alerts.negative_label (label), new keys past an open window's cap (key_cap), or in open "
            "windows dropped at a restore with another alerts.window_s (window_resized).",
            ["reason"],
            registry=registry,
        )
        self.fired = Counter(
            "finsent_alerts_fired",
            "Alerts that started firing.",
            ["rule", "key_type", "severity"],
            registry=registry,
        )
        self.escalated = Counter(
            "finsent_alerts_escalated",
            "Firing alerts whose episode rose to critical (each notified again at its new severity).",
            ["rule", "key_type"],
            registry=registry,
        )
        self.resolved = Counter(
            "finsent_alerts_resolved", "Alerts resolved.", ["rule", "key_type"], registry=registry
        )
        self.firing = Gauge(
            "finsent_alerts_firing", "Alerts firing now.", ["rule", "key_type"], registry=registry
        )
        self.notifications = Counter(
            "finsent_notifications",
            "Notification deliveries per channel (alerts, not messages).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.notifications_queued = Gauge(
            "finsent_notifications_queued",
            "Alerts waiting in each channel's notification queue: rate-limited, or retried while the "
            "receiver fails (saved in the alert state: restored at a restart, handed over with their "
            "partitions).",
            ["channel"],
            registry=registry,
        )
        self.notification_failures = Gauge(
            "finsent_notification_consecutive_failures",
            "Transient failures in a row of each channel while notifications (or Alertmanager's re-sends) "
            "wait for it; 0 once one gets through, or when nothing waits. Stays up for as long as the "
            "receiver fails, whereas finsent_notifications_total counts each stuck alert failed once.",
            ["channel"],
            registry=registry,
        )
        self.output_errors = Counter(
            "finsent_alert_output_errors",
            "Failed writes of alert state or alert documents.",
            ["output"],
            registry=registry,
        )
        self.state_save = Histogram(
            "finsent_alert_state_save_seconds",
            "Time of one save of the alert state (every changed partition's record built, compressed and "
            "acknowledged): it grows with the keys kept, and the periodic saves are spaced to take at "
            "most a tenth of the worker's time.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.keys_evicted = Counter(
            "finsent_alert_keys_evicted",
            "Keys (tickers, topics, ...) whose history was forgotten after alerts.key_ttl_windows idle "
            "windows, or past alerts.max_keys per partition: what bounds the detector's state.",
            registry=registry,
        )
        self.model_changes = Counter(
            "finsent_alert_model_changes",
            "Model changes the detectors noticed in the labeled events' model_version, per partition "
            "owned: with alerts.model_change relearn, each made that partition's keys re-learn their "
            "baselines (no alert from them for alerts.warmup_windows windows).",
            registry=registry,
        )
        self.labeled_until = Gauge(
            "finsent_alert_input_labeled_until_seconds",
            "Per labeled partition owned: until when the labelers' watermarks say the whole input is "
            "labeled (Unix time; 0 while unknown). Idle event time does not move past it "
            "(alerts.idle_clock: labeler).",
            ["partition"],
            registry=registry,
        )
        self.lag = consumer_lag(registry)
        self._firing_labels: set[tuple[str, str]] = set()
        self._channels: set[str] = set()  # channels whose series exist
        # Zeroes from the start, so that rates and increase() see the first skip or error.
        for reason in SKIP_REASONS:
            self.events_skipped.labels(reason)
        for output in ("kafka", "elasticsearch"):
            self.output_errors.labels(output)

    def init_rules(self, rules: Iterable[str], key_types: Iterable[str]) -> None:
        """Export zeroes for every rule and key type the worker watches, at its start: the first alert of a
        (rule, key type) was otherwise the series' first sample, which increase() does not count."""
        key_types = tuple(key_types)
        for rule in rules:
            for key_type in key_types:
                self._key_type_seen((rule, key_type))

    def transition(self, alert: Alert) -> None:
        self._key_type_seen((alert.rule, alert.key_type))
        if alert.escalation:
            self.escalated.labels(alert.rule, alert.key_type).inc()
        elif alert.status == "firing":
            self.fired.labels(alert.rule, alert.key_type, alert.severity).inc()
        else:
            self.resolved.labels(alert.rule, alert.key_type).inc()

    def set_firing(self, alerts: Iterable[Alert]) -> None:
        counts = Tally((a.rule, a.key_type) for a in alerts)
        for labels in self._firing_labels - set(counts):
            self.firing.labels(*labels).set(0)
        for labels, n in counts.items():
            self._key_type_seen(labels)
            self.firing.labels(*labels).set(n)

    def _key_type_seen(self, labels: tuple[str, str]) -> None:
        """Once a (rule, key type) has alerted (or a restored state holds its alerts), its firing gauge,
        fires of each severity, escalations and resolves exist at 0: increase() misses the first increment
        of a new series."""
        if labels in self._firing_labels:
            return
        self._firing_labels.add(labels)
        self.firing.labels(*labels).set(0)
        for severity in SEVERITY_RANK:
            self.fired.labels(*labels, severity)
        self.escalated.labels(*labels)
        self.resolved.labels(*labels)

    def set_labeled_until(self, partition: int, until: float) -> None:
        self.labeled_until.labels(str(partition)).set(until)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def forget_partition(self, partition: int, topic: str) -> None:
        with contextlib.suppress(KeyError):
            self.labeled_until.remove(str(partition))
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))

    def init_channels(self, channels: Iterable[str]) -> None:
        """Export zeroes for every channel and outcome, and for its queue and failures in a row:
        `increase()` misses a counter's first increment when its series only appears with it, so a
        channel's first failure would not alert."""
        for channel in channels:
            self._channels.add(channel)
            for outcome in NOTIFICATION_OUTCOMES:
                self.notifications.labels(channel, outcome)
            self.notifications_queued.labels(channel).set(0)
            self.notification_failures.labels(channel).set(0)

    def notification(self, channel: str, outcome: str, n: int) -> None:
        if channel not in self._channels:  # a channel with outcomes has a queue (0 until told otherwise)
            self.init_channels([channel])
        self.notifications.labels(channel, outcome).inc(n)

    def set_backlog(self, backlog: Mapping[str, Backlog]) -> None:
        """Each channel's queue and failures in a row, from the dispatcher (after each flush)."""
        for channel, state in backlog.items():
            self._channels.add(channel)
            self.notifications_queued.labels(channel).set(state.queued)
            self.notification_failures.labels(channel).set(state.failures)
