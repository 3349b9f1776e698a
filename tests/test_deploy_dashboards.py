"""Grafana provisioning and dashboards in deploy/grafana: structure, datasources, queries that parse, metric
names from the contract, and Elasticsearch aggregations on fields the index mapping has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from finsent.outputs.es_documents import EVENTS_MAPPINGS
from tests import deploy_support as ds

DASHBOARDS = ds.dashboards()
CONTRACT = (ds.REPO_ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
CONTRACT_METRICS = set(
    re.findall(r"`(finsent_[a-z_]+)", CONTRACT.split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0])
)
ALERT_FIELDS = set(re.findall(r"`(\w+)`", CONTRACT.split("Alerts: index", 1)[1].split("\n## ", 1)[0])) - {
    "_id",
    "fingerprint:starts_at",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _mapped_fields(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, spec in properties.items():
        if "properties" in spec:
            fields |= _mapped_fields(spec["properties"], f"{prefix}{name}.")
        else:
            fields[prefix + name] = spec["type"]
            for sub, sub_spec in spec.get("fields", {}).items():
                fields[f"{prefix}{name}.{sub}"] = sub_spec["type"]
    return fields


EVENT_FIELDS = _mapped_fields(EVENTS_MAPPINGS["properties"])


def test_three_dashboards_with_unique_uids_and_panel_ids() -> None:
    assert set(DASHBOARDS) == {"finsent-pipeline", "finsent-sentiment", "finsent-model"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and set(uids) == set(DASHBOARDS)
    for name, dashboard in DASHBOARDS.items():
        assert dashboard["title"] and dashboard["schemaVersion"] >= 36, name
        assert "id" not in dashboard or dashboard["id"] is None, f"{name}: provisioned dashboards carry no id"
        ids = [p["id"] for p in ds.all_panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in ds.all_panels(dashboard):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, f"{name}/{panel['title']}"
            if panel["type"] != "row":
                assert panel["targets"], f"{name}/{panel['title']} has no query"
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:  # the top level: a collapsed row's panels are laid out on expanding
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def test_panels_use_provisioned_datasources() -> None:
    sources = ds.datasources()
    assert {s["type"] for s in sources.values()} == {"prometheus", "elasticsearch"}
    for dashboard in DASHBOARDS.values():
        for query in ds.dashboard_queries(dashboard):
            assert query.datasource_uid in sources, (
                f"{query.where}: unknown datasource {query.datasource_uid}"
            )
            assert sources[query.datasource_uid]["type"] == query.datasource_type, query.where


def test_datasources_point_at_the_contract_indices() -> None:
    sources = ds.datasources()
    assert sources["finsent-es-events"]["jsonData"] == {
        **sources["finsent-es-events"]["jsonData"],
        "index": "finsent-events",
        "timeField": "published_at",
    }
    assert sources["finsent-es-alerts"]["jsonData"]["index"] == "finsent-alerts"
    assert sources["finsent-es-alerts"]["jsonData"]["timeField"] == "starts_at"
    assert "published_at" in EVENT_FIELDS and "starts_at" in ALERT_FIELDS


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    provider_file = ds.DEPLOY / "grafana" / "provisioning" / "dashboards" / "finsent.yaml"
    (provider,) = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (no server needed)."""
    exprs = ds.all_promql(
        {"topic": ["earnings"], "ticker": ["AAPL", "MSFT"], "tracked_ticker": ["AAPL", "MSFT"]}
    )
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = ds.run([ds.promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promql_uses_only_contract_metrics_and_recording_rules() -> None:
    records = {r.name for r in ds.rules() if r.kind == "record"}
    for where, expr in ds.all_promql({"topic": ["earnings"], "ticker": ["AAPL"], "tracked_ticker": ["AAPL"]}):
        for name in re.findall(r"\b(finsent_[a-z_]+)", expr):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert name in CONTRACT_METRICS or base in CONTRACT_METRICS, (
                f"{where}: {name} is not in CONTRACTS.md"
            )
        for name in re.findall(r"\b(finsent:[a-z_0-9:]+)", expr):
            assert name in records, f"{where}: no recording rule {name}"


def test_variables_used_are_defined() -> None:
    builtins = {"__rate_interval", "__interval", "__range", "__all"}
    for name, dashboard in DASHBOARDS.items():
        defined = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
        text = str([p.get("targets") for p in ds.all_panels(dashboard)])
        used = set(re.findall(r"\$\{?(\w+)", text)) - builtins
        assert used <= defined, f"{name}: undefined variables {used - defined}"


def _es_targets() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for dashboard in DASHBOARDS.values():
        for query in ds.dashboard_queries(dashboard):
            if (
                query.datasource_type == "elasticsearch"
                and "variable" not in query.body
                and "annotation" not in query.body
            ):
                found.append((query.where, query.datasource_uid, dict(query.body)))
    return found


def test_elasticsearch_queries_use_supported_aggregations_on_mapped_fields() -> None:
    targets = _es_targets()
    assert targets
    for where, uid, target in targets:
        assert uid == "finsent-es-events", where
        for agg in target.get("bucketAggs", []):
            assert agg["type"] in ds.ES_BUCKET_AGGS, f"{where}: {agg['type']} is not supported"
            if agg["type"] == "terms":
                assert EVENT_FIELDS.get(agg["field"]) == "keyword", f"{where}: terms on {agg['field']}"
            if agg["type"] == "date_histogram":
                assert EVENT_FIELDS.get(agg["field"]) == "date", f"{where}: date_histogram on {agg['field']}"
        for metric in target.get("metrics", []):
            assert metric["type"] in ds.ES_METRIC_AGGS | ds.ES_RAW_METRICS, f"{where}: {metric['type']}"
            if metric["type"] in {"avg", "sum", "min", "max"}:
                assert EVENT_FIELDS.get(metric["field"]) in {"float", "integer", "long"}, where
        for field in re.findall(r"\b([a-z_.]+):", target.get("query", "")):
            assert field in EVENT_FIELDS, f"{where}: query on unmapped field {field}"


@pytest.mark.parametrize(
    "aggregation",
    ["percentiles", "composite", "significant_terms", "moving_avg", "derivative", "bucket_script"],
)
def test_translation_rejects_aggregations_the_server_does_not_support(aggregation: str) -> None:
    target = {
        "query": "*",
        "metrics": [{"id": "1", "type": aggregation, "field": "sentiment_score"}],
        "bucketAggs": [],
    }
    with pytest.raises(AssertionError, match="not supported"):
        ds.es_search_body(target, "published_at", {}, 0, 1)
    target = {
        "query": "*",
        "metrics": [{"id": "1", "type": "count"}],
        "bucketAggs": [{"id": "2", "type": aggregation, "field": "topic"}],
    }
    with pytest.raises(AssertionError, match="not supported"):
        ds.es_search_body(target, "published_at", {}, 0, 1)


def test_alert_annotations_come_from_the_alerts_index() -> None:
    annotations = DASHBOARDS["finsent-sentiment"]["annotations"]["list"]
    (es_anno,) = [a for a in annotations if a.get("datasource", {}).get("uid") == "finsent-es-alerts"]
    assert es_anno["enable"] is True
    assert {
        es_anno["timeField"],
        es_anno["timeEndField"],
        es_anno["textField"],
        es_anno["tagsField"],
    } <= ALERT_FIELDS


def _exprs(name: str) -> str:
    return "\n".join(
        str(q.body.get("expr", ""))
        + str(q.body.get("bucketAggs", ""))
        + str(q.body.get("metrics", ""))
        + str(q.body.get("query", ""))
        for q in ds.dashboard_queries(DASHBOARDS[name])
    )


def test_pipeline_dashboard_covers_throughput_lag_latency_batches_errors_dead_letters() -> None:
    text = _exprs("finsent-pipeline")
    for metric in (
        "finsent_messages_consumed_total",
        "finsent:consumer_lag_messages:sum",
        "finsent_publish_to_label_seconds_bucket",
        "finsent_inference_seconds_bucket",
        "finsent_batch_size_messages",
        "finsent_inference_errors_total",
        "finsent_output_errors_total",
        "finsent_messages_dead_lettered_total",
    ):
        assert metric in text, metric


def test_every_metric_a_health_alert_reads_is_on_the_pipeline_dashboard() -> None:
    """The on-call must find what a health alert fired on (FinsentOutputErrors also reads the alert
    worker's finsent_alert_output_errors_total, for instance)."""
    shown = _exprs("finsent-pipeline")
    for rule in ds.rules():
        if rule.kind != "alert" or rule.raw["labels"]["category"] != "health":
            continue
        for name in set(re.findall(r"\b(finsent_[a-z_]+|finsent:[a-z_0-9:]+)", rule.expr)):
            assert name in shown, (
                f"alert {rule.name} reads {name}, which the pipeline dashboard does not show"
            )


def test_promql_counts_are_per_second_rates_not_zoom_dependent_increases() -> None:
    """increase() over $__rate_interval changes with the zoom (the interval grows with the range): a panel
    of counts over time shows rate() per second instead."""
    for dashboard in DASHBOARDS.values():
        for query in ds.dashboard_queries(dashboard):
            expr = str(query.body.get("expr", ""))
            assert not re.search(r"increase\([^)]*\[\$__rate_interval\]", expr), query.where


def test_day_totals_are_instant_queries() -> None:
    """increase(...[1d]) is one number per day: as a range query it would be evaluated, overlapping, at every
    step of the time range."""
    for dashboard in DASHBOARDS.values():
        for query in ds.dashboard_queries(dashboard):
            if "[1d" in str(query.body.get("expr", "")):
                assert query.body["instant"] is True and query.body["range"] is False, query.where


def test_watermark_lag_leaves_out_unknown_partitions_and_counts_them() -> None:
    """The watermark gauge is 0 while unknown: time() - 0 would plot some 1.7e9 seconds."""
    queries = ds.dashboard_queries(DASHBOARDS["finsent-pipeline"])
    exprs = [str(q.body.get("expr", "")) for q in queries]
    behind = [e for e in exprs if e.startswith("time()") and "finsent_alert_input_labeled_until_seconds" in e]
    assert behind and all("finsent_alert_input_labeled_until_seconds > 0)" in e for e in behind)
    assert any(
        e.startswith("count(") and "finsent_alert_input_labeled_until_seconds) == 0" in e for e in exprs
    )


def test_consumer_lag_is_described_as_the_code_computes_it() -> None:
    """The labeler's gauge is log end minus the next offset to poll, not minus the committed offset."""
    for panel in ds.all_panels(DASHBOARDS["finsent-pipeline"]):
        if "consumer_lag" in str(panel.get("targets")):
            assert "committed position" not in panel["description"], panel["title"]
            assert "next offset" in panel["description"], panel["title"]


def test_elasticsearch_ticker_panels_show_only_the_selected_tickers() -> None:
    """A message mentions several tickers: under a `$ticker` filter, a terms aggregation on `tickers` would
    also make buckets for the tickers not picked that those messages mention. A per-ticker panel repeats
    over the variable instead, one ticker per clone."""
    for where, _, target in _es_targets():
        if re.search(r"\$\{?ticker\b", target.get("query", "")):
            terms = [a for a in target.get("bucketAggs", []) if a["type"] == "terms"]
            assert all(a["field"] != "tickers" for a in terms), f"{where}: split by tickers"
    dashboard = DASHBOARDS["finsent-sentiment"]
    (panel,) = [p for p in ds.all_panels(dashboard) if p["title"].startswith("Mean negative probability")]
    assert panel["repeat"] == "ticker" and panel["repeatDirection"] == "h" and "$ticker" in panel["title"]
    (target,) = panel["targets"]
    assert target["query"] == 'tickers:"$ticker"'
    assert [a["type"] for a in target["bucketAggs"]] == ["date_histogram"]
    assert [m["field"] for m in target["metrics"]] == ["sentiment_probs.negative"]
    # a repeated panel's queries run with one value of its variable, as each of Grafana's clones does
    (query,) = [q for q in ds.dashboard_queries(dashboard) if q.body is target]
    source = ds.datasources()["finsent-es-events"]
    body = ds.es_requests(query, source, "finsent-events", {"ticker": ["AAPL", "MSFT"]}, 0, 1)
    assert body["query"]["bool"]["filter"][1]["query_string"]["query"] == 'tickers:"AAPL"'


def test_sentiment_dashboard_covers_topics_tickers_top_negative_volume_and_alerts() -> None:
    dashboard = DASHBOARDS["finsent-sentiment"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["ticker"]["multi"] is True
    # Grafana lists terms in term order unless told otherwise: the first 100 would stop in the Bs
    for field in ("query", "definition"):
        query = json.loads(variables["ticker"][field])
        assert query["find"] == "terms" and query["orderBy"] == "doc_count", field
    text = _exprs("finsent-sentiment")
    assert "finsent:negative_share:ratio_rate15m" in text
    assert "tickers:($ticker)" in text
    # Prometheus has series only for the tracked tickers (pipeline.metrics_tickers; the rest is "other"):
    # its panels pick from them, not from the Elasticsearch `ticker` list, whose picks are mostly untracked
    tracked = variables["tracked_ticker"]
    assert tracked["datasource"]["type"] == "prometheus"
    assert tracked["query"]["query"] == 'label_values(finsent_ticker_labels_total{ticker!="other"}, ticker)'
    assert tracked["multi"] is True and tracked["includeAll"] is True
    assert tracked["current"] == {"text": "All", "value": "$__all"}
    prometheus = [q for q in ds.dashboard_queries(dashboard) if q.datasource_type == "prometheus"]
    ticker_exprs = [
        str(q.body.get("expr", "")) for q in prometheus if "ticker" in str(q.body.get("expr", ""))
    ]
    assert ticker_exprs and all('ticker=~"$tracked_ticker"' in e for e in ticker_exprs)
    assert not any(re.search(r"\$\{?ticker\b", str(q.body)) for q in prometheus)
    titles = {p["title"] for p in ds.all_panels(dashboard)}
    assert {"Top negative tickers", "Volume per topic (Elasticsearch)"} <= titles


def test_model_dashboard_covers_label_mix_and_confidence() -> None:
    text = _exprs("finsent-model")
    assert "sum by (sentiment) (rate(finsent_labels_total" in text
    assert "finsent_label_confidence_bucket" in text and "finsent_label_confidence_sum" in text
