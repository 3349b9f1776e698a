"""Helpers shared by the pipeline tests: settings for a test run, sample records, reading topics back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from finsent.settings import Settings, settings_env
from finsent.watermarks import is_control
from inference.types import Labeler, Prediction
from tests.servers import InThread


@dataclass
class Topics:
    raw: str
    labeled: str
    dead: str
    group: str
    prefix: str


def topics(unique: str) -> Topics:
    return Topics(f"raw-{unique}", f"labeled-{unique}", f"dead-{unique}", f"g-{unique}", f"e{unique}")


def make_settings(
    broker: str,
    es_url: str,
    t: Topics,
    *,
    metrics_port: int | None = None,
    alerts: dict[str, Any] | None = None,
    **pipeline: Any,
) -> Settings:
    return Settings(
        alerts=alerts or {},
        kafka={
            "bootstrap_servers": broker,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            # a live member slow to rejoin holds a rebalance at most this long; it must fit a revoke
            # (shutdown_timeout_s + the commit's 5 s). Longer, noida holds JoinGroups past the client's
            # 30 s request timeout when a member leaves after a slow revoke.
            "max_poll_interval_ms": 15000,
        },
        elasticsearch={
            "url": es_url,
            "index_prefix": t.prefix,
            "number_of_replicas": 0,
            "retry_backoff_max_s": 1.0,
        },
        metrics={"enabled": metrics_port is not None, "port": metrics_port or 0},
        pipeline={
            "input_topics": [t.raw],
            "group_id": t.group,
            "labeled_topic": t.labeled,
            "dead_letter_topic": t.dead,
            "batch_max_messages": 16,
            "batch_max_wait_ms": 50,
            "shutdown_timeout_s": 10,
            **pipeline,
        },
    )


def alert_worker_settings(
    broker: str,
    unique: str,
    *,
    es_url: str | None,
    max_poll_interval_ms: int = 10_000,
    labeled_topic: str = "",
    metrics: bool = False,
    alerts: dict[str, Any] | None = None,
) -> Settings:
    """An alert worker's settings for a test: its own topics, group and index prefix from `unique`."""
    es = {"url": es_url, "index_prefix": f"t{unique}"} if es_url else {"enabled": False}
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": broker,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "max_poll_interval_ms": max_poll_interval_ms,
            },
            # a short revoke wait, to fit the short max_poll_interval_ms
            "pipeline": {"labeled_topic": labeled_topic or f"labeled-{unique}", "shutdown_timeout_s": 5},
            "elasticsearch": es,
            "metrics": {"enabled": metrics, "host": "127.0.0.1", "port": 0},
            "alerts": {
                "group_id": f"alerts-{unique}",
                "state_topic": f"alert-state-{unique}",
                **(alerts or {}),
            },
        }
    )


def env_for(settings: Settings) -> dict[str, str]:
    """FINSENT_* environment variables reproducing `settings` in a subprocess, without metrics or alerts."""
    return {
        **settings_env(settings),
        "FINSENT_METRICS__ENABLED": "false",
        "FINSENT_ALERTS__ENABLED": "false",
    }


TEXTS = [
    "$ACME shares plunge after the company cuts its full-year outlook",
    "Fed holds rates steady, signals patience on further cuts",
    "$AAPL beats earnings estimates as iPhone sales rise",
    "Oil climbs as OPEC+ extends output cuts; $XOM and $CVX gain",
    "Treasury yields slip ahead of the jobs report",
    "$TSLA recalls 50,000 vehicles over a software fault",
]


def valid_message(i: int) -> dict[str, Any]:
    return {
        "id": f"v{i}",
        "source": ("news", "social")[i % 2],
        "text": f"{TEXTS[i % len(TEXTS)]} (item {i})",
        # spread over the last four weeks: inside the pipeline's accepted window (the ES retention) on any day
        "published_at": f"{datetime.now(UTC) - timedelta(days=1 + i % 28):%Y-%m-%dT10:00:00Z}",
        "tickers": ["MSFT"] if i % 5 == 0 else [],
    }


MALFORMED: list[tuple[bytes, str]] = [
    (b"\xff\xfe not utf-8", "invalid_utf8"),
    (b"{not json", "invalid_json"),
    (b"[1,2,3]", "not_object"),
    (b'{"text": "no source"}', "schema"),
    (b'{"source": "s", "text": "   "}', "empty_text"),
    (b'{"source": "s", "text": "x", "published_at": "soon"}', "schema"),
]


def publish(broker: str, topic: str, records: Sequence[tuple[int, bytes | None, bytes]]) -> None:
    """(partition, key, value) records, flushed."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    try:
        for partition, key, value in records:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()


@dataclass
class Read:
    records: list[Any] = field(default_factory=list)


def read_topic(
    broker: str,
    topic: str,
    expected: int,
    timeout_s: float = 30.0,
    settle_s: float = 1.0,
    *,
    control: bool = False,
) -> list[Any]:
    """Every record of `topic` (all partitions): wait for at least `expected`, then `settle_s` for extras.
    Control records (the labeler's watermarks) are skipped, as the labeled topic's contract asks of
    consumers, unless `control`: then only they are returned."""
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                out.extend(r for r in recs if is_control(r.headers) == control)
            if len(out) >= expected:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle_s:
                    break
        return out
    finally:
        consumer.close()


def committed(broker: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def at_once(start: Callable[[], None], n: int = 4, timeout_s: float = 30.0) -> None:
    """Run `start` in `n` threads released together (workers starting at the same moment)."""
    import threading

    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        start()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def headers(record: Any) -> Mapping[str, bytes]:
    return {k: v for k, v in (record.headers or [])}


def real_labeler() -> Labeler:
    """The configured model (`FINSENT_MODEL__DIR`, default: the shipped one) through the real
    `load_labeler()`; end-to-end tests use nothing else."""
    from inference.labeler import load_labeler

    model: Labeler = load_labeler(Settings().model.dir)
    return model


class FakeLabeler:
    """A stand-in for unit tests of pure logic only: negative for texts containing 'plunge'."""

    model_version = "fake-1"
    topic_labels = ("Markets", "Earnings")
    sentiment_labels = ("negative", "neutral", "positive")

    def __init__(self, fail_on: str | None = None, *, broken: bool = False) -> None:
        self.fail_on = fail_on
        self.broken = broken
        self.calls: list[int] = []

    def label(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls.append(len(texts))
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise RuntimeError("poison text")
        out = []
        for t in texts:
            neg = "plunge" in t
            probs = (
                {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
                if neg
                else {"negative": 0.1, "neutral": 0.8, "positive": 0.1}
            )
            out.append(
                Prediction(
                    "Markets",
                    0.7,
                    "negative" if neg else "neutral",
                    max(probs.values()),
                    {"Markets": 0.7, "Earnings": 0.3},
                    probs,
                )
            )
        return out


HOP_BY_HOP = ("content-length", "transfer-encoding", "connection", "content-encoding")


def forward(handler: Any, target: str, body: bytes) -> None:
    """Replay the request a test proxy received against `target` and copy the answer back."""
    import httpx

    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
    r = httpx.request(handler.command, target + handler.path, content=body, headers=headers, timeout=30)
    handler.send_response(r.status_code)
    for k, v in r.headers.items():
        if k.lower() not in HOP_BY_HOP:
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(r.content)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(r.content)


class ForwardingProxy(InThread):
    """A real local HTTP server in front of `target`: every request is forwarded there, unless `answer()`
    (the hook subclasses fill in) answers it itself, as an outage or a real server's quirk would."""

    def __init__(self, target: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not outer.answer(self, body):
                    forward(self, target, body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

            def log_message(self, format: str, *args: object) -> None:
                return

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
        self.url = f"http://127.0.0.1:{self.port}"

    def answer(self, handler: Any, body: bytes) -> bool:
        """Answer the request here instead of forwarding it: True when it did."""
        return False


def reply(handler: Any, status: int, obj: object = None) -> None:
    """Answer a proxied request: `obj` as a JSON body, as Elasticsearch sends it, or an empty body."""
    data = json.dumps(obj).encode() if obj is not None else b""
    handler.send_response(status)
    if obj is not None:
        handler.send_header("Content-Type", "application/json")
        handler.send_header("X-Elastic-Product", "Elasticsearch")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class BulkOutageProxy(ForwardingProxy):
    """`_bulk` answers 503 while `down` is set (everything else is forwarded): an Elasticsearch outage in
    the middle of a run."""

    def __init__(self, target: str) -> None:
        import threading

        self.down = threading.Event()
        self.refused = 0
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if not (self.down.is_set() and "_bulk" in handler.path):
            return False
        self.refused += 1
        reply(handler, 503)
        return True
