"""An idle alert worker does not spin, on every broker. noida-db (the demo's broker) answers an empty fetch
at once instead of holding it for fetch.max.wait.ms, so a worker waiting inside poll() re-fetched in a
loop and took a whole core while the labeled topic was quiet (finsent.poll_wait). What keeps it idle is
checked, not the CPU it uses (a measure of the whole test process, other tests' threads included): once
the group is settled each poll is non-blocking, and the worker waits on its own timer between two polls,
the wait growing to IDLE_WAIT_MAX_S while nothing comes."""

from __future__ import annotations

import threading
from itertools import pairwise

import pytest
from prometheus_client import CollectorRegistry

from alerts.synthetic import make_events
from finsent.alert_worker import IDLE_WAIT_MAX_S, POLL_TIMEOUT_MS, AlertWorker
from tests.pipeline_helpers import alert_worker_settings, wait_for
from tests.servers import create_topic
from tests.test_alerts_worker import produce

PARTITIONS = 3
IDLE_POLLS = 4  # polls watched once the idle wait has grown to its cap

Event = tuple[str, float, bool]  # ("poll", its timeout in ms, whether it brought records) or ("wait", s, _)


class RecordingStop(threading.Event):
    """run()'s stop event, which also notes each wait between two steps in `events`."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events

    def wait(self, timeout: float | None = None) -> bool:
        self.events.append(("wait", -1.0 if timeout is None else timeout, False))
        return super().wait(timeout)


def test_an_idle_worker_does_not_spin_and_still_reads_what_comes(
    broker: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = alert_worker_settings(broker, unique, es_url=None)
    topic = settings.pipeline.labeled_topic
    create_topic(broker, topic, partitions=PARTITIONS)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)
    loop: list[Event] = []
    real_step = worker.step

    def step(timeout_ms: int = POLL_TIMEOUT_MS) -> bool:
        got = real_step(timeout_ms)
        loop.append(("poll", timeout_ms, got))
        return got

    monkeypatch.setattr(worker, "step", step)
    stop = RecordingStop(loop)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(worker.parts) == PARTITIONS, "the partitions to be assigned", timeout_s=60)
        # A spinning worker never waits this long between two polls: the wait would time out.
        wait_for(
            lambda: ("wait", IDLE_WAIT_MAX_S, False) in loop,
            f"an idle wait of {IDLE_WAIT_MAX_S} s between two polls",
            timeout_s=60,
        )
        capped = loop.index(("wait", IDLE_WAIT_MAX_S, False))
        wait_for(
            lambda: sum(e[0] == "poll" for e in loop[capped:]) >= IDLE_POLLS,
            f"{IDLE_POLLS} more polls",
            timeout_s=60,
        )
        idle = list(loop[capped:])
        assert thread.is_alive()
        polls = [e for e in idle if e[0] == "poll"]
        assert polls == [("poll", 0, False)] * len(polls), idle  # non-blocking, and nothing came
        assert all(a[0] != b[0] for a, b in pairwise(idle)), idle  # never two polls without a wait
        assert all(e == ("wait", IDLE_WAIT_MAX_S, False) for e in idle if e[0] == "wait"), idle

        # polling without blocking still reads records as they come
        events = make_events([{"ticker:ACME": (20, 0.1)}], seed=3)
        produce(broker, topic, events)

        def read() -> int:
            return sum(ps.next_offset or 0 for ps in list(worker.parts.values()))

        wait_for(lambda: read() == len(events), "the worker to read the new records", timeout_s=30)
        wait_for(
            lambda: (registry.get_sample_value("finsent_alert_state_save_seconds_count") or 0) > 0,
            "a state save of the new records, timed",
            timeout_s=30,
        )
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_periodic_saves_take_at_most_a_tenth_of_the_time() -> None:
    """A save encodes every key of each changed partition: about 1 s per 10,000 keys (`python
    bench/alert_memory.py`), so with tens of thousands of keys saves every 5 s left no time to read."""
    settings = alert_worker_settings("127.0.0.1:1", "duty", es_url=None)
    worker = AlertWorker(settings, registry=CollectorRegistry())
    interval = settings.alerts.state_interval_s
    assert worker._save_interval_s() == interval
    worker._save_s = interval / 20
    assert worker._save_interval_s() == interval
    worker._save_s = 2.0
    assert worker._save_interval_s() == 20.0
