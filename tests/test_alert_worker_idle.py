"""An idle alert worker costs next to no CPU, on every broker. noida-db (the demo's broker) answers an empty
fetch at once instead of holding it for fetch.max.wait.ms, so a worker waiting inside poll() re-fetched in a
loop and took a whole core while the labeled topic was quiet (finsent.poll_wait). The bound is generous:
it guards a spin, not a speed."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from alerts.synthetic import make_events
from finsent.alert_worker import AlertWorker
from tests.pipeline_helpers import alert_worker_settings, wait_for
from tests.servers import create_topic
from tests.test_alerts_worker import produce

PARTITIONS = 3
MEASURE_S = 3.0
MAX_IDLE_CPU = 0.3  # CPU seconds per second; the spin took about one (the whole process, Kafka IO included)


def test_an_idle_worker_does_not_spin_and_still_reads_what_comes(broker: str, unique: str) -> None:
    settings = alert_worker_settings(broker, unique, es_url=None)
    topic = settings.pipeline.labeled_topic
    create_topic(broker, topic, partitions=PARTITIONS)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(worker.parts) == PARTITIONS, "the partitions to be assigned", timeout_s=60)
        time.sleep(1.0)  # past the first steps after the assignment (state read back, offsets looked up)
        cpu, started = time.process_time(), time.monotonic()
        time.sleep(MEASURE_S)
        used = (time.process_time() - cpu) / (time.monotonic() - started)
        assert thread.is_alive()
        assert used < MAX_IDLE_CPU, f"an idle alert worker used {used:.2f} CPU s per s"

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
