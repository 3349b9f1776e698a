"""What every worker's /metrics carries besides its own series, and the series that exist from the start."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from finsent.alert_metrics import AlertMetrics
from finsent.registry import worker_registry
from ingest.sources.metrics import ERROR_KINDS, SourceMetrics

ROOT = Path(__file__).resolve().parent.parent


def test_a_workers_registry_has_the_process_series_and_no_created_ones() -> None:
    registry = worker_registry()
    SourceMetrics(registry).init_source("wire", 0.0)
    body = generate_latest(registry).decode()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if not line.startswith("#")}
    assert {
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
    } <= names
    assert "python_info" in names and any(n.startswith("python_gc_") for n in names)
    assert not [n for n in names if n.endswith("_created")]


def test_every_source_error_kind_exists_at_zero_from_the_start() -> None:
    """increase() misses a series' first increment: a source's first timeouts would not count."""
    registry = CollectorRegistry()
    SourceMetrics(registry).init_source("wire", 0.0)
    for kind in ERROR_KINDS:
        labels = {"source": "wire", "kind": kind}
        assert registry.get_sample_value("finsent_source_errors_total", labels) == 0.0


def test_the_error_kinds_are_the_ones_the_docs_list() -> None:
    docs = (ROOT / "docs" / "sources.md").read_text(encoding="utf-8")
    section = docs[docs.index("`finsent_source_errors_total{source,kind}`") :]
    section = section[: section.index("- `finsent_source_last_success")]
    for kind in ERROR_KINDS:
        assert f"`{kind}`" in section, kind


def test_every_watched_rule_and_key_type_exists_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    metrics = AlertMetrics(registry)
    metrics.init_rules(("share", "volume"), ("ticker", "topic"))
    for rule in ("share", "volume"):
        for key_type in ("ticker", "topic"):
            labels = {"rule": rule, "key_type": key_type}
            assert registry.get_sample_value("finsent_alerts_firing", labels) == 0.0
            assert registry.get_sample_value("finsent_alerts_resolved_total", labels) == 0.0
            for severity in ("warning", "critical"):
                fired = {**labels, "severity": severity}
                assert registry.get_sample_value("finsent_alerts_fired_total", fired) == 0.0
    assert registry.get_sample_value("finsent_alerts_firing", {"rule": "share", "key_type": "source"}) is None


def test_the_pipeline_and_the_alert_worker_share_one_lag_gauge_on_one_registry() -> None:
    """`finsent run` serves both on one registry: a second Gauge of the name was a duplicate error."""
    from finsent.metrics import PipelineMetrics

    registry = CollectorRegistry()
    alerts = AlertMetrics(registry)
    pipeline = PipelineMetrics(registry)
    assert alerts.lag is pipeline.lag
    alerts.set_lag("finsent.labeled", 0, 7)
    pipeline.lag.labels(topic="finsent.raw", partition="0").set(3)
    labeled = {"topic": "finsent.labeled", "partition": "0"}
    assert registry.get_sample_value("finsent_consumer_lag_messages", labeled) == 7
    alerts.forget_partition(0, "finsent.labeled")
    assert registry.get_sample_value("finsent_consumer_lag_messages", labeled) is None
    assert (
        registry.get_sample_value("finsent_consumer_lag_messages", {"topic": "finsent.raw", "partition": "0"})
        == 3
    )
