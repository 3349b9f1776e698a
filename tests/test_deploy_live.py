"""The dashboards' and rules' queries against real servers: a real Prometheus (1 s scrapes and rule
evaluations) scraping finsent's metrics endpoints, and the Elasticsearch API of noida-db holding documents
shaped as in docs/CONTRACTS.md. Every query must run without error; the key ones must return data."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from finsent.alert_metrics import AlertMetrics
from finsent.health import HealthServer
from ingest.sources.metrics import SourceMetrics
from tests import deploy_support as ds
from tests import servers

pytestmark = [pytest.mark.prometheus, pytest.mark.elasticsearch]

# dashboard variables for the Elasticsearch queries (the documents indexed below use these values)
VARIABLES = {"topic": ["earnings", "macro"], "ticker": ["AAPL", "MSFT"]}
TRACKED_TICKERS = ("AAPL", "MSFT")


# --------------------------------------------------------------------------------- metrics targets


class SideWorkers:
    """Stand-ins for the alert worker and the sources service: their real metric classes, served by
    finsent's own health server and updated like busy workers would. (The labeler is the real thing.)"""

    def __init__(self) -> None:
        self.registries = {job: CollectorRegistry() for job in ("finsent-alerts", "finsent-sources")}
        self.alerts = AlertMetrics(self.registries["finsent-alerts"])
        self.sources = SourceMetrics(self.registries["finsent-sources"])
        self.servers = {
            job: HealthServer(registry, lambda: {"ready": True}).start()
            for job, registry in self.registries.items()
        }
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="deploy-side-workers", daemon=True)
        self.rng = random.Random(7)

    def targets(self) -> dict[str, str]:
        return {job: f"127.0.0.1:{server.port}" for job, server in self.servers.items()}

    def __enter__(self) -> SideWorkers:
        for source in ("reuters", "sec-press"):
            self.sources.init_source(source, time.time())
            self.sources.errors.labels(source, "timeout").inc()
        self.alerts.fired.labels("share", "ticker", "warning").inc()
        self.alerts.escalated.labels("share", "ticker").inc()
        self.alerts.resolved.labels("share", "ticker").inc()
        self.step()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for server in self.servers.values():
            server.stop()

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self.step()

    def step(self) -> None:
        rng = self.rng
        self.alerts.events.inc(rng.randint(4, 16))
        self.alerts.firing.labels("share", "ticker").set(1)
        self.alerts.notification("slack", "sent", 1)
        self.alerts.set_labeled_until(0, time.time() - 2)
        for source in ("reuters", "sec-press"):
            self.sources.fetched.labels(source).inc(3)
            self.sources.published.labels(source).inc(2)
            self.sources.duplicates.labels(source).inc(1)
            self.sources.fetch_seconds.labels(source).observe(rng.uniform(0.1, 1.0))
            self.sources.last_success.labels(source).set(time.time())


HEADLINES = (
    "Apple shares plunge after weak iPhone guidance",
    "Microsoft beats earnings estimates on cloud growth",
    "Fed holds rates steady, signals patience",
    "Oil prices slide as inventories rise",
    "Apple and Microsoft lead tech rally",
)


class FinsentRun:
    """The real labeler, `python -m finsent run`, fed by a producer thread (1 in 50 records is broken JSON,
    so that the dead-letter series exist without tripping the dead-letter alert)."""

    def __init__(self, noida: servers.Noida, workdir: Path) -> None:
        suffix = f"{random.randrange(16**8):08x}"
        self.raw, self.labeled, self.dead = f"ops-raw-{suffix}", f"ops-labeled-{suffix}", f"ops-dead-{suffix}"
        self.noida = noida
        self.port = servers.free_port()
        self.log_path = workdir / "finsent-run.log"
        self.env = {
            **os.environ,
            "FINSENT_KAFKA__BOOTSTRAP_SERVERS": noida.kafka,
            "FINSENT_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "FINSENT_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "FINSENT_ELASTICSEARCH__URL": noida.es_url,
            "FINSENT_ELASTICSEARCH__INDEX_PREFIX": f"ops{suffix}",
            "FINSENT_ELASTICSEARCH__NUMBER_OF_REPLICAS": "0",
            "FINSENT_METRICS__HOST": "127.0.0.1",
            "FINSENT_METRICS__PORT": str(self.port),
            "FINSENT_PIPELINE__INPUT_TOPICS": json.dumps([self.raw]),
            "FINSENT_PIPELINE__GROUP_ID": f"ops-{suffix}",
            "FINSENT_PIPELINE__LABELED_TOPIC": self.labeled,
            "FINSENT_PIPELINE__DEAD_LETTER_TOPIC": self.dead,
            "FINSENT_PIPELINE__BATCH_MAX_WAIT_MS": "100",
            "FINSENT_PIPELINE__METRICS_TICKERS": json.dumps(list(TRACKED_TICKERS)),
            "FINSENT_ALERTS__ENABLED": "false",
        }
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="deploy-producer", daemon=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FinsentRun:
        for topic, partitions in ((self.raw, 3), (self.labeled, 3), (self.dead, 1)):
            servers.create_topic(self.noida.kafka, topic, partitions)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "finsent", "run"],
                env=self.env,
                cwd=ds.REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"finsent run exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"http://{self.target()}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"finsent run not ready after {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def _produce(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.noida.kafka)
        rng = random.Random(5)
        n = 0
        try:
            while not self.stop.wait(0.2):
                for _ in range(5):
                    n += 1
                    if n % 50 == 0:
                        producer.send(self.raw, key=b"broken", value=b"{not json")
                        continue
                    source = rng.choice(("reuters", "sec-press"))
                    message = {
                        "id": f"ops-{n}",
                        "source": source,
                        "text": rng.choice(HEADLINES),
                        "tickers": [rng.choice(TRACKED_TICKERS), *(["XYZ"] if n % 3 == 0 else [])],
                        "published_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    }
                    producer.send(self.raw, key=source.encode(), value=json.dumps(message).encode())
                producer.flush()
        finally:
            producer.close()


@pytest.fixture(scope="module")
def metrics_targets(
    noida: servers.Noida, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    with FinsentRun(noida, tmp_path_factory.mktemp("finsent-run")) as labeler, SideWorkers() as side:
        yield {"finsent-labeler": labeler.target(), **side.targets()}


# ------------------------------------------------------------------------------------------ Prometheus


@pytest.fixture(scope="module")
def prometheus(metrics_targets: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rules = "\n".join(f"  - {p}" for p in ds.rule_files())
    jobs = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']"
        for job, target in metrics_targets.items()
    )
    config = (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
        f"rule_files:\n{rules}\nscrape_configs:\n{jobs}\n"
    )
    prom = servers.start_prometheus(tmp_path_factory.mktemp("prometheus"), config)
    try:
        wait_for_data(prom.url, jobs=len(metrics_targets))
        yield prom.url
    finally:
        prom.server.stop()


def api(url: str, path: str, params: dict[str, str] | None = None) -> Any:
    response = httpx.get(url + path, params=params, timeout=10)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
    return body["data"]


def wait_for_data(url: str, jobs: int, timeout: float = 60.0) -> None:
    """Until every target has been scraped a few times, labels have been flowing for a few scrapes (rates
    over 30 s need two samples), and every rule has been evaluated."""
    checks = (
        ("count_over_time(up[1m]) >= 6", jobs),
        ("count_over_time(finsent_labels_total[1m]) >= 4", 1),
        ("count_over_time(finsent_ticker_labels_total[1m]) >= 4", 1),
        ("count_over_time(finsent_messages_dead_lettered_total[1m]) >= 4", 1),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ok = all(len(api(url, "/api/v1/query", {"query": q})["result"]) >= n for q, n in checks)
            groups = api(url, "/api/v1/rules")["groups"]
        except (httpx.HTTPError, AssertionError):
            time.sleep(0.5)
            continue
        evaluated = all(r.get("lastEvaluation", "0001").startswith("20") for g in groups for r in g["rules"])
        if ok and groups and evaluated:
            return
        time.sleep(0.5)
    raise AssertionError("Prometheus did not collect enough samples in time")


def test_targets_are_up_and_scraped_under_the_rules_job_names(prometheus: str) -> None:
    result = api(prometheus, "/api/v1/query", {"query": 'up{job=~"finsent-.*"}'})["result"]
    assert {r["metric"]["job"]: r["value"][1] for r in result} == {
        "finsent-labeler": "1",
        "finsent-alerts": "1",
        "finsent-sources": "1",
    }


def test_every_rule_evaluates_without_error(prometheus: str) -> None:
    groups = api(prometheus, "/api/v1/rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r.name for r in ds.rules()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_every_rule_expression_runs(prometheus: str) -> None:
    for rule in ds.rules():
        api(prometheus, "/api/v1/query", {"query": rule.expr})


@pytest.mark.parametrize(
    "record",
    [
        "finsent:labels:rate5m",
        "finsent:labels:increase15m",
        "finsent:negative_share:ratio_rate5m",
        "finsent:negative_share:ratio_rate15m",
        "finsent:ticker_negative_share:ratio_rate15m",
        "finsent:consumer_lag_messages:sum",
        "finsent:dead_letter:ratio_rate10m",
    ],
)
def test_key_recording_rules_have_data(prometheus: str, record: str) -> None:
    assert api(prometheus, "/api/v1/query", {"query": record})["result"], record


def test_health_alerts_stay_quiet_on_a_healthy_pipeline(prometheus: str) -> None:
    firing = api(prometheus, "/api/v1/query", {"query": 'ALERTS{category="health"}'})["result"]
    assert [r["metric"]["alertname"] for r in firing] == []


def test_every_dashboard_prometheus_query_runs(prometheus: str) -> None:
    end = time.time()
    start = end - 60
    # pick dashboard variables as a user would: from the topics the model has produced and the tickers
    # Prometheus tracks (the Elasticsearch `ticker` variable is not used by any Prometheus query)
    topics = api(prometheus, "/api/v1/label/topic/values", {"match[]": "finsent_labels_total"})
    assert topics
    tracked = api(
        prometheus, "/api/v1/label/ticker/values", {"match[]": 'finsent_ticker_labels_total{ticker!="other"}'}
    )
    assert set(tracked) == set(TRACKED_TICKERS), "the untracked XYZ must be counted as other"
    variables = {"topic": topics[:2], "tracked_ticker": tracked[:2]}
    results: dict[str, list[Any]] = {}
    for dashboard in ds.dashboards().values():
        for query in ds.dashboard_queries(dashboard):
            if query.datasource_type != "prometheus":
                continue
            for call in ds.prom_calls(query, variables, start, end):
                data = api(prometheus, call.path, dict(call.params))
                results[query.where] = data if isinstance(data, list) else data["result"]
    assert results
    must_have_data = [
        "finsent / pipeline / Workers up / A",
        "finsent / pipeline / Messages consumed per second by source / A",
        "finsent / pipeline / Consumer lag per topic / A",
        "finsent / pipeline / Publish-to-label latency / B",
        "finsent / pipeline / Batch size / A",
        "finsent / pipeline / Dead letters per second by reason / A",
        "finsent / pipeline / Inference and output errors per second / B",
        "finsent / pipeline / Inference and output errors per second / C",
        "finsent / pipeline / Alerts firing / A",
        "finsent / pipeline / Seconds since last successful fetch / A",
        "finsent / sentiment / Negative share per topic (15m) / A",
        "finsent / sentiment / Negative share for selected tickers (tracked tickers) / A",
        "finsent / sentiment / variable topic",
        "finsent / sentiment / variable tracked_ticker",
        "finsent / model / Sentiment mix / A",
        "finsent / model / Mean confidence per head / A",
        "finsent / model / Confidence quantiles per head / A",
        "finsent / model / Model info / A",
    ]
    for where in must_have_data:
        assert results.get(where), f"{where}: no data"
    assert set(results["finsent / sentiment / variable topic"]) == set(topics)
    assert set(results["finsent / sentiment / variable tracked_ticker"]) == set(TRACKED_TICKERS)
    shown = {
        r["metric"]["ticker"]
        for r in results["finsent / sentiment / Negative share for selected tickers (tracked tickers) / A"]
    }
    assert shown == set(tracked[:2])


# --------------------------------------------------------------------------------------- Elasticsearch


def _events(now: datetime, prefix: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(index, id, document) shaped as the contract's Elasticsearch document."""
    rng = random.Random(11)
    docs = []
    for i in range(40):
        published = now - timedelta(minutes=rng.randint(1, 180))
        sentiment = rng.choice(("negative", "negative", "neutral", "positive"))
        probs = {"negative": 0.1, "neutral": 0.1, "positive": 0.1, sentiment: 0.8}
        tickers = rng.sample(["AAPL", "MSFT", "NVDA", "TSLA"], k=rng.randint(0, 2))
        doc_id = f"m{i}"
        doc: dict[str, Any] = {
            "id": doc_id,
            "source": rng.choice(("reuters", "sec-press")),
            "text": f"message {i} about {' '.join(tickers) or 'markets'}",
            "title": f"headline {i}",
            "url": f"https://news.example.com/{i}",
            "lang": "en",
            "author": None,
            "tickers": tickers,
            "published_at": published.isoformat().replace("+00:00", "Z"),
            "ingested_at": (published + timedelta(seconds=2)).isoformat().replace("+00:00", "Z"),
            "labeled_at": (published + timedelta(seconds=3)).isoformat().replace("+00:00", "Z"),
            "topic": rng.choice(("earnings", "macro")),
            "topic_score": 0.9,
            "sentiment": sentiment,
            "sentiment_score": 0.8,
            "sentiment_probs": probs,
            "content_hash": f"h{i}",
            "model_version": "test-model",
            "kafka": {"topic": "finsent.raw", "partition": i % 3, "offset": i},
        }
        docs.append((f"{prefix}-events-{published:%Y.%m.%d}", doc_id, doc))
    return docs


def _alerts(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    starts = now - timedelta(minutes=30)
    doc: dict[str, Any] = {
        "fingerprint": "fp1",
        "rule": "share",
        "key_type": "ticker",
        "key": "AAPL",
        "status": "firing",
        "severity": "warning",
        "starts_at": starts.isoformat().replace("+00:00", "Z"),
        "ends_at": None,
        "summary": "AAPL: negative share 0.72 vs baseline 0.20",
        "p_value": 0.0001,
        "negative_share": 0.72,
        "baseline_share": 0.2,
        "count": 50,
        "negative_count": 36,
    }
    return [(f"fp1:{doc['starts_at']}", doc)]


@pytest.fixture(scope="module")
def es_indices(noida: servers.Noida) -> Iterator[tuple[str, str]]:
    """Events and alerts indices with a unique prefix, set up as `finsent run` and `finsent alerts` do."""
    from finsent.alert_index import AlertIndex
    from finsent.outputs.es_client import make_client
    from finsent.outputs.es_setup import ensure_index_setup, events_setup
    from finsent.settings import ElasticsearchSettings

    prefix = f"ops{random.randrange(16**8):08x}"
    settings = ElasticsearchSettings(url=noida.es_url, index_prefix=prefix, number_of_replicas=0)
    client = make_client(settings)
    try:
        ensure_index_setup(client, events_setup(settings))
        now = datetime.now(UTC)
        for index, doc_id, doc in _events(now, prefix):
            client.index(index=index, id=doc_id, document=doc)
        AlertIndex(client, prefix).ensure()
        for doc_id, doc in _alerts(now):
            client.index(index=f"{prefix}-alerts", id=doc_id, document=doc)
        client.indices.refresh(index=f"{prefix}-*")
        yield noida.es_url, prefix
    finally:
        client.close()


def _es_index(datasource: dict[str, Any], prefix: str) -> str:
    """The datasource's index with the deployment's prefix (`finsent`) replaced by the test's."""
    index = str(datasource["jsonData"]["index"])
    assert index.startswith("finsent-"), index
    return prefix + index[len("finsent") :]


def test_every_dashboard_elasticsearch_query_runs(es_indices: tuple[str, str]) -> None:
    es_url, prefix = es_indices
    sources = ds.datasources()
    end = datetime.now(UTC)
    start_ms, end_ms = int((end - timedelta(hours=24)).timestamp() * 1000), int(end.timestamp() * 1000)
    answers: dict[str, dict[str, Any]] = {}
    for dashboard in ds.dashboards().values():
        for query in ds.dashboard_queries(dashboard):
            if query.datasource_type != "elasticsearch":
                continue
            source = sources[query.datasource_uid]
            body = ds.es_requests(query, source, _es_index(source, prefix), VARIABLES, start_ms, end_ms)
            response = httpx.post(f"{es_url}/{_es_index(source, prefix)}/_search", json=body, timeout=10)
            assert response.status_code == 200, f"{query.where}: {response.text}"
            answer = response.json()
            assert not answer.get("error") and not answer["_shards"]["failed"], f"{query.where}: {answer}"
            answers[query.where] = answer
    assert any(w.startswith("finsent / sentiment") for w in answers)

    top = answers["finsent / sentiment / Top negative tickers / A"]["aggregations"]["3"]["buckets"]
    assert top and all(b["doc_count"] > 0 and 0.0 < b["4"]["value"] <= 1.0 for b in top)
    tickers = answers["finsent / sentiment / variable ticker"]["aggregations"]["1"]["buckets"]
    assert {b["key"] for b in tickers} == {"AAPL", "MSFT", "NVDA", "TSLA"}
    volume = answers["finsent / sentiment / Volume per topic (Elasticsearch) / A"]["aggregations"]["3"][
        "buckets"
    ]
    assert {b["key"] for b in volume} == {"earnings", "macro"}
    assert sum(b["doc_count"] for t in volume for b in t["2"]["buckets"]) == sum(
        t["doc_count"] for t in volume
    )
    selected = answers["finsent / sentiment / Negative vs all messages for selected tickers / A"]
    split = selected["aggregations"]["3"]["buckets"]
    assert 0 < split["negative"]["doc_count"] < split["all"]["doc_count"]
    latest = answers["finsent / sentiment / Latest negative messages / A"]["hits"]["hits"]
    assert latest and all(h["_source"]["sentiment"] == "negative" for h in latest)
    annotations = answers["finsent / sentiment / annotation finsent alerts"]["hits"]["hits"]
    assert [h["_source"]["key"] for h in annotations] == ["AAPL"]


def test_dashboard_queries_exist_for_both_datasources() -> None:
    kinds = {q.datasource_type for d in ds.dashboards().values() for q in ds.dashboard_queries(d)}
    assert kinds == {"prometheus", "elasticsearch"}


def test_workers_expose_every_contract_metric(metrics_targets: dict[str, str]) -> None:
    """The names scraped are the ones fixed in docs/CONTRACTS.md."""
    text = "".join(httpx.get(f"http://{t}/metrics", timeout=5).text for t in metrics_targets.values())
    contract = (ds.REPO_ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    section = contract.split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(finsent_[a-z_]+)", section)) - {"finsent_up"}  # that one is Prometheus' `up`
    assert len(names) > 20
    for name in names:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", text, flags=re.MULTILINE), (
            f"{name} not exposed"
        )
