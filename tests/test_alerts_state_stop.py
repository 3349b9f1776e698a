"""A state save waits for Kafka's acknowledgement, but not past a stop: with the broker gone, a save under
way when the worker is told to stop ends within about a second, and an unstopped one within its timeout,
so the shutdown (which saves once more) fits the pods' grace period."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from finsent.alert_state import SaveStopped, StateStore, ensure_state_topic
from tests.servers import start_tansu


def test_a_save_with_the_broker_gone_ends_at_the_stop_or_its_timeout(tmp_path: Path) -> None:
    tansu = start_tansu(tmp_path)  # a broker of its own, stopped half-way
    kw = {"bootstrap_servers": tansu.kafka}
    try:
        ensure_state_topic(kw, "state")
        store = StateStore(kw, "state", "labeled")
    except BaseException:
        tansu.server.stop()
        raise
    try:
        store.save({0: {"v": 1}}, timeout_s=20)  # acknowledged while the broker is up
        tansu.server.stop()
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(SaveStopped):
            store.save({0: {"v": 2}}, timeout_s=60, stop=stop)
        assert time.monotonic() - started < 5

        started = time.monotonic()
        with pytest.raises(KafkaTimeoutError):
            store.save({0: {"v": 3}}, timeout_s=2)
        assert time.monotonic() - started < 8
    finally:
        tansu.server.stop()
        with contextlib.suppress(KafkaTimeoutError):  # unsent records: the close gives up after 5 s
            store.close()
