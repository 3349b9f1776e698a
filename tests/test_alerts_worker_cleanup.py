"""The alert worker closes what it opened, however its run ends: `finsent run` starts a new worker after
each failure (`supervise`), so a producer, consumer, Elasticsearch or HTTP client left open by a failed
set-up would pile up, one more per restart. Against the real brokers; Kafka clients are seen by their IO
threads (kafka-python names them `kafka-io-<client id>` and `<client id>-network-thread`)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from alerts.notifiers.dispatch import Channel, Dispatcher, TokenBucket
from alerts.notifiers.webhook import WebhookNotifier
from finsent.alert_metrics import AlertMetrics
from finsent.alert_worker import AlertWorker
from finsent.app import supervise
from finsent.settings import Settings
from tests.pipeline_helpers import alert_worker_settings, wait_for
from tests.servers import create_topic

MALFORMED_ES_URL = "http://127.0.0.1:92OO"  # a typo in the port: make_client refuses it
ILLEGAL_TOPIC = "finsent labeled"  # a space: kafka-python refuses to subscribe to it


def worker_settings(broker: str, unique: str, *, es_url: str | None, labeled_topic: str = "") -> Settings:
    """A worker with an HTTP channel (so the dispatcher it builds holds an httpx client)."""
    hook = {"notifiers": {"webhook": {"enabled": True, "url": "http://127.0.0.1:9/hook"}}}
    if labeled_topic == ILLEGAL_TOPIC:
        # The settings refuse this name too; put past them (model_copy does not validate), it fails the
        # subscription, after the consumer exists: the step that test needs to fail.
        settings = alert_worker_settings(broker, unique, es_url=es_url, alerts=hook)
        pipeline = settings.pipeline.model_copy(update={"labeled_topic": ILLEGAL_TOPIC})
        return settings.model_copy(update={"pipeline": pipeline})
    if es_url != MALFORMED_ES_URL:
        return alert_worker_settings(broker, unique, es_url=es_url, labeled_topic=labeled_topic, alerts=hook)
    # The settings refuse this URL; put past them (model_copy does not validate), it still fails the
    # set-up at make_client, after the state store exists: the step these tests need to fail.
    settings = alert_worker_settings(
        broker, unique, es_url="http://127.0.0.1:9200", labeled_topic=labeled_topic, alerts=hook
    )
    es = settings.elasticsearch.model_copy(update={"url": MALFORMED_ES_URL})
    return settings.model_copy(update={"elasticsearch": es})


def kafka_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t.name.startswith("kafka-io-") or t.name.endswith("-network-thread")
    }


def assert_no_new_kafka_threads(before: set[threading.Thread]) -> None:
    """Closing joins the IO threads; a short wait covers a thread that is just returning."""
    deadline = time.monotonic() + 5
    while (new := kafka_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not new, sorted(t.name for t in new)


def http_clients(worker: AlertWorker) -> list[httpx.Client]:
    return [
        c
        for ch in worker.dispatcher.channels
        if isinstance(c := getattr(ch.notifier, "client", None), httpx.Client)
    ]


def connections_to(url: str) -> set[str]:
    """This process's established TCP connections to the port of `url`, by socket inode (Linux: /proc).
    Tests compare sets, not counts: a connection an earlier test left, closing meanwhile, would hide a
    new one in a count."""
    port = urlsplit(url).port
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    found: set[str] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and f"socket:[{fields[9]}]" in sockets:
                    found.add(fields[9])
    return found


def test_a_set_up_failing_after_the_state_store_closes_it(broker: str, unique: str) -> None:
    """A malformed Elasticsearch URL fails the set-up after the state store's producer started: run()
    raises, and neither the producer's threads nor the notifiers' HTTP client are left open."""
    before = kafka_threads()
    worker = AlertWorker(
        worker_settings(broker, unique, es_url=MALFORMED_ES_URL), registry=CollectorRegistry()
    )
    with pytest.raises(ValueError, match="URL"):
        worker.run(threading.Event())
    assert worker.store.producer is not None, "the failure came after the store was created"
    assert_no_new_kafka_threads(before)
    clients = http_clients(worker)
    assert clients and all(c.is_closed for c in clients)


def test_a_set_up_failing_after_the_consumer_closes_everything(broker: str, es_url: str, unique: str) -> None:
    """A labeled topic Kafka cannot have fails the subscription, after the store, the Elasticsearch client
    and the consumer were created: all of them are closed."""
    before = kafka_threads()
    es_before = connections_to(es_url)
    settings = worker_settings(broker, unique, es_url=es_url, labeled_topic=ILLEGAL_TOPIC)
    worker = AlertWorker(settings, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="illegal"):
        worker.run(threading.Event())
    assert worker.consumer is not None and worker.index is not None, "the failure came after both"
    assert_no_new_kafka_threads(before)
    assert not connections_to(es_url) - es_before
    assert all(c.is_closed for c in http_clients(worker))


def test_a_worker_that_stops_closes_its_clients(broker: str, es_url: str, unique: str) -> None:
    """The normal end: after a stop, the consumer, the state store, the Elasticsearch client (whose
    connection was open while it ran) and the notifiers' HTTP client are closed."""
    settings = worker_settings(broker, unique, es_url=es_url)
    create_topic(broker, settings.pipeline.labeled_topic, 1)
    before = kafka_threads()
    es_before = connections_to(es_url)
    worker = AlertWorker(settings, registry=CollectorRegistry())
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:
            errors.append(exc)

    loop = threading.Thread(target=target, daemon=True)
    loop.start()
    try:
        wait_for(lambda: worker.last_poll > 0, "the worker polling", 60)
        assert kafka_threads() - before, "its clients run IO threads"
        assert connections_to(es_url) - es_before, (
            "the alerts index was prepared over a kept-alive connection"
        )
    finally:
        stop.set()
        loop.join(timeout=60)
    assert not loop.is_alive() and not errors, errors
    assert_no_new_kafka_threads(before)
    assert not connections_to(es_url) - es_before
    assert all(c.is_closed for c in http_clients(worker))


def test_a_dispatcher_given_by_the_caller_stays_open(broker: str, unique: str) -> None:
    """The caller owns the dispatcher it passes in (and may pass it to the next worker)."""
    client = httpx.Client()
    dispatcher = Dispatcher([Channel(WebhookNotifier(client, "http://127.0.0.1:9/hook"), TokenBucket(60, 5))])
    settings = worker_settings(broker, unique, es_url=MALFORMED_ES_URL)
    worker = AlertWorker(settings, registry=CollectorRegistry(), dispatcher=dispatcher)
    try:
        with pytest.raises(ValueError, match="URL"):
            worker.run(threading.Event())
        assert not client.is_closed
    finally:
        client.close()


def test_restarts_after_failed_set_ups_do_not_pile_up_threads(broker: str, unique: str) -> None:
    """`finsent run`'s supervision of a worker that fails at every start: each failed set-up closes its
    producer, so the Kafka threads are as many after five starts as before."""
    settings = worker_settings(broker, unique, es_url=MALFORMED_ES_URL)
    stop = threading.Event()
    metrics = AlertMetrics(CollectorRegistry())
    starts: list[Any] = []

    def once() -> None:
        starts.append(None)
        if len(starts) == 5:
            stop.set()  # this start fails too; supervise then returns instead of waiting to restart
        AlertWorker(settings, metrics=metrics).run(stop)

    before = kafka_threads()
    supervise(once, stop, first_delay_s=0.01, max_delay_s=0.05)
    assert len(starts) == 5
    assert_no_new_kafka_threads(before)
