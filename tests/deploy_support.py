"""Helpers for the tests of deploy/: loading the files, listing every query they contain, and turning
Grafana's Elasticsearch panel targets into the search requests Grafana sends, so the tests can run them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests import servers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_TESTS_DIR = DEPLOY / "prometheus" / "tests"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
DATASOURCES_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "finsent.yaml"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"

# Aggregations the Elasticsearch-API test server (noida-db) answers; it rejects percentiles, composite,
# significant_terms and the pipeline aggregations, so the dashboards must do without them.
ES_BUCKET_AGGS = frozenset({"date_histogram", "terms", "filters", "histogram"})
ES_METRIC_AGGS = frozenset({"count", "avg", "sum", "min", "max", "cardinality"})
ES_RAW_METRICS = frozenset({"raw_data", "raw_document", "logs"})

# Values used for Grafana's built-in and dashboard variables when running queries outside Grafana.
PROM_BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}


def promtool() -> str:
    return servers.debian_binary("promtool")


def run(argv: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


@dataclass(frozen=True)
class Rule:
    kind: str  # "record" or "alert"
    name: str
    expr: str
    raw: Mapping[str, Any]


def rules() -> list[Rule]:
    """Every recording and alerting rule of deploy/prometheus/rules."""
    found = []
    for path in rule_files():
        for group in load_yaml_docs(path)[0]["groups"]:
            for r in group["rules"]:
                kind = "record" if "record" in r else "alert"
                found.append(Rule(kind=kind, name=r[kind], expr=r["expr"], raw=r))
    return found


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def datasources() -> dict[str, dict[str, Any]]:
    """Provisioned Grafana datasources by uid."""
    return {d["uid"]: d for d in load_yaml_docs(DATASOURCES_FILE)[0]["datasources"]}


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def target_datasource(panel: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    ds = target.get("datasource") or panel.get("datasource")
    if not isinstance(ds, dict):
        raise AssertionError(f"panel {panel.get('title')!r}: datasource must be given as {{type, uid}}")
    return ds


@dataclass(frozen=True)
class Query:
    """One query found in a dashboard: where it is, which datasource, and the query itself."""

    where: str
    datasource_uid: str
    datasource_type: str
    body: Mapping[str, Any]
    repeat: str | None = None  # the variable the panel is repeated over (one clone per value)


def panel_variables(query: Query, variables: Mapping[str, Sequence[str]]) -> Mapping[str, Sequence[str]]:
    """The variables as one panel sees them: Grafana clones a panel repeated over a variable once per
    selected value, each clone with that single value (here the first clone's)."""
    if query.repeat and len(variables.get(query.repeat, ())) > 1:
        return {**variables, query.repeat: list(variables[query.repeat])[:1]}
    return variables


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every query of a dashboard: panel targets, template variables and annotations."""
    found = []
    title = dashboard["title"]
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            ds = target_datasource(panel, target)
            where = f"{title} / {panel['title']} / {target['refId']}"
            found.append(Query(where, ds["uid"], ds["type"], target, panel.get("repeat")))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            ds = var["datasource"]
            query = var["query"]
            body = query if isinstance(query, dict) else {"query": query}
            found.append(
                Query(f"{title} / variable {var['name']}", ds["uid"], ds["type"], {"variable": body})
            )
    for anno in dashboard.get("annotations", {}).get("list", []):
        if anno.get("builtIn"):
            continue
        ds = anno["datasource"]
        found.append(
            Query(f"{title} / annotation {anno['name']}", ds["uid"], ds["type"], {"annotation": anno})
        )
    return found


# ------------------------------------------------------------------------------------------- Prometheus


def _regex_value(values: Sequence[str]) -> str:
    """Grafana's prometheusRegularEscape: regex metacharacters escaped inside a PromQL string literal
    (so the backslash itself is doubled), e.g. `Energy | Oil` -> `Energy \\\\| Oil`."""
    escaped = [re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", v.replace("\\", "\\\\\\\\")) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate_promql(expr: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Replace Grafana variables the way Grafana does for Prometheus (multi-values as a regex group)."""
    for name, value in PROM_BUILTINS.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", _regex_value(variables[name]))
        expr = expr.replace("$" + name, _regex_value(variables[name]))
    if "$" in expr:
        raise AssertionError(f"unknown variable left in {expr!r}")
    return expr


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<match>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$")


@dataclass(frozen=True)
class PromCall:
    """A Prometheus HTTP API call: path and query parameters."""

    path: str
    params: Mapping[str, str]


def prom_calls(
    query: Query, variables: Mapping[str, Sequence[str]], start: float, end: float
) -> list[PromCall]:
    """The HTTP API calls Grafana makes for one Prometheus query of a dashboard."""
    body = query.body
    variables = panel_variables(query, variables)
    if "variable" in body:
        text = body["variable"]["query"]
        m = _LABEL_VALUES.match(text)
        if m is None:
            raise AssertionError(
                f"{query.where}: only label_values(...) variables are supported, got {text!r}"
            )
        params = {"start": str(start), "end": str(end)}
        if m.group("match"):
            params["match[]"] = interpolate_promql(m.group("match"), variables)
        return [PromCall(f"/api/v1/label/{m.group('label')}/values", params)]
    expr = body["annotation"]["expr"] if "annotation" in body else body["expr"]
    expr = interpolate_promql(expr, variables)
    if body.get("instant") and not body.get("range"):
        return [PromCall("/api/v1/query", {"query": expr, "time": str(end)})]
    return [
        PromCall("/api/v1/query_range", {"query": expr, "start": str(start), "end": str(end), "step": "1"})
    ]


def all_promql(variables: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel/annotation expression and every rule, interpolated."""
    found = []
    for dashboard in dashboards().values():
        for q in dashboard_queries(dashboard):
            if q.datasource_type != "prometheus" or "variable" in q.body:
                continue
            expr = q.body["annotation"]["expr"] if "annotation" in q.body else q.body["expr"]
            found.append((q.where, interpolate_promql(expr, panel_variables(q, variables))))
    found += [(f"rule {r.name}", r.expr) for r in rules()]
    return found


# ---------------------------------------------------------------------------------------- Elasticsearch


def _lucene_value(values: Sequence[str]) -> str:
    def escape(v: str) -> str:
        return re.sub(r'([+\-=&|><!(){}\[\]^"~*?:\\/ ])', r"\\\1", v)

    if len(values) == 1:
        return escape(values[0])
    return "(" + " OR ".join('"' + v.replace('"', '\\"') + '"' for v in values) + ")"


def interpolate_lucene(query: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Replace Grafana variables the way Grafana does for Lucene (multi-values as `("a" OR "b")`)."""
    for name in sorted(variables, key=len, reverse=True):
        query = query.replace("${" + name + "}", _lucene_value(variables[name]))
        query = query.replace("$" + name, _lucene_value(variables[name]))
    if "$" in query:
        raise AssertionError(f"unknown variable left in {query!r}")
    return query


def _time_filter(time_field: str, start_ms: int, end_ms: int, lucene: str) -> dict[str, Any]:
    return {
        "bool": {
            "filter": [
                {"range": {time_field: {"gte": start_ms, "lte": end_ms, "format": "epoch_millis"}}},
                {"query_string": {"query": lucene or "*", "analyze_wildcard": True}},
            ]
        }
    }


def _bucket_agg(agg: Mapping[str, Any], start_ms: int, end_ms: int) -> dict[str, Any]:
    kind = agg["type"]
    settings = agg.get("settings", {})
    if kind not in ES_BUCKET_AGGS:
        raise AssertionError(f"bucket aggregation {kind!r} is not supported by the test server")
    if kind == "date_histogram":
        interval = settings.get("interval", "auto")
        if interval == "auto":
            interval = "1m" if end_ms - start_ms <= 6 * 3600_000 else "10m"
        return {
            "date_histogram": {
                "field": agg["field"],
                "fixed_interval": interval,
                "min_doc_count": int(settings.get("min_doc_count", 0)),
                "extended_bounds": {"min": start_ms, "max": end_ms},
                "format": "epoch_millis",
            }
        }
    if kind == "terms":
        order_by = settings.get("orderBy", "_count")
        order_key = {"_term": "_key", "_key": "_key", "_count": "_count"}.get(order_by, order_by)
        return {
            "terms": {
                "field": agg["field"],
                "size": int(settings.get("size", 10)),
                "order": {order_key: settings.get("order", "desc")},
                "min_doc_count": int(settings.get("min_doc_count", 1)),
            }
        }
    if kind == "filters":
        return {
            "filters": {
                "filters": {
                    (f.get("label") or f["query"]): {
                        "query_string": {"query": f["query"], "analyze_wildcard": True}
                    }
                    for f in settings["filters"]
                }
            }
        }
    return {"histogram": {"field": agg["field"], "interval": float(settings.get("interval", 1))}}


def es_search_body(
    target: Mapping[str, Any],
    time_field: str,
    variables: Mapping[str, Sequence[str]],
    start_ms: int,
    end_ms: int,
) -> dict[str, Any]:
    """The `_search` body Grafana's Elasticsearch datasource sends for one panel target."""
    lucene = interpolate_lucene(target.get("query") or "*", variables)
    metrics = target.get("metrics") or [{"id": "1", "type": "count"}]
    query = _time_filter(target.get("timeField") or time_field, start_ms, end_ms, lucene)
    for m in metrics:
        if m["type"] not in ES_METRIC_AGGS | ES_RAW_METRICS:
            raise AssertionError(f"metric aggregation {m['type']!r} is not supported by the test server")
    if metrics[0]["type"] in ES_RAW_METRICS:
        size = int(metrics[0].get("settings", {}).get("size", 500))
        return {
            "size": size,
            "query": query,
            "sort": [{time_field: {"order": "desc", "unmapped_type": "boolean"}}],
        }
    inner: dict[str, Any] = {
        m["id"]: {m["type"]: {"field": m["field"]}} for m in metrics if m["type"] != "count"
    }
    for agg in reversed(target.get("bucketAggs") or []):
        built = _bucket_agg(agg, start_ms, end_ms)
        if inner:
            built["aggs"] = inner
        inner = {agg["id"]: built}
    body: dict[str, Any] = {"size": 0, "query": query}
    if inner:
        body["aggs"] = inner
    return body


def es_requests(
    query: Query,
    datasource: Mapping[str, Any],
    index: str,
    variables: Mapping[str, Sequence[str]],
    start_ms: int,
    end_ms: int,
) -> dict[str, Any]:
    """The `_search` body for one Elasticsearch query of a dashboard (panel, variable or annotation)."""
    time_field = datasource["jsonData"]["timeField"]
    body = query.body
    variables = panel_variables(query, variables)
    if "variable" in body:
        spec = json.loads(body["variable"]["query"])
        if spec.get("find") != "terms":
            raise AssertionError(f"{query.where}: only terms variables are supported")
        lucene = interpolate_lucene(spec.get("query", "*"), variables)
        return {
            "size": 0,
            "query": _time_filter(time_field, start_ms, end_ms, lucene),
            "aggs": {"1": {"terms": {"field": spec["field"], "size": int(spec.get("size", 500))}}},
        }
    if "annotation" in body:
        anno = body["annotation"]
        target = anno.get("target", {})
        lucene = interpolate_lucene(target.get("query") or anno.get("query") or "*", variables)
        anno_time = anno.get("timeField") or time_field
        return {
            "size": int(target.get("limit", 100)),
            "query": _time_filter(anno_time, start_ms, end_ms, lucene),
            "sort": [{anno_time: {"order": "desc"}}],
        }
    return es_search_body(body, time_field, variables, start_ms, end_ms)


# ---------------------------------------------------------------------------------- Prometheus Operator

PROMETHEUS_RULE_FILE = K8S_DIR / "prometheusrule.yaml"
PROMETHEUS_RULE_HEADER = (
    "# Generated from deploy/prometheus/rules/*.yml for the Prometheus Operator; do not edit by hand.\n"
    "# Regenerate: python -c 'from tests.deploy_support import *; write_prometheus_rule()'\n"
)


def prometheus_rule_manifest() -> str:
    """deploy/prometheus/rules as one PrometheusRule resource (same groups, same rules)."""
    groups = [g for path in rule_files() for g in load_yaml_docs(path)[0]["groups"]]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "finsent",
            "labels": {"app.kubernetes.io/name": "finsent", "release": "prometheus"},
        },
        "spec": {"groups": groups},
    }
    return PROMETHEUS_RULE_HEADER + yaml.safe_dump(manifest, sort_keys=False, width=110)


def write_prometheus_rule() -> None:
    PROMETHEUS_RULE_FILE.write_text(prometheus_rule_manifest(), encoding="utf-8")


ALERTMANAGER_FILE = DEPLOY / "alertmanager" / "alertmanager.yml"


def start_example_alertmanager(tmp_path: Path) -> servers.Alertmanager:
    """A real Alertmanager on the example config, its secret files (the Slack webhook, the SMTP password)
    written under `tmp_path`: the Slack URL goes nowhere."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "slack_webhook_url").write_text("http://127.0.0.1:9/slack\n")
    (secrets / "smtp_password").write_text("unused\n")
    config = ALERTMANAGER_FILE.read_text(encoding="utf-8").replace("/etc/alertmanager/secrets", str(secrets))
    return servers.start_alertmanager(tmp_path / "am", config)


def render_analysts_template(tmp_path: Path, template: str, data: Mapping[str, Any]) -> str:
    """The example config's analysts Slack `template` (title, text) rendered by amtool for the
    notification `data` (receiver, status, alerts, commonLabels, ...), as Alertmanager would."""
    config = load_yaml_docs(ALERTMANAGER_FILE)[0]
    (receiver,) = [r for r in config["receivers"] if r["name"] == "analysts"]
    (tmp_path / "data.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "none.tmpl").write_text("", encoding="utf-8")
    result = run(
        [
            servers.debian_binary("amtool"),
            "template",
            "render",
            f"--template.glob={tmp_path / 'none.tmpl'}",
            f"--template.text={receiver['slack_configs'][0][template]}",
            f"--template.data={tmp_path / 'data.json'}",
        ]
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
