"""What FinsentNotificationsFailing reads besides `finsent_notifications_total{outcome="failed"}`: each
channel's queue and its failures in a row (`finsent_notifications_queued`,
`finsent_notification_consecutive_failures`). The counter counts a stuck alert once, so a receiver down for
an hour raised it once and the alert resolved while nothing got through; the failures in a row stay up for
as long as the receiver fails with notifications waiting, across a restart too (the queue is saved in the
alert state). Receivers are real HTTP servers (tests.servers.Recorder); the dispatcher's clock is virtual."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from alerts.notifiers.dispatch import Backlog, Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.webhook import WebhookNotifier
from alerts.synthetic import make_events
from finsent.alert_metrics import AlertMetrics
from tests.servers import Recorder
from tests.test_alerts_delivery import (
    NORMAL,
    SPIKE,
    START,
    Clock,
    MemoryStateStore,
    Outcomes,
    W,
    alert_settings,
    by_window,
    live,
    start_worker,
)
from tests.test_alerts_notifiers import make_alert

DOWN = [503] * 1000  # statuses of a receiver that is down until its list is cleared


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def webhook(
    client: httpx.Client,
    recorder: Recorder,
    clock: Clock,
    outcomes: Outcomes | None = None,
    *,
    burst: int = 10,
    digest_min: int = 3,
) -> Dispatcher:
    channel = Channel(WebhookNotifier(client, recorder.url), TokenBucket(600, burst))
    return Dispatcher(
        [channel],
        retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=10.0),
        digest_min=digest_min,
        clock=clock,
        on_outcome=outcomes,
    )


def gauges(registry: CollectorRegistry, channel: str = "webhook") -> tuple[float | None, float | None]:
    labels = {"channel": channel}
    return (
        registry.get_sample_value("finsent_notifications_queued", labels),
        registry.get_sample_value("finsent_notification_consecutive_failures", labels),
    )


def test_a_receiver_down_for_an_hour_keeps_failing_in_the_gauge_not_in_the_counter(
    client: httpx.Client, recorder: Recorder
) -> None:
    """The reviewer's case: the counter says `failed` once and stays flat; the gauge counts every failed
    try for the whole hour and goes back to 0 with the first delivery."""
    recorder.statuses = list(DOWN)
    registry, clock, outcomes = CollectorRegistry(), Clock(), Outcomes()
    metrics = AlertMetrics(registry)
    d = webhook(client, recorder, clock, outcomes)
    d.on_outcome = metrics.notification
    metrics.init_channels(["webhook"])
    assert gauges(registry) == (0.0, 0.0)  # a series from the start, for max by (job, channel)

    d.notify([make_alert("A"), make_alert("B", "resolved")])
    metrics.set_backlog(d.backlog())
    assert gauges(registry) == (2.0, 1.0)
    seen = [1.0]
    while clock.now < 1_000_000.0 + 3600:
        clock.now += 30.0  # the worker flushes at every step; the backoff lets one try through
        d.flush()
        metrics.set_backlog(d.backlog())
        seen.append(gauges(registry)[1] or 0.0)
    assert seen == sorted(seen) and seen[-1] == 1 + 3600 / 30  # rose for the whole hour
    assert gauges(registry)[0] == 2.0 and recorder.bodies == []
    failed = {"channel": "webhook", "outcome": "failed"}
    # only the head of the queue is tried, and counted once: the counter stood still for the hour
    assert registry.get_sample_value("finsent_notifications_total", failed) == 1.0

    recorder.statuses.clear()  # back
    clock.now += 30.0
    d.flush()
    metrics.set_backlog(d.backlog())
    assert gauges(registry) == (0.0, 0.0)
    assert len(recorder.bodies) == 2
    assert registry.get_sample_value("finsent_notifications_total", failed) == 1.0
    sent = {"channel": "webhook", "outcome": "sent"}
    assert registry.get_sample_value("finsent_notifications_total", sent) == 2.0


def test_a_rate_limited_queue_is_queued_but_not_failing(client: httpx.Client, recorder: Recorder) -> None:
    """A backlog drained at the rate limit is no outage: FinsentNotificationsFailing must not fire on it."""
    clock = Clock()
    d = webhook(client, recorder, clock, burst=1, digest_min=100)
    d.notify([make_alert("A"), make_alert("B"), make_alert("C")])
    assert len(recorder.bodies) == 1
    assert d.backlog() == {"webhook": Backlog(queued=2, failures=0)}
    for _ in range(2):
        clock.now += 6.0  # a token every 0.1 s, one saved up at most: one message per flush
        d.flush()
    assert d.backlog() == {"webhook": Backlog(queued=0, failures=0)} and len(recorder.bodies) == 3


def test_failures_count_only_while_something_waits(client: httpx.Client, recorder: Recorder) -> None:
    """A queue handed over with its partitions (the next owner exports it), or one emptied by a permanent
    failure (counted `failed`), leaves no outage behind that would keep the alert firing for ever."""
    clock = Clock()
    recorder.statuses = list(DOWN)
    d = webhook(client, recorder, clock)
    d.notify([make_alert("A")])
    clock.now += 1.0
    d.flush()
    assert d.backlog() == {"webhook": Backlog(queued=1, failures=2)}
    assert d.drop_pending(lambda a: True) == 1
    assert d.backlog() == {"webhook": Backlog(queued=0, failures=0)}

    d.notify([make_alert("B")])
    clock.now += 10.0
    d.flush()  # still down
    assert d.backlog() == {"webhook": Backlog(queued=1, failures=3)}
    recorder.statuses = [404]  # then refused for good: dropped
    clock.now += 10.0
    d.flush()
    assert d.backlog() == {"webhook": Backlog(queued=0, failures=0)} and d.pending() == 0


def test_the_worker_exports_its_queue_and_failures_across_a_restart(
    client: httpx.Client, recorder: Recorder
) -> None:
    """The queue is saved in the alert state: a restarted worker exports it again from its first step,
    and its failures from its first try; both go back to 0 once the receiver takes the alerts."""
    recorder.statuses = list(DOWN)
    clock, store = Clock(START), MemoryStateStore()
    registry = CollectorRegistry()
    worker, consumer = start_worker(
        alert_settings(), webhook(client, recorder, clock), clock, store, registry=registry
    )
    assert gauges(registry) == (0.0, 0.0)
    events = make_events([NORMAL] * 60 + [SPIKE] * 2 + [NORMAL] * 3, window_s=W, start=START, seed=4)
    live(worker, consumer, clock, by_window(events))
    queued, failures = gauges(registry)
    assert queued == 1.0 and failures is not None and failures >= 3  # the firing alert, tried each step
    assert recorder.bodies == []

    restarted_registry = CollectorRegistry()  # a new process
    restarted, _ = start_worker(
        alert_settings(), webhook(client, recorder, clock), clock, store, registry=restarted_registry
    )
    clock.now += W
    restarted.step()
    assert gauges(restarted_registry) == (1.0, 1.0)  # restored, and its first try failed
    clock.now += W
    restarted.step()
    assert gauges(restarted_registry) == (1.0, 2.0)

    recorder.statuses.clear()
    clock.now += W
    restarted.step()
    assert gauges(restarted_registry) == (0.0, 0.0)
    assert [a["key"] for body in recorder.json() for a in body["alerts"]] == ["A"]  # type: ignore[index]


def test_a_channel_with_outcomes_exports_its_queue_even_before_the_first_backlog() -> None:
    registry = CollectorRegistry()
    metrics = AlertMetrics(registry)
    assert gauges(registry, "slack") == (None, None)
    metrics.notification("slack", "sent", 1)
    assert gauges(registry, "slack") == (0.0, 0.0)
    metrics.set_backlog({"slack": Backlog(queued=4, failures=2)})
    metrics.notification("slack", "failed", 1)  # does not reset what the dispatcher said
    assert gauges(registry, "slack") == (4.0, 2.0)
