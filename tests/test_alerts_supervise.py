"""`finsent run`'s in-process alert worker is started again after a failure, with a growing delay, and
never after a stop: labeling must not go on with alerting silently gone. While it waits to be restarted it
is not stuck: `finsent run`'s liveness holds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import pytest
from kafka.errors import TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from finsent.alert_worker import AlertWorker
from finsent.app import alert_worker_thread, labeler_liveness, supervise
from finsent.health import LoopHolder
from finsent.settings import Settings


def test_a_failing_worker_is_run_again_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    calls: list[int] = []

    def run() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise TopicAuthorizationFailedError("alert state topic")
        if len(calls) < 4:
            raise RuntimeError("boom")
        stop.set()  # the fourth run lasts until the stop

    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="finsent.app"):
        supervise(run, stop, first_delay_s=0.05, max_delay_s=0.15)
    waited = time.monotonic() - started
    assert calls == [0, 1, 2, 3]
    assert "the alert worker failed (TopicAuthorizationFailedError" in caplog.text
    assert "RuntimeError: boom" in caplog.text  # other failures with their traceback
    assert caplog.text.count("restarting the alert worker") == 3
    assert waited >= 0.05 + 0.1 + 0.15  # doubling, capped


def test_no_restart_once_stopped() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def run() -> None:
        calls.append(1)
        stop.set()
        raise RuntimeError("failed while stopping")

    supervise(run, stop, first_delay_s=10.0)  # returns at once: no wait, no second run
    assert calls == [1]


def test_the_thread_exists_only_when_alerting_is_on() -> None:
    stop = threading.Event()
    assert alert_worker_thread(Settings(alerts={"enabled": False}), stop, CollectorRegistry()) is None
    thread = alert_worker_thread(Settings(), stop, CollectorRegistry())
    assert thread is not None and thread.name == "finsent-alerts" and not thread.is_alive()


class ProbeAtRestartWait(logging.Handler):
    """Runs the probe when `supervise` says it waits to restart the worker: inside the restart window."""

    def __init__(self, probe: Callable[[], Mapping[str, bool]]) -> None:
        super().__init__()
        self.probe = probe
        self.results: list[dict[str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("the pipeline goes on; restarting the alert worker"):
            self.results.append(dict(self.probe()))


def test_a_worker_waiting_to_be_restarted_is_alive() -> None:
    """A worker that polled, then failed: nothing polls until `supervise` starts the next one (the wait
    doubles up to ALERT_RESTART_MAX_S), yet it is being restarted, not stuck, so `finsent run` stays alive
    then; while a stalled worker runs, it does not."""
    settings = Settings(kafka={"max_poll_interval_ms": 60_000})
    alert_loop = LoopHolder()
    alive = labeler_liveness(settings, lambda: None, alert_loop)
    stalled = {"consume_loop": True, "alert_consume_loop": False}
    stop = threading.Event()
    while_running: list[dict[str, bool]] = []

    def run() -> None:
        worker = AlertWorker(settings, registry=CollectorRegistry())  # never run: its last poll set by hand
        worker.last_poll = time.monotonic() - 61  # longer ago than max.poll.interval
        with alert_loop.running(worker):
            while_running.append(dict(alive()))
            if len(while_running) == 3:
                stop.set()
                return
            raise RuntimeError("boom")

    handler = ProbeAtRestartWait(alive)
    log = logging.getLogger("finsent.app")
    log.addHandler(handler)
    try:
        supervise(run, stop, first_delay_s=0.01, max_delay_s=0.02)
    finally:
        log.removeHandler(handler)
    assert while_running == [stalled] * 3
    assert handler.results == [{"consume_loop": True, "alert_consume_loop": True}] * 2
