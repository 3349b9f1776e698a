"""`finsent run`'s in-process alert worker is started again after a failure, with a growing delay, and
never after a stop: labeling must not go on with alerting silently gone."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kafka.errors import TopicAuthorizationFailedError
from prometheus_client import CollectorRegistry

from finsent.app import alert_worker_thread, supervise
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
