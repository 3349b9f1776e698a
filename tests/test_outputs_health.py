"""The metrics + health HTTP server: /metrics, /healthz, /readyz (503 until every check passes), the
labeler's probes on a real pipeline: ready and alive through an Elasticsearch outage (and a rebalance
during one, whose revoke holds poll() for `shutdown_timeout_s`), unready (and alive) until it has started,
not alive once its consume loop stops polling, nor once the alert worker running in it does; and the alert
worker's probes, which allow a step as long as max.poll.interval (it blocks on the state topic and on
Elasticsearch)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from alerts.events import LabeledEvent
from alerts.synthetic import make_events
from finsent.alert_worker import AlertWorker
from finsent.app import (
    LABELER_READY_WITHIN_S,
    alert_worker_thread,
    build_runner,
    labeler_liveness,
    labeler_ready_within_s,
    run_pipeline,
)
from finsent.commands.alerting import start_health_server
from finsent.health import HealthServer, LoopHolder, loop_liveness, loop_readiness
from finsent.metrics import PipelineMetrics
from finsent.runner import make_consumer
from finsent.settings import Settings
from inference.types import Labeler
from ingest.message import ERROR_CODES
from tests.pipeline_helpers import (
    ForwardingProxy,
    alert_worker_settings,
    committed,
    make_settings,
    publish,
    real_labeler,
    reply,
    topics,
    valid_message,
    wait_for,
)
from tests.servers import Noida, create_topic, free_port
from tests.test_alerts_worker import produce
from tests.test_pipeline_e2e import Worker

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)


def test_health_endpoints() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, ["ACME"])
    metrics.model_info.labels(version="v1", device="cpu", variant="int8").set(1)
    metrics.consumed.labels(source="news").inc(3)
    metrics.ticker_labels.labels(ticker=metrics.ticker_label("ZZZ"), sentiment="negative").inc()
    state = {"kafka": False, "model_loaded": True}
    server = HealthServer(registry, lambda: state, "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "checks": state}
        state["kafka"] = True
        assert httpx.get(f"{base}/readyz").status_code == 200
        body = httpx.get(f"{base}/metrics").text
        for name in (
            "finsent_messages_consumed_total",
            "finsent_model_info",
            "finsent_batch_size_messages_bucket",
            "finsent_inference_seconds_bucket",
            "finsent_label_confidence_bucket",
            "finsent_output_errors_total",
            "finsent_last_batch_timestamp_seconds",
        ):
            assert name in body, name
        assert 'finsent_messages_consumed_total{source="news"} 3.0' in body
        assert 'finsent_ticker_labels_total{sentiment="negative",ticker="other"} 1.0' in body
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


def test_counters_rules_take_a_rate_of_exist_at_zero_from_the_start() -> None:
    # increase() misses a series' first increment: a first burst of a dead-letter reason, or a tracked
    # ticker's first negatives, would never count towards an alert if the series began with it
    registry = CollectorRegistry()
    PipelineMetrics(
        registry, ["acme"], ("negative", "neutral", "positive"), ("Earnings", "M&A | Investments")
    )
    for topic in ("Earnings", "M&A | Investments"):  # what the topic spike rule takes increase() of
        for sentiment in ("negative", "neutral", "positive"):
            labels = {"topic": topic, "sentiment": sentiment}
            assert registry.get_sample_value("finsent_labels_total", labels) == 0.0
    for reason in ERROR_CODES:
        assert registry.get_sample_value("finsent_messages_dead_lettered_total", {"reason": reason}) == 0.0
    for sentiment in ("negative", "neutral", "positive"):
        labels = {"ticker": "ACME", "sentiment": sentiment}
        assert registry.get_sample_value("finsent_ticker_labels_total", labels) == 0.0
    assert (
        registry.get_sample_value("finsent_ticker_labels_total", {"ticker": "other", "sentiment": "negative"})
        is None
    )


def test_failing_readiness_check_is_not_ready() -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = HealthServer(CollectorRegistry(), broken, "127.0.0.1", 0).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/readyz").status_code == 503
    finally:
        server.stop()


def test_a_client_that_never_finishes_its_request_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection holds a thread: one that sends half a request must not hold it for ever."""
    import socket

    import finsent.health

    monkeypatch.setattr(finsent.health, "CLIENT_TIMEOUT_S", 0.3)
    server = HealthServer(CollectorRegistry(), dict, "127.0.0.1", 0).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the blank line that ends the request
            assert s.recv(1024) == b""  # closed by the server, not by our 10 s timeout
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
    finally:
        server.stop()


def test_liveness_checks_answer_healthz() -> None:
    """Without a liveness check /healthz is 200 while the server runs; with one, 503 names what failed."""
    state = {"consume_loop": True}
    server = HealthServer(CollectorRegistry(), dict, "127.0.0.1", 0, liveness=lambda: state).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        r = httpx.get(f"{base}/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        state["consume_loop"] = False
        r = httpx.get(f"{base}/healthz")
        assert r.status_code == 503 and r.json() == {"alive": False, "checks": {"consume_loop": False}}
        assert httpx.get(f"{base}/readyz").status_code == 200, "readiness is its own check"
    finally:
        server.stop()


def test_failing_liveness_check_is_not_alive() -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = HealthServer(CollectorRegistry(), dict, "127.0.0.1", 0, liveness=broken).start()
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
        assert r.status_code == 503 and r.json()["checks"] == {"liveness_check": False}
    finally:
        server.stop()


# ---- the labeler's probes on a real pipeline (noida-db: Kafka and the Elasticsearch API) -----------------


class OutageProxy(ForwardingProxy):
    """Every request answered 503 while `down` is set: Elasticsearch unreachable as a whole (ping, index
    setup and `_bulk` alike)."""

    def __init__(self, target: str) -> None:
        self.down = threading.Event()
        self.refused = 0
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if not self.down.is_set():
            return False
        self.refused += 1
        reply(handler, 503)
        return True


@pytest.fixture
def proxy(noida: Noida) -> Iterator[OutageProxy]:
    p = OutageProxy(noida.es_url)
    yield p
    p.close()


def probe(port: int, path: str) -> tuple[int, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return r.status_code, (r.text if r.text == "ok\n" else json.loads(r.text))


def output_errors(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next(
        x for x in text.splitlines() if x.startswith('finsent_output_errors_total{output="elasticsearch"}')
    )
    return float(line.rsplit(" ", 1)[1])


READY = (200, {"ready": True, "checks": {"started": True, "consuming": True}})
ALIVE = (200, "ok\n")


def test_labeler_stays_ready_and_alive_while_elasticsearch_is_down(
    noida: Noida, proxy: OutageProxy, unique: str, labeler: Labeler
) -> None:
    """The regression: /readyz used to turn 503 on every labeler at once while Elasticsearch was down, so
    the PodDisruptionBudget allowed no eviction and node drains hung for the whole outage. The outage shows
    in finsent_output_errors_total (the FinsentOutputErrors alert) instead."""
    t = topics(unique)
    create_topic(noida.kafka, t.raw, 2)
    create_topic(noida.kafka, t.labeled, 1)
    create_topic(noida.kafka, t.dead, 1)
    port = free_port()
    settings = make_settings(noida.kafka, proxy.url, t, metrics_port=port, batch_max_messages=8)
    worker = Worker(settings, labeler)
    try:
        first = [valid_message(i) for i in range(10)]
        publish(noida.kafka, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(first)])
        wait_for(lambda: committed(noida.kafka, t.group, t.raw, 2) == {0: 5, 1: 5}, "first commits", 60)
        assert probe(port, "/readyz") == READY and probe(port, "/healthz") == ALIVE

        proxy.down.set()
        rest = [valid_message(i) for i in range(10, 50)]
        publish(noida.kafka, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(rest)])
        wait_for(lambda: proxy.refused >= 3 and output_errors(port) >= 2, "Elasticsearch writes failing", 30)
        assert httpx.get(proxy.url, timeout=5).status_code == 503, "Elasticsearch is not down"
        for _ in range(8):  # through several of the sink's retries, and the readiness window of polls
            assert probe(port, "/readyz") == READY
            assert probe(port, "/healthz") == ALIVE
            worker.stop.wait(0.5)
        assert committed(noida.kafka, t.group, t.raw, 2) == {0: 5, 1: 5}, "committed while it was down"

        proxy.down.clear()
        wait_for(lambda: committed(noida.kafka, t.group, t.raw, 2) == {0: 25, 1: 25}, "catch-up", 90)
        assert probe(port, "/readyz") == READY
        worker.close()
    finally:
        worker.stop.set()


def test_the_labelers_readiness_window_covers_a_revoke_waiting_for_its_batches() -> None:
    assert labeler_ready_within_s(Settings()) == 30 + LABELER_READY_WITHIN_S  # shutdown_timeout_s: 30
    assert labeler_ready_within_s(Settings(pipeline={"shutdown_timeout_s": 5})) == 5 + LABELER_READY_WITHIN_S


class GroupMember:
    """A second consumer of the labelers' group, polling in a thread: joining it rebalances the group."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = make_consumer(settings)
        self.consumer.subscribe(list(settings.pipeline.input_topics))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            try:
                self.consumer.poll(timeout_ms=200)
            except Exception:  # noida leaves a member joining during a slow revoke out of that generation
                self.done.wait(0.2)  # (an empty assignment kafka-python cannot decode): it joins the next

    def assigned(self) -> bool:
        return bool(self.consumer.assignment())

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        self.consumer.close(autocommit=False)


def test_labeler_stays_ready_through_a_rebalance_while_elasticsearch_is_down(
    noida: Noida, proxy: OutageProxy, unique: str, labeler: Labeler, caplog: pytest.LogCaptureFixture
) -> None:
    """During an Elasticsearch outage a rebalance holds the labeler's poll() while its revoke waits
    `shutdown_timeout_s` for in-flight batches that cannot finish (here 10 s: a little longer than the
    10 s the loop otherwise polls within): the readiness window covers it, so the labelers do not all
    turn unready at each rebalance of an outage and block node drains. Then every partition is read to
    its end (one kept paused across the rebalances once stopped for good: kafka-python's parking)."""
    t = topics(unique)
    create_topic(noida.kafka, t.raw, 2)
    create_topic(noida.kafka, t.labeled, 1)
    create_topic(noida.kafka, t.dead, 1)
    port = free_port()
    settings = make_settings(
        noida.kafka, proxy.url, t, metrics_port=port, batch_max_messages=8, shutdown_timeout_s=10
    )
    worker = Worker(settings, labeler)
    member: GroupMember | None = None
    try:
        first = [valid_message(i) for i in range(10)]
        publish(noida.kafka, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(first)])
        wait_for(lambda: committed(noida.kafka, t.group, t.raw, 2) == {0: 5, 1: 5}, "first commits", 60)
        proxy.down.set()
        rest = [valid_message(i) for i in range(10, 50)]
        publish(noida.kafka, t.raw, [(i % 2, None, json.dumps(m).encode()) for i, m in enumerate(rest)])
        wait_for(lambda: proxy.refused >= 3 and output_errors(port) >= 2, "batches held by the outage", 30)

        with caplog.at_level(logging.INFO, logger="finsent.runner"):
            member = GroupMember(settings)
            deadline = time.monotonic() + 90
            while not member.assigned():  # the revoke has waited for the batches, then dropped them
                assert probe(port, "/readyz") == READY, "unready during the rebalance"
                assert time.monotonic() < deadline, "the rebalance did not finish"
                worker.stop.wait(0.5)
        assert probe(port, "/readyz") == READY and probe(port, "/healthz") == ALIVE
        revoked = [r.created for r in caplog.records if r.getMessage().startswith("partitions revoked")]
        dropped = [r.created for r in caplog.records if "unfinished batches uncommitted" in r.getMessage()]
        assert dropped, "no batch was in flight at the revoke"
        held = dropped[0] - max(at for at in revoked if at <= dropped[0])
        assert held > LABELER_READY_WITHIN_S, f"poll() was held {held:.1f} s only"

        member.close()
        member = None
        proxy.down.clear()
        wait_for(lambda: committed(noida.kafka, t.group, t.raw, 2) == {0: 25, 1: 25}, "catch-up", 90)
        worker.close()
    finally:
        if member is not None:
            member.close()
        worker.stop.set()


def test_labeler_is_unready_but_alive_until_it_has_started(
    noida: Noida, proxy: OutageProxy, unique: str, labeler: Labeler
) -> None:
    """Elasticsearch down at start-up: the index setup waits for it, nothing is consumed, so not ready; but
    alive, since a restart would only wait again."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(noida.kafka, topic, 1)
    port = free_port()
    proxy.down.set()
    worker = Worker(make_settings(noida.kafka, proxy.url, t, metrics_port=port), labeler)
    try:
        wait_for(lambda: proxy.refused >= 2, "index setup retried", 30)
        not_started = (503, {"ready": False, "checks": {"started": False, "consuming": False}})
        assert probe(port, "/readyz") == not_started
        assert probe(port, "/healthz") == ALIVE
        proxy.down.clear()
        wait_for(lambda: probe(port, "/readyz") == READY, "ready once started", 60)
        assert probe(port, "/healthz") == ALIVE
        worker.close()
    finally:
        worker.stop.set()


def test_labeler_whose_consume_loop_stops_polling_is_not_alive(
    noida: Noida, unique: str, labeler: Labeler
) -> None:
    """The probes of run_pipeline on a real runner: alive and ready while its loop polls; once the loop has
    stopped polling (here: it ended while the process, and the health server, live on), not alive after
    the stall window, so Kubernetes restarts the pod, and not ready once the readiness window (here
    1 + 10 s) has passed since its last poll."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(noida.kafka, topic, 1)
    settings = make_settings(noida.kafka, noida.es_url, t, shutdown_timeout_s=1)
    registry = CollectorRegistry()
    stop = threading.Event()
    runner = build_runner(settings, registry=registry, stop=stop, labeler=labeler)
    stall_s = 1.0
    ready_within_s = labeler_ready_within_s(settings)
    server = HealthServer(
        registry,
        loop_readiness(lambda: runner, ready_within_s),
        "127.0.0.1",
        0,
        liveness=loop_liveness(lambda: runner, stall_s),
    ).start()
    loop = threading.Thread(target=runner.run, daemon=True)
    try:
        assert probe(server.port, "/healthz") == ALIVE, "not polled yet: starting, alive"
        assert probe(server.port, "/readyz")[0] == 503
        loop.start()
        wait_for(lambda: probe(server.port, "/readyz") == READY, "consuming", 60)
        stop.wait(stall_s * 2)  # longer than the stall window: it is polling all along
        assert probe(server.port, "/healthz") == ALIVE

        stop.set()
        loop.join(timeout=60)
        assert not loop.is_alive()
        wait_for(lambda: probe(server.port, "/healthz")[0] == 503, "liveness failing", 10)
        assert probe(server.port, "/healthz")[1] == {"alive": False, "checks": {"consume_loop": False}}
        unready = (503, {"ready": False, "checks": {"started": True, "consuming": False}})
        wait_for(lambda: probe(server.port, "/readyz") == unready, "not ready (11 s without a poll)", 25)
    finally:
        stop.set()
        server.stop()


# ---- the alert worker's probes (`finsent alerts`) --------------------------------------------------------

NOT_STARTED = (503, {"ready": False, "checks": {"started": False, "consuming": False}})
NOT_CONSUMING = (503, {"ready": False, "checks": {"started": True, "consuming": False}})
STALLED = (503, {"alive": False, "checks": {"consume_loop": False}})


def alert_settings(bootstrap: str, es_url: str | None, unique: str, max_poll_interval_ms: int) -> Settings:
    return alert_worker_settings(
        bootstrap, unique, es_url=es_url, max_poll_interval_ms=max_poll_interval_ms, metrics=True
    )


def test_alert_worker_probes_allow_a_step_as_long_as_max_poll_interval() -> None:
    """A healthy step blocks while the state topic acknowledges a save (up to 30 s), a commit (10 s) or
    Elasticsearch takes an alert document (up to its request timeout): during a slowdown of either, the
    worker stays ready and alive for up to max.poll.interval since its last poll (here a step that has
    blocked 12 s, longer than the labeler's 10 s window), and only then is restarted."""
    settings = alert_settings("127.0.0.1:9", None, "x", max_poll_interval_ms=30_000)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)  # never run: its last poll is set by hand
    server = start_health_server(settings, registry, worker)
    assert server is not None
    try:
        assert probe(server.port, "/readyz") == NOT_STARTED
        assert probe(server.port, "/healthz") == ALIVE, "starting: alive"
        worker.last_poll = time.monotonic() - 12
        assert probe(server.port, "/readyz") == READY
        assert probe(server.port, "/healthz") == ALIVE
        worker.last_poll = time.monotonic() - 31
        assert probe(server.port, "/readyz") == NOT_CONSUMING
        assert probe(server.port, "/healthz") == STALLED
    finally:
        server.stop()


def test_alert_worker_whose_loop_stops_polling_is_not_alive(broker: str, es_url: str, unique: str) -> None:
    """The probes of `finsent alerts` on a real worker: unready but alive until its loop has polled, then
    ready and alive while it polls; once the loop has stopped polling (here: it ended while the health
    server lives on), neither ready nor alive after max.poll.interval, so Kubernetes restarts the pod."""
    settings = alert_settings(broker, es_url, unique, max_poll_interval_ms=10_000)
    create_topic(broker, settings.pipeline.labeled_topic, 1)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)
    server = start_health_server(settings, registry, worker)
    assert server is not None
    stop = threading.Event()
    loop = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    try:
        assert probe(server.port, "/readyz") == NOT_STARTED
        assert probe(server.port, "/healthz") == ALIVE
        loop.start()
        wait_for(lambda: probe(server.port, "/readyz") == READY, "consuming", 60)
        assert probe(server.port, "/healthz") == ALIVE

        stop.set()
        loop.join(timeout=60)
        assert not loop.is_alive()
        stopped_at = worker.last_poll
        wait_for(lambda: probe(server.port, "/healthz") == STALLED, "liveness failing", 20)
        assert time.monotonic() - stopped_at >= 10, "not alive before max.poll.interval"
        assert probe(server.port, "/readyz") == NOT_CONSUMING
    finally:
        stop.set()
        server.stop()


# ---- `finsent run` with the alert worker in-process: its loop counts in liveness, not in readiness -------


class FakeLoop:
    """A consume loop on the test's clock, its last poll set by hand."""

    def __init__(self, clock: Callable[[], float], last_poll: float = 0.0) -> None:
        self.clock = clock
        self.last_poll = last_poll

    def polling(self, within_s: float) -> bool:
        return self.clock() - self.last_poll < within_s


BOTH_ALIVE = {"consume_loop": True, "alert_consume_loop": True}


def test_finsent_runs_liveness_fails_once_its_alert_worker_stops_polling() -> None:
    """Each loop by the rule of `finsent alerts`' probe (max.poll.interval, here 60 s), the alert worker
    alive however long it takes to start (state topic, alerts index, group join) and while it is waiting
    to be restarted: between a failure and its restart (up to ALERT_RESTART_MAX_S) it is not stuck."""
    now = [1000.0]
    labeler = FakeLoop(lambda: now[0], last_poll=1000.0)
    alert_loop = LoopHolder()
    alive = labeler_liveness(Settings(kafka={"max_poll_interval_ms": 60_000}), lambda: labeler, alert_loop)

    def at(t: float) -> dict[str, bool]:
        now[0] = labeler.last_poll = t  # the labeler polls all along
        return dict(alive())

    assert at(1000) == BOTH_ALIVE, "no alert worker yet"
    worker = FakeLoop(lambda: now[0])
    with alert_loop.running(worker):
        assert at(2000) == BOTH_ALIVE, "starting, however long: not polled yet"
        worker.last_poll = 2000
        assert at(2059) == BOTH_ALIVE
        assert at(2060) == {"consume_loop": True, "alert_consume_loop": False}
    assert at(2060) == BOTH_ALIVE, "its run has ended: supervise restarts it, it is not stuck"
    with pytest.raises(RuntimeError), alert_loop.running(worker):
        raise RuntimeError("the alert worker failed")
    assert at(2200) == BOTH_ALIVE, "failed, waiting for its restart"
    with alert_loop.running(FakeLoop(lambda: now[0])):
        assert at(2300) == BOTH_ALIVE, "the restarted worker, a new one, starting"


def test_finsent_runs_liveness_is_the_labelers_alone_without_an_alert_worker() -> None:
    """`alerts.enabled: false` (no alert loop): the same check and names as before."""
    now = [1000.0]
    labeler = FakeLoop(lambda: now[0], last_poll=1000.0)
    alive = labeler_liveness(Settings(kafka={"max_poll_interval_ms": 60_000}), lambda: labeler, None)
    assert alive() == {"consume_loop": True}
    now[0] = 1060.0
    assert alive() == {"consume_loop": False}


def spike_events() -> list[LabeledEvent]:
    """Labeled events whose negative spike on ACME fires an alert as soon as a worker has read them."""
    normal, spike = {"ticker:ACME": (60, 0.1)}, {"ticker:ACME": (60, 0.7)}
    return make_events([normal] * 12 + [spike] * 2 + [normal] * 2, seed=3, shuffle_within_window=False)


def test_finsent_run_is_not_alive_while_its_alert_worker_hangs(
    noida: Noida, unique: str, labeler: Labeler
) -> None:
    """`finsent run` wired as run_worker wires it, on a real pipeline and a real alert worker whose loop
    hangs (in an `on_alert` callback that does not return) without failing, which `supervise` cannot see:
    /healthz fails after max.poll.interval (10 s here) naming the alert worker's loop, so Kubernetes
    restarts the pod, while /readyz stays ready, since the labeler labels on. Once the loop polls again,
    alive again."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(noida.kafka, topic, 1)
    port = free_port()
    alerts = {
        "keys": ["ticker"],
        "window_s": 60,
        "allowed_lateness_s": 0,
        "idle_advance_s": 1e9,
        "group_id": f"alerts-{unique}",
        "state_topic": f"alert-state-{unique}",
    }
    settings = make_settings(
        noida.kafka, noida.es_url, t, metrics_port=port, alerts=alerts, shutdown_timeout_s=1
    )
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_interval_ms": 10_000})}
    )
    hung, release = threading.Event(), threading.Event()

    def hang(_alert: Any) -> None:
        hung.set()
        release.wait(60)

    stop = threading.Event()
    registry = CollectorRegistry()
    alert_loop = LoopHolder()
    alert_thread = alert_worker_thread(settings, stop, registry, hang, current=alert_loop)
    assert alert_thread is not None
    pipeline = threading.Thread(
        target=run_pipeline,
        args=(settings, stop),
        kwargs={"labeler": labeler, "registry": registry, "alert_loop": alert_loop},
        daemon=True,
    )
    try:
        alert_thread.start()
        pipeline.start()
        wait_for(lambda: probe(port, "/readyz") == READY, "the labeler consuming", 60)
        wait_for(lambda: bool((loop := alert_loop()) and loop.last_poll), "the alert worker polling", 60)
        assert probe(port, "/healthz") == ALIVE

        produce(noida.kafka, t.labeled, spike_events())
        wait_for(hung.is_set, "the alert, whose callback hangs", 60)
        worker = alert_loop()
        assert worker is not None
        stalled = (503, {"alive": False, "checks": {"consume_loop": True, "alert_consume_loop": False}})
        wait_for(lambda: probe(port, "/healthz") == stalled, "liveness failing", 30)
        assert time.monotonic() - worker.last_poll >= 10, "not alive before max.poll.interval"
        assert probe(port, "/readyz") == READY, "readiness does not depend on the alert worker"

        release.set()
        wait_for(lambda: probe(port, "/healthz") == ALIVE, "alive once it polls again (or restarts)", 60)
        stop.set()
        alert_thread.join(timeout=60)
        pipeline.join(timeout=60)
        assert not alert_thread.is_alive() and not pipeline.is_alive()
        assert alert_loop() is None, "no worker runs any more"
    finally:
        release.set()
        stop.set()
