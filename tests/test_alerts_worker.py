"""The alert worker against a real broker: kill -9 during a spike, restart, and count notifications."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

from alerts.detector import Detector
from alerts.events import LabeledEvent
from alerts.model import Alert, rfc3339
from alerts.synthetic import make_events
from finsent.alert_state import StateStore
from finsent.alert_worker import AlertWorker, PartitionState, interval_due
from finsent.settings import Settings
from finsent.watermarks import Watermark, watermark_record
from tests.servers import Noida, Recorder, Tansu, create_topic
from tests.test_alerts_notifiers import make_alert

REPO = Path(__file__).resolve().parent.parent
W = 60


def labeled_json(e: LabeledEvent) -> dict[str, Any]:
    """A labeled event as the pipeline writes it (docs/CONTRACTS.md)."""
    neg = e.negative_prob
    return {
        "event_id": e.event_id,
        "key_type": e.key_type,
        "key": e.key,
        "id": e.message_id,
        "source": "test",
        "text": e.text,
        "url": e.url,
        "tickers": [e.key] if e.key_type == "ticker" else [],
        "published_at": rfc3339(e.ts),
        "labeled_at": rfc3339(e.ts + 1),
        "topic": "Markets",
        "topic_score": 0.9,
        "sentiment": "negative" if e.negative else "neutral",
        "sentiment_score": max(neg, 1 - neg),
        "sentiment_probs": {"negative": neg, "neutral": 1 - neg, "positive": 0.0},
        "model_version": "test",
    }


def produce(bootstrap: str, topic: str, events: list[LabeledEvent], extra: list[bytes] = ()) -> None:  # type: ignore[assignment]
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for e in events:
            producer.send(
                topic, key=f"{e.key_type}:{e.key}".encode(), value=json.dumps(labeled_json(e)).encode()
            )
        for raw in extra:
            producer.send(topic, key=b"ticker:ACME", value=raw)
        producer.flush(timeout=30)
    finally:
        producer.close()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def hook_alerts(recorder: Recorder) -> list[dict[str, Any]]:
    """Every alert in every webhook body received so far, as sent."""
    out: list[dict[str, Any]] = []
    for body in recorder.json():
        assert isinstance(body, dict)
        out.extend(body["alerts"])
    return out


def notified(recorder: Recorder) -> list[tuple[str, str, str]]:
    """(alert key, rule, status) of every alert in every webhook body received so far."""
    return [(a["key"], a["rule"], a["status"]) for a in hook_alerts(recorder)]


SavedState = dict[int, dict[str, Any]]


def end_positions(
    client_kwargs: dict[str, Any], topic: str, partitions: int, timeout: float = 30.0
) -> dict[int, int]:
    """The offset after the last record of each partition, found by reading the partitions to their high
    watermarks: Tansu's answer to a ListOffsets for the latest offset (`end_offsets`) falls short of it."""
    consumer = KafkaConsumer(**client_kwargs, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=300, max_records=5000)
            highwater = {tp: consumer.highwater(tp) for tp in tps}
            if all(hw is not None and consumer.position(tp) >= hw for tp, hw in highwater.items()):
                return {tp.partition: consumer.position(tp) for tp in tps}
        raise AssertionError(f"timed out reading {topic} to its end")
    finally:
        consumer.close()


def restart_in_new_group(cfg: dict[str, Any], partitions: int) -> None:
    """noida-db never evicts a SIGKILLed group member, so a restart in the same group cannot sync: the
    restart joins a new group, given the old group's saved state (state records are per `alerts.group_id`),
    so that it still checks the real thing: state restored, nothing replayed twice, nothing lost."""
    settings = Settings.model_validate(cfg)
    kw, old = settings.kafka.client_kwargs(), settings.alerts.group_id
    cfg["alerts"]["group_id"] = new = old + "-restarted"
    args = (kw, settings.alerts.state_topic, settings.pipeline.labeled_topic)
    source, target = StateStore(*args, group_id=old), StateStore(*args, group_id=new)
    try:
        target.save(source.load(set(range(partitions))))
    finally:
        source.close()
        target.close()


def wait_for_saved_state(
    cfg: dict[str, Any],
    partitions: int,
    check: Callable[[SavedState], bool],
    what: str,
    timeout: float = 60.0,
) -> SavedState:
    """Poll the worker's state topic until the latest saved record of every labeled partition that holds
    records reflects all of them (the worker has counted everything produced so far and saved that), its
    outbox is empty (every transition was delivered), and `check` holds for the records. This, not a
    sleep, tells when a worker may be killed without its restart depending on how far it had got."""
    settings = Settings.model_validate(cfg)
    kw = settings.kafka.client_kwargs()
    labeled = settings.pipeline.labeled_topic
    ends = end_positions(kw, labeled, partitions)

    def done(records: SavedState) -> bool:
        return (
            all(p in records and records[p]["offset"] == end for p, end in ends.items() if end)
            and not any(r["outbox"] for r in records.values())
            and check(records)
        )

    def summary(records: SavedState) -> dict[int, Any]:
        return {
            p: {
                "offset": r["offset"],
                "outbox": len(r["outbox"]),
                "notified": r["notified"],
                "pending": {
                    ch: [Alert.from_dict(a).alert_id for a in alerts] for ch, alerts in r["pending"].items()
                },
            }
            for p, r in records.items()
        }

    store = StateStore(kw, settings.alerts.state_topic, labeled)
    records: SavedState = {}
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                records = store.load(set(ends), timeout_s=20)
            except TimeoutError:
                records = {}
            if done(records):
                return records
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}: ends {ends}, saved {summary(records)}")
            time.sleep(0.2)
    finally:
        store.close()


def saved_notified(records: SavedState) -> set[str]:
    return {i for r in records.values() for i in r["notified"]}


def saved_pending(records: SavedState, channel: str) -> list[Alert]:
    """The notifications queued on `channel` (rate limited, or waiting for a retry) in the saved state."""
    return [Alert.from_dict(a) for r in records.values() for a in r["pending"].get(channel, ())]


@pytest.fixture
def hook(recorder: Recorder) -> Recorder:
    """The webhook receiver of the worker's settings (conftest's `recorder`)."""
    return recorder


def worker_config(broker: str, es_url: str, unique: str, hook_url: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": broker,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_interval_ms": 10000,
        },
        "pipeline": {"labeled_topic": f"labeled-{unique}", "shutdown_timeout_s": 5},
        "elasticsearch": {"url": es_url, "index_prefix": f"t{unique}"},
        "metrics": {"enabled": False},
        "alerts": {
            "keys": ["ticker", "all"],
            "window_s": W,
            "allowed_lateness_s": 0,
            "idle_advance_s": 1e9,
            "notify_max_age_s": 1e10,
            "group_id": f"alerts-{unique}",
            "state_topic": f"alert-state-{unique}",
            "state_interval_s": 0.5,
            "notifiers": {
                "webhook": {"enabled": True, "url": hook_url},
                "log": {"enabled": True},
                "digest_min_alerts": 50,
            },
        },
    }


def start_worker_process(cfg: dict[str, Any], tmp_path: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`finsent alerts` in a process of its own (so that it can be SIGKILLed), reading `cfg` from YAML."""
    config_file = tmp_path / "finsent.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FINSENT_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "finsent", "alerts", "--config", str(config_file)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def start_worker_thread(
    cfg: dict[str, Any], stop: threading.Event, seen: list[Alert], registry: CollectorRegistry
) -> threading.Thread:
    """The restarted worker, in this process: its alerts go to `seen`, its metrics to `registry`."""
    worker = AlertWorker(Settings.model_validate(cfg), registry=registry, on_alert=seen.append)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_restart_during_a_spike_notifies_exactly_once(
    broker: str, broker_name: str, es_url: str, unique: str, hook: Recorder, tmp_path: Path
) -> None:
    cfg = worker_config(broker, es_url, unique, hook.url)
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(broker, topic, partitions=2)
    normal = {"ticker:ACME": (60, 0.1), "all:*": (100, 0.15)}
    spike = {"ticker:ACME": (60, 0.6), "all:*": (100, 0.15)}
    calm = {"ticker:ACME": (60, 0.05), "all:*": (100, 0.15)}
    events = make_events(
        [normal] * 12 + [spike] * 4 + [calm] * 6, seed=11, window_s=W, shuffle_within_window=False
    )
    t0 = events[0].ts // W * W
    cut = next(i for i, e in enumerate(events) if e.ts >= t0 + 14 * W + 30)  # in the middle of the spike
    produce(broker, topic, events[:cut], extra=[b"not json", b'{"key_type": "ticker"}'])

    log = (tmp_path / "worker1.log").open("wb")
    proc = start_worker_process(cfg, tmp_path, log)
    try:
        wait_for(lambda: ("ACME", "negative_share", "firing") in notified(hook), "the firing notification")

        def delivery_recorded(records: SavedState) -> bool:
            """Every notification the webhook got is recorded as sent: in `notified`, out of the queue."""
            sent = {a["alert_id"] for a in hook_alerts(hook) if a["status"] == "firing"}
            queued = {a.alert_id for a in saved_pending(records, "webhook")}
            return sent <= saved_notified(records) and not sent & queued

        # then kill it hard mid-spike: the restart must neither re-send the firing nor count it again
        wait_for_saved_state(cfg, 2, delivery_recorded, "the worker to save the delivered notification")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()
    worker1_log = (tmp_path / "worker1.log").read_text()
    assert notified(hook).count(("ACME", "negative_share", "firing")) == 1, worker1_log
    assert worker1_log.count("skipping labeled record") == 2  # bad records are reported, not dropped silently
    assert hook.url not in worker1_log  # webhook URLs are secrets: httpx must not log its requests

    produce(broker, topic, events[cut:])
    seen: list[Alert] = []
    registry = CollectorRegistry()
    stop = threading.Event()
    if broker_name == "noida":
        restart_in_new_group(cfg, 2)
    thread = start_worker_thread(cfg, stop, seen, registry)
    try:
        wait_for(
            lambda: ("ACME", "negative_share", "resolved") in notified(hook), "the resolved notification"
        )
        time.sleep(2.0)  # nothing else may arrive
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

    share = [n for n in notified(hook) if n[:2] == ("ACME", "negative_share")]
    assert share == [("ACME", "negative_share", "firing"), ("ACME", "negative_share", "resolved")]
    per_rule: dict[tuple[str, str], list[str]] = {}
    for key, rule, status in notified(hook):
        per_rule.setdefault((key, rule), []).append(status)
    assert all(s == ["firing", "resolved"] for s in per_rule.values()), per_rule
    assert ("*", "negative_share") not in per_rule

    # the restarted worker only saw the resolve (its state said the alert was already firing)
    assert [(a.key, a.status) for a in seen if a.rule == "negative_share"] == [("ACME", "resolved")]
    assert (
        registry.get_sample_value(
            "finsent_alerts_resolved_total", {"rule": "negative_share", "key_type": "ticker"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value("finsent_alerts_firing", {"rule": "negative_share", "key_type": "ticker"})
        == 0
    )
    assert (registry.get_sample_value("finsent_alert_events_total") or 0) > 0

    # Elasticsearch: one document per alert, overwritten by its resolved version
    index = f"t{unique}-alerts"
    httpx.post(f"{es_url}/{index}/_refresh", timeout=10)
    hits = httpx.post(
        f"{es_url}/{index}/_search", json={"query": {"term": {"key": "ACME"}}, "size": 10}, timeout=10
    ).json()["hits"]["hits"]
    docs = {h["_id"]: h["_source"] for h in hits}
    share_docs = [d for d in docs.values() if d["rule"] == "negative_share"]
    assert len(share_docs) == 1
    doc = share_docs[0]
    assert doc["status"] == "resolved" and doc["ends_at"] and doc["p_value"] < 1e-6
    assert f"{doc['fingerprint']}:{doc['starts_at']}" in docs


def partition_of(key: str, partitions: int) -> int:
    """Where Kafka's default partitioner puts a record key (murmur2, as the pipeline's producer does)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_two_workers_in_one_group_share_the_partitions_and_notify_a_spike_once(
    broker: str, es_url: str, unique: str, hook: Recorder
) -> None:
    """Scale-out: two workers, one group, a 3-partition labeled topic keyed `<key_type>:<key>`. Each event
    is counted once, by the owner of its key's partition; the spike fires once. Then the owner of the
    spiking key leaves: the other worker takes its partitions over from the state topic and sends the
    one resolve, without replaying or re-notifying anything. (A graceful leave: noida-db handles that;
    it only never evicts a member that dies without leaving, see the restart test.)"""
    cfg = worker_config(broker, es_url, unique, hook.url)
    cfg["alerts"]["keys"] = ["ticker", "topic", "all"]
    topic = cfg["pipeline"]["labeled_topic"]
    partitions = 3
    create_topic(broker, topic, partitions=partitions)
    keys = ["ticker:ACME", "ticker:BETA", "ticker:GAMMA", "ticker:DELTA", "topic:Earnings", "all:*"]
    home = {k: partition_of(k, partitions) for k in keys}
    assert len(set(home.values())) >= 2, home  # the keys really are spread over partitions

    settings = Settings.model_validate(cfg)
    seen: list[list[Alert]] = [[], []]
    registries = [CollectorRegistry(), CollectorRegistry()]
    workers = [AlertWorker(settings, registry=registries[i], on_alert=seen[i].append) for i in range(2)]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=w.run, args=(stops[i],), daemon=True) for i, w in enumerate(workers)]
    normal = {k: (50, 0.1) for k in keys}
    spike = {**normal, "ticker:ACME": (50, 0.6)}
    events = make_events([normal] * 12 + [spike] * 3 + [normal] * 8, seed=21, window_s=W)
    t0 = events[0].ts // W * W
    cut = next(i for i, e in enumerate(events) if e.ts >= t0 + 16 * W)  # the spike + one normal window

    def counted() -> float:
        return sum(r.get_sample_value("finsent_alert_events_total") or 0.0 for r in registries)

    def owned() -> list[set[int]]:
        return [set(w.parts) for w in workers]

    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: all(owned()) and set().union(*owned()) == set(range(partitions)),
            "both workers to own partitions",
            timeout=60,
        )
        mine = owned()
        assert not (mine[0] & mine[1]), mine
        produce(broker, topic, events[:cut])
        wait_for(lambda: counted() >= cut, f"{cut} events counted", timeout=90)
        wait_for(lambda: ("ACME", "negative_share", "firing") in notified(hook), "the firing notification")
        time.sleep(1.0)
        key_sets = [{k for ps in list(w.parts.values()) for k in ps.detector.keys} for w in workers]
        assert counted() == cut  # each event counted once, by one worker
        assert not (key_sets[0] & key_sets[1]) and key_sets[0] | key_sets[1] == set(keys)
        for i, ks in enumerate(key_sets):
            assert all(home[k] in mine[i] for k in ks), (i, ks, mine, home)
        owner = next(i for i in range(2) if home["ticker:ACME"] in mine[i])
        assert [(a.key, a.status) for a in seen[owner]] == [("ACME", "firing")]
        assert not seen[1 - owner]

        # the owner leaves the group; the survivor restores its partitions and sees the spike end
        stops[owner].set()
        threads[owner].join(timeout=30)
        survivor = 1 - owner
        wait_for(lambda: owned()[survivor] == set(range(partitions)), "the survivor to own everything")
        produce(broker, topic, events[cut:])
        wait_for(
            lambda: ("ACME", "negative_share", "resolved") in notified(hook), "the resolved notification"
        )
        wait_for(lambda: counted() >= len(events), f"{len(events)} events counted", timeout=90)
        time.sleep(2.0)  # nothing else may arrive
    finally:
        for stop in stops:
            stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    assert counted() == len(events)
    skipped = [
        r.get_sample_value("finsent_alert_events_skipped_total", {"reason": "duplicate"}) for r in registries
    ]
    assert not any(skipped), skipped
    assert notified(hook) == [("ACME", "negative_share", "firing"), ("ACME", "negative_share", "resolved")]
    assert [(a.key, a.status) for a in seen[owner]] == [("ACME", "firing")]
    assert [(a.key, a.status) for a in seen[survivor]] == [("ACME", "resolved")]


def test_rate_limited_notifications_survive_a_crash(
    broker: str, broker_name: str, es_url: str, unique: str, hook: Recorder, tmp_path: Path
) -> None:
    """Two spikes at once on a webhook that may send one message: the second waits in the queue, which
    is part of the saved state. After kill -9 the restarted worker sends it, once."""
    cfg = worker_config(broker, es_url, unique, hook.url)
    cfg["alerts"]["notifiers"]["rate_limit_burst"] = 1
    cfg["alerts"]["notifiers"]["webhook"]["rate_limit_per_minute"] = 0.001
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(broker, topic, partitions=2)
    normal = {"ticker:ACME": (60, 0.1), "ticker:BETA": (60, 0.1)}
    spike = {"ticker:ACME": (60, 0.6), "ticker:BETA": (60, 0.6)}
    events = make_events([normal] * 12 + [spike] * 2 + [normal], seed=12, window_s=W)
    produce(broker, topic, events)

    log_path = tmp_path / "worker1.log"
    with log_path.open("wb") as log:
        proc = start_worker_process(cfg, tmp_path, log)
        try:
            wait_for(lambda: len(notified(hook)) >= 1, "the first notification")

            def held_back(records: SavedState) -> bool:
                """The second spike's notification waits in the saved queue, the first one is not there."""
                sent = {a["alert_id"] for a in hook_alerts(hook)}
                queued = saved_pending(records, "webhook")
                return (
                    len(queued) == 1
                    and (queued[0].rule, queued[0].status) == ("negative_share", "firing")
                    and queued[0].alert_id not in sent
                    and sent | {queued[0].alert_id} <= saved_notified(records)
                )

            # the second is held back by the rate limit; once that is saved, kill the worker
            wait_for_saved_state(cfg, 2, held_back, "the worker to save the rate-limited notification")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    first = notified(hook)
    assert len(first) == 1 and first[0][1:] == ("negative_share", "firing"), log_path.read_text()

    cfg["alerts"]["notifiers"]["webhook"]["rate_limit_per_minute"] = 60.0
    if broker_name == "noida":
        restart_in_new_group(cfg, 2)  # see restart_in_new_group
    seen: list[Alert] = []
    stop = threading.Event()
    thread = start_worker_thread(cfg, stop, seen, CollectorRegistry())
    try:
        wait_for(lambda: len(notified(hook)) >= 2, "the queued notification")
        time.sleep(2.0)  # nothing else may arrive
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sorted(notified(hook)) == [
        ("ACME", "negative_share", "firing"),
        ("BETA", "negative_share", "firing"),
    ]
    assert not seen  # the restarted worker had no new transition: it only sent what was queued


def test_a_worker_joining_mid_stream_loses_and_repeats_nothing(
    tansu: Tansu, es_url: str, unique: str, hook: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A second worker joins while the first is counting a stream (Tansu: a real eager rebalance, the
    first worker's partitions are all revoked and some come back to it). kafka-python 3 runs rebalance
    callbacks on its IO thread, where a blocking commit fails ("Cannot block on net.run() from the IO
    thread"); and a partition that comes back keeps its old read position. Neither may lose or repeat an
    event, nor repeat the spike's notification."""
    caplog.set_level(logging.WARNING)
    cfg = worker_config(tansu.kafka, es_url, unique, hook.url)
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(tansu.kafka, topic, partitions=4)
    keys = ["ticker:ACME", "ticker:BETA", "ticker:GAMMA", "all:*"]
    normal = {k: (40, 0.1) for k in keys}
    spike = {**normal, "ticker:ACME": (40, 0.6)}
    events = make_events([normal] * 12 + [spike] * 3 + [normal] * 2, seed=31, window_s=W)
    settings = Settings.model_validate(cfg)
    registries = [CollectorRegistry(), CollectorRegistry()]
    workers = [AlertWorker(settings, registry=registries[i]) for i in range(2)]
    stops = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=w.run, args=(stops[i],), daemon=True) for i, w in enumerate(workers)]

    def counted() -> float:
        return sum(r.get_sample_value("finsent_alert_events_total") or 0.0 for r in registries)

    half = len(events) // 2
    try:
        threads[0].start()
        wait_for(lambda: len(workers[0].parts) == 4, "the first worker to own every partition", timeout=60)
        produce(tansu.kafka, topic, events[:half])
        wait_for(lambda: counted() >= half // 2, "the first worker to be counting", timeout=60)
        threads[1].start()  # mid-stream: the first worker has uncounted, unsaved and uncommitted events
        chunks = 8
        step = -(-(len(events) - half) // chunks)
        for i in range(half, len(events), step):
            produce(tansu.kafka, topic, events[i : i + step])
            time.sleep(0.5)
        wait_for(lambda: all(w.parts for w in workers), "both workers to own partitions", timeout=60)
        wait_for(lambda: counted() >= len(events), f"{len(events)} events counted", timeout=90)
        wait_for(lambda: ("ACME", "negative_share", "firing") in notified(hook), "the firing notification")
        time.sleep(2.0)  # nothing else may arrive
    finally:
        for stop in stops:
            stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert "Cannot block" not in caplog.text
    assert not (set(workers[0].parts) & set(workers[1].parts))
    assert counted() == len(events)  # every event counted once, by one worker
    skipped = [
        r.get_sample_value("finsent_alert_events_skipped_total", {"reason": "duplicate"}) for r in registries
    ]
    assert not any(skipped), skipped
    assert notified(hook) == [("ACME", "negative_share", "firing")]


def test_a_partition_assigned_back_without_saved_state_is_read_again(
    noida: Noida, unique: str, hook: Recorder
) -> None:
    """kafka-python keeps the read position of a partition that is assigned back to the same consumer. When
    the state of a revoked partition could not be saved (here: the state topic's producer is gone), the
    worker must go back to where its unsaved counting began, not go on from the old position with an empty
    detector and skip everything before it. (The revoke and assign callbacks are called directly, in the
    order a rebalance calls them.)"""
    cfg = worker_config(noida.kafka, noida.es_url, unique, hook.url)
    cfg["alerts"]["state_interval_s"] = 1e10  # nothing is saved before the revoke
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(noida.kafka, topic, partitions=1)
    events = make_events([{"ticker:ACME": (30, 0.1)}] * 3, seed=5, window_s=W)
    produce(noida.kafka, topic, events)
    registry = CollectorRegistry()
    worker = AlertWorker(Settings.model_validate(cfg), registry=registry)

    def step_until_counted(n: int) -> None:
        deadline = time.monotonic() + 30
        while (registry.get_sample_value("finsent_alert_events_total") or 0) < n:
            assert time.monotonic() < deadline, f"timed out waiting for {n} events counted"
            worker.step()

    worker._setup()
    try:
        step_until_counted(len(events))
        assert not worker.parts[0].durable
        worker.store.producer.close()
        worker.on_revoked({0})
        assert not worker.parts
        worker.on_assigned({0})
        step_until_counted(2 * len(events))  # all of them again, into the fresh detector
        assert set(worker.parts[0].detector.keys) == {"ticker:ACME"}
        assert worker.parts[0].next_offset == len(events)
    finally:
        worker.consumer.close(autocommit=False)
        worker.store.close()
    duplicates = registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "duplicate"})
    assert not duplicates


def test_idle_windows_close_only_as_far_as_the_labelers_watermarks(
    broker: str, es_url: str, unique: str, hook: Recorder
) -> None:
    """A spike window that only the idle clock can close (no later events) stays open while no labeler
    watermark says the input is labeled that far, as when the labeler is stopped, and closes once one
    does."""
    cfg = worker_config(broker, es_url, unique, hook.url)
    cfg["alerts"]["idle_advance_s"] = 1.0
    topic = cfg["pipeline"]["labeled_topic"]
    create_topic(broker, topic, partitions=1)
    normal, spike = {"ticker:ACME": (60, 0.1)}, {"ticker:ACME": (60, 0.7)}
    events = make_events([normal] * 12 + [spike], seed=3, window_s=W, shuffle_within_window=False)
    end = (events[-1].ts // W + 1) * W
    last = replace(events[-1], event_id="last|ticker:ACME", text="the last", ts=end - 0.5)  # near its end
    events.append(last)
    produce(broker, topic, events)
    seen: list[Alert] = []
    registry = CollectorRegistry()
    stop = threading.Event()
    thread = start_worker_thread(cfg, stop, seen, registry)
    try:
        wait_for(
            lambda: registry.get_sample_value("finsent_alert_events_total") == len(events), "events counted"
        )
        time.sleep(3.0)  # three times idle_advance_s
        assert not [a for a in seen if a.key == "ACME"], "closed a window the labelers never reported"

        key, value, headers = watermark_record("labelers", {"raw": 1}, {("raw", 0): time.time()})
        producer = KafkaProducer(bootstrap_servers=broker)
        producer.send(topic, key=key, value=value, headers=headers, partition=0)
        producer.flush(timeout=30)
        producer.close()
        wait_for(lambda: ("ACME", "firing") in [(a.key, a.status) for a in seen], "the spike window to close")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "invalid_json"}) == 0


@pytest.mark.parametrize("idle_clock", ["labeler", "wall"])
def test_the_idle_clock_setting_decides_how_far_idle_event_time_moves(idle_clock: str) -> None:
    settings = Settings(alerts={"idle_advance_s": 60, "idle_clock": idle_clock})
    registry = CollectorRegistry()
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=registry)
    ps = PartitionState(
        partition=0, detector=Detector(settings.alerts), idle_wall=1000.0, idle_watermark=500.0
    )
    assert worker._idle_event_time(ps, 1059.0) is None  # not idle long enough
    wall = 500.0 + 100.0
    if idle_clock == "wall":
        assert worker._idle_event_time(ps, 1100.0) == wall
        return
    assert worker._idle_event_time(ps, 1100.0) is None  # no watermark yet: hold
    worker._take_watermark(ps, watermark_record("g", {"raw": 1}, {("raw", 0): 990.0})[1], offset=7)
    # none had come when the last event did (at 1000 by our clock): labeled only to before it
    assert worker._idle_event_time(ps, 1100.0) is None
    worker._take_watermark(ps, watermark_record("g", {"raw": 1}, {("raw", 0): 1050.0})[1], offset=8)
    # the input is labeled 50 s past then: event time moves 50 s, not to 1050 (event time trails
    # arrival by the source's delay)
    assert worker._idle_event_time(ps, 1100.0) == 550.0
    assert (
        registry.get_sample_value("finsent_alert_input_labeled_until_seconds", {"partition": "0"}) == 1050.0
    )
    ps.inputs.observe(Watermark({"raw": 1}, {("raw", 0): 2000.0}, "g"))
    assert worker._idle_event_time(ps, 1100.0) == wall  # never ahead of the wall clock's advance


@pytest.mark.parametrize("labelers_behind_s", [0.0, 1800.0])
def test_events_published_before_a_labeler_outage_but_labeled_after_it_are_not_late(
    labelers_behind_s: float,
) -> None:
    """Messages reach the pipeline a while after publication (here 600 s), and the labelers may run
    behind (a backlog). Then the labelers stop for an hour: idle event time must stay before the
    publication times of what they had not labeled yet, so that the backlog is counted in its windows
    when it comes; and it must move with their progress until then, not wait for them to catch up."""
    delay, t0, lag = 600.0, 1_700_000_000.0, labelers_behind_s
    settings = Settings(alerts={"idle_advance_s": 1, "allowed_lateness_s": 0, "window_s": 60})
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=CollectorRegistry())
    ps = PartitionState(partition=0, detector=Detector(settings.alerts))
    # the labelers report their input done to t0 - lag; then the next event arrives (at t0 - lag,
    # published `delay` earlier), seen here at t0; they report 30 s more and stop
    ps.inputs.observe(Watermark({"raw": 1}, {("raw", 0): t0 - lag}, "g"))
    event = LabeledEvent("m0|all:*", "all", "*", t0 - lag - delay, False, 0.9)
    assert ps.detector.add(event, t0) == "accepted"
    worker._mark_idle_start(ps, t0)
    ps.inputs.observe(Watermark({"raw": 1}, {("raw", 0): t0 - lag + 30.0}, "g"))
    idle_to = worker._idle_event_time(ps, t0 + 3600.0)  # an hour later, the labelers still down
    assert idle_to == t0 - lag + 30.0 - delay
    ps.detector.advance(idle_to)
    # the backlog: arrived after t0 - lag + 30 s, so published from then less the delay on
    backlog = LabeledEvent("m1|all:*", "all", "*", t0 - lag + 31.0 - delay, True, 0.9)
    assert ps.detector.add(backlog, t0 + 3600.0) == "accepted"


def test_idle_event_time_starts_no_later_than_the_wall_clock() -> None:
    """A state saved by an older version may hold event time up to max_future_s ahead of the clock;
    idle advance from there would keep that lead for good, closing windows early."""
    settings = Settings(alerts={"idle_advance_s": 1, "idle_clock": "wall"})
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=CollectorRegistry())
    ps = PartitionState(partition=0, detector=Detector(settings.alerts))
    ps.detector.watermark = 1_700_000_300.0  # restored, 300 s ahead
    worker._mark_idle_start(ps, 1_700_000_000.0)
    assert worker._idle_event_time(ps, 1_700_000_060.0) == 1_700_000_060.0


def test_a_labeled_record_nested_too_deep_is_skipped_not_fatal() -> None:
    """Anyone can write into the labeled topic: JSON nested past Python's recursion limit (json.loads
    raises RecursionError, not ValueError) is counted and skipped; raised out of the step, it would stop
    the worker, and the replay from its commit would stop it again."""
    settings = Settings()
    registry = CollectorRegistry()
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=registry)
    ps = PartitionState(partition=0, detector=Detector(settings.alerts))
    worker._count(ps, b"[" * 100_000 + b"]" * 100_000, now=0.0, offset=7)
    skipped = {"reason": "invalid_json"}
    assert registry.get_sample_value("finsent_alert_events_skipped_total", skipped) == 1


def test_a_wall_clock_stepped_back_makes_periodic_work_due_not_paused() -> None:
    """State saves and Alertmanager re-sends are timed on the wall clock the detector uses. Stepped back
    (NTP) by ten minutes, they would pause for ten minutes, long enough for Alertmanager to resolve firing
    alerts whose endsAt passed; instead they are due at once and counted from there."""
    assert not interval_due(1000.0, 1010.0, 30.0)
    assert interval_due(1000.0, 1030.0, 30.0)
    assert interval_due(1000.0, 400.0, 30.0)  # stepped back


def test_events_dropped_at_a_window_resize_and_evicted_keys_are_exported() -> None:
    """Both bound or lose what the detector counts; neither may pass silently."""
    registry = CollectorRegistry()
    before = Settings(alerts={"window_s": 60, "key_ttl_windows": 2, "allowed_lateness_s": 0})
    ps = PartitionState(partition=0, detector=Detector(before.alerts))
    t0 = 1_700_000_040.0
    for i in range(3):
        event = LabeledEvent(f"m{i}|ticker:ACME", "ticker", "ACME", t0 + i, False, 0.9)
        assert ps.detector.add(event, t0 + 10) == "accepted"
    record = ps.to_record()

    resized = AlertWorker(Settings(alerts={"window_s": 120}), clock=lambda: t0, registry=registry)
    assert resized._restore(0, record).detector.open == {}
    skipped = {"reason": "window_resized"}
    assert registry.get_sample_value("finsent_alert_events_skipped_total", skipped) == 3

    exported = CollectorRegistry()
    worker = AlertWorker(before, clock=lambda: t0, registry=exported)
    ps = worker._restore(0, record)
    ps.detector.advance(t0 + 20 * 60)  # ACME idle for more than key_ttl_windows
    worker._export_evicted(ps)
    worker._export_evicted(ps)  # exported once
    assert ps.detector.keys == {}
    assert exported.get_sample_value("finsent_alert_keys_evicted_total") == 1


@pytest.mark.parametrize(
    "garble",
    [
        lambda rec: rec["detector"].update(keys=[1]),  # a list where an object is stored
        lambda rec: rec["detector"].update(open={"0": [1]}),
        lambda rec: rec["detector"].update(watermark="soon"),
        lambda rec: rec.update(outbox={"not": "a list"}, offset="x"),
        lambda rec: rec.update(detector=[1]),
    ],
)
def test_a_saved_state_of_any_garbled_shape_starts_the_partition_fresh(
    garble: Callable[[dict[str, Any]], None], caplog: pytest.LogCaptureFixture
) -> None:
    """The worker reads the same saved record at every restart: any error restoring it must start the
    partition fresh (logged), never stop the worker."""
    settings = Settings()
    ps = PartitionState(partition=0, detector=Detector(settings.alerts), next_offset=9)
    record = json.loads(json.dumps(ps.to_record()))
    garble(record)
    worker = AlertWorker(settings, clock=lambda: 0.0, registry=CollectorRegistry())
    with caplog.at_level(logging.ERROR, logger="finsent.alert_worker"):
        restored = worker._restore(0, record)
    assert restored.next_offset is None and restored.detector.keys == {}
    assert "saved alert state unusable" in caplog.text


def test_a_stored_alert_with_numbers_no_save_could_write_is_unreadable() -> None:
    """Read, these would fail later, at every save or Elasticsearch write: infinite or NaN evidence, a
    count past 64 bits, an integer too large for a float."""
    alert = make_alert("ACME")
    stored = alert.to_dict()
    assert Alert.from_dict(stored) == alert
    for bad in (
        {"p_value": float("nan")},
        {"count": 2**64},
        {"starts_at": 10**400},
        {"ends_at": float("inf")},
    ):
        with pytest.raises(ValueError):
            Alert.from_dict({**stored, **bad})
    example = {**stored, "examples": [{"text": "t", "url": "", "negative_prob": 10**400}]}
    assert Alert.from_dict(example).examples == ()  # only evidence: the example is dropped, not the alert


def test_the_alert_workers_consumer_takes_the_kafka_sections_static_membership(
    noida: Noida, unique: str, hook: Recorder
) -> None:
    """`kafka.group_instance_id` is documented for every consumer; the alert worker's left it out."""
    cfg = worker_config(noida.kafka, noida.es_url, unique, hook.url)
    cfg["kafka"]["group_instance_id"] = f"alerts-{unique}"
    create_topic(noida.kafka, cfg["pipeline"]["labeled_topic"], partitions=1)
    worker = AlertWorker(Settings.model_validate(cfg), registry=CollectorRegistry())
    worker._setup()
    try:
        assert worker.consumer.config["group_instance_id"] == f"alerts-{unique}"
    finally:
        worker.consumer.close(autocommit=False)
        worker.store.close()
