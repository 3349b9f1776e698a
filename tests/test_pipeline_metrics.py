"""PipelineMetrics' bounded label values and per-batch counting (no server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from finsent.metrics import MAX_SOURCE_LABELS, PipelineMetrics


def test_sources_beyond_the_cap_are_counted_as_other() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    names = [f"s{i}" for i in range(MAX_SOURCE_LABELS)]
    assert [metrics.source_label(n) for n in names] == names
    assert metrics.source_label("one-too-many") == "other"
    assert metrics.source_label("s0") == "s0"  # known sources keep their name
    metrics.count_consumed(["s0", "s0", "brand-new", "s1"])
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "s0"}) == 2
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "s1"}) == 1
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "other"}) == 1
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "brand-new"}) is None


def test_count_consumed_adds_up_a_poll() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.count_consumed(["news", "unknown", "news"])
    metrics.count_consumed([])
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "news"}) == 2
    assert registry.get_sample_value("finsent_messages_consumed_total", {"source": "unknown"}) == 1
