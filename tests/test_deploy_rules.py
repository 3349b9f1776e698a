"""Prometheus rules and Alertmanager configuration in deploy/: valid for the real tools, every rule
unit-tested with `promtool test rules`, every alert routed and documented."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerts.model import ALERT_NAMES
from tests import deploy_support as ds
from tests import servers

pytestmark = pytest.mark.prometheus

DOCS = ds.REPO_ROOT / "docs" / "operations.md"
ALERTMANAGER_FILE = ds.ALERTMANAGER_FILE
PROMETHEUS_FILE = ds.DEPLOY / "prometheus" / "prometheus.yml"


def test_rule_files_pass_promtool_check() -> None:
    files = ds.rule_files()
    assert {f.name for f in files} >= {"finsent-recording.yml", "finsent-health.yml", "finsent-sentiment.yml"}
    result = ds.run([ds.promtool(), "check", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    files = ds.rule_test_files()
    assert files
    result = ds.run([ds.promtool(), "test", "rules", *(f.name for f in files)], cwd=ds.RULE_TESTS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)


def test_every_rule_has_a_unit_test() -> None:
    tested_alerts: set[str] = set()
    tested_exprs: list[str] = []
    for path in ds.rule_test_files():
        doc = ds.load_yaml_docs(path)[0]
        for case in doc["tests"]:
            tested_alerts |= {a["alertname"] for a in case.get("alert_rule_test", []) if a.get("exp_alerts")}
            tested_exprs += [e["expr"] for e in case.get("promql_expr_test", []) if e.get("exp_samples")]
    for rule in ds.rules():
        if rule.kind == "alert":
            assert rule.name in tested_alerts, f"alert {rule.name} has no test in which it fires"
        else:
            assert any(re.search(rf"(?<![\w:]){re.escape(rule.name)}(?![\w:])", e) for e in tested_exprs), (
                f"recording rule {rule.name} has no promql_expr_test"
            )


def test_rule_tests_load_only_existing_rule_files() -> None:
    for path in ds.rule_test_files():
        for rule_file in ds.load_yaml_docs(path)[0]["rule_files"]:
            assert (path.parent / rule_file).resolve().is_file(), f"{path.name}: {rule_file} does not exist"


def test_alerts_have_severity_category_and_a_runbook_section() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    anchors = {m.lower() for m in re.findall(r"^#+\s+(\S+)", docs, flags=re.MULTILINE)}
    for rule in ds.rules():
        if rule.kind != "alert":
            continue
        labels = rule.raw.get("labels", {})
        assert labels.get("severity") in {"critical", "warning"}, rule.name
        assert labels.get("category") in {"health", "sentiment"}, rule.name
        assert rule.raw.get("annotations", {}).get("summary"), rule.name
        if labels["category"] == "health":
            assert rule.raw["annotations"]["runbook"] == f"docs/operations.md#{rule.name.lower()}"
        assert rule.name.lower() in anchors, f"docs/operations.md has no section for {rule.name}"


def test_no_prometheus_rule_shares_a_name_with_the_alert_workers_alerts() -> None:
    """Both reach Alertmanager: one name for two alerts would make a silence or an `alertname` query
    catch both."""
    rules = {r.name for r in ds.rules() if r.kind == "alert"}
    assert rules and not rules & set(ALERT_NAMES.values())


def test_sentiment_alerts_use_minimum_count_for_and_keep_firing_for() -> None:
    spikes = [r for r in ds.rules() if r.kind == "alert" and r.raw["labels"]["category"] == "sentiment"]
    assert {r.name for r in spikes} == {
        "FinsentTopicNegativeSentimentSpike",
        "FinsentTickerNegativeSentimentSpike",
    }
    for rule in spikes:
        assert "increase15m >=" in rule.expr, rule.name
        assert rule.raw["for"] and rule.raw["keep_firing_for"], rule.name


def test_source_silent_rule_reads_the_sources_metric() -> None:
    (rule,) = [r for r in ds.rules() if r.name == "FinsentSourceSilent"]
    assert "finsent_source_last_success_timestamp_seconds" in rule.expr


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = ds.run([ds.promtool(), "check", "config", str(PROMETHEUS_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = ds.load_yaml_docs(PROMETHEUS_FILE)[0]
    loaded = {p.name for pattern in config["rule_files"] for p in PROMETHEUS_FILE.parent.glob(pattern)}
    assert loaded == {p.name for p in ds.rule_files()}
    jobs = {s["job_name"] for s in config["scrape_configs"]}
    assert {"finsent-labeler", "finsent-alerts"} <= jobs


def test_prometheus_config_with_the_sources_job_uncommented_is_valid(tmp_path: Path) -> None:
    """The `finsent-sources` job ships commented out (compose does not run `finsent sources`); uncommented
    as docs/operations.md says, the configuration must still load."""
    from tests.test_deploy_static import commented_sources_job

    config = ds.load_yaml_docs(PROMETHEUS_FILE)[0]
    config["scrape_configs"].append(commented_sources_job())
    config["rule_files"] = [str(PROMETHEUS_FILE.parent / pattern) for pattern in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = ds.run([ds.promtool(), "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs))


def _amtool() -> str:
    return servers.debian_binary("amtool")


def test_alertmanager_config_is_valid() -> None:
    result = ds.run([_amtool(), "check-config", str(ALERTMANAGER_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_analysts_slack_text_escapes_the_news_it_quotes(tmp_path: Path) -> None:
    """Summaries and examples quote headlines: rendered by Alertmanager's own template engine, a headline
    must not become a disguised link or an @channel."""
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    (receiver,) = [r for r in config["receivers"] if r["name"] == "analysts"]
    annotations = {
        "summary": "Negative share for ticker ACME is 96% <b> & more",
        "examples": "ACME fraud probe widens <!channel> <https://evil.example/sso|Click: trading halted>",
        "dashboard": "http://grafana.example/d/finsent-sentiment",
    }
    alert = {"status": "firing", "labels": {"alertname": "FinsentNegativeSentimentSpike"}}
    data = {"receiver": "analysts", "status": "firing", "alerts": [{**alert, "annotations": annotations}]}
    (tmp_path / "data.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "none.tmpl").write_text("", encoding="utf-8")
    result = ds.run(
        [
            _amtool(),
            "template",
            "render",
            f"--template.glob={tmp_path / 'none.tmpl'}",
            f"--template.text={receiver['slack_configs'][0]['text']}",
            f"--template.data={tmp_path / 'data.json'}",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Negative share for ticker ACME is 96% &lt;b&gt; &amp; more",
        "ACME fraud probe widens &lt;!channel&gt; &lt;https://evil.example/sso|Click: trading halted&gt;",
        "http://grafana.example/d/finsent-sentiment",
    ]


def test_alertmanager_secrets_come_from_files() -> None:
    text = ALERTMANAGER_FILE.read_text(encoding="utf-8")
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    assert config["global"]["slack_api_url_file"].startswith("/etc/alertmanager/secrets/")
    assert config["global"]["smtp_auth_password_file"].startswith("/etc/alertmanager/secrets/")
    assert "hooks.slack.com" not in text
    assert not re.search(r"^\s*(smtp_auth_password|api_url|slack_api_url):", text, flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=FinsentWorkerDown", "severity=critical", "category=health"], "oncall-page"),
        (["alertname=FinsentNoData", "severity=warning", "category=health"], "ops-slack"),
        (
            ["alertname=FinsentTopicNegativeSentimentSpike", "severity=warning", "category=sentiment"],
            "analysts",
        ),
        (["alertname=SomethingElse"], "ops-slack"),
        # sent by `finsent alerts` (alerts/notifiers/alertmanager.py): to the analysts even when critical
        (
            ["alertname=FinsentSentimentSpike", "service=finsent", "severity=critical", "key_type=ticker"],
            "analysts",
        ),
    ],
)
def test_alertmanager_routes_by_severity_and_category(labels: list[str], receiver: str) -> None:
    result = ds.run(
        [
            _amtool(),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_FILE}",
            f"--verify.receivers={receiver}",
            *labels,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_receivers_cover_slack_and_email_and_inhibit_warnings() -> None:
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["oncall-page"]["slack_configs"] and receivers["oncall-page"]["email_configs"]
    assert receivers["analysts"]["slack_configs"] and receivers["analysts"]["email_configs"]
    assert config["route"]["group_by"]
    inhibit = config["inhibit_rules"][0]
    # only a job-wide alert mutes the job's warnings: they are summed by job and carry no instance, so the
    # per-instance FinsentWorkerDown would mute the healthy replicas' warnings too
    assert inhibit["source_matchers"] == ['alertname="FinsentLabelerAbsent"']
    assert inhibit["target_matchers"] == ['severity="warning"', 'category="health"']
    assert inhibit["equal"] == ["job"]
    # the alert workers' job likewise, by their own job-wide alert
    workers = [
        r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="FinsentAlertWorkerAbsent"']
    ]
    assert [(r["target_matchers"], r["equal"]) for r in workers] == [(inhibit["target_matchers"], ["job"])]


def _expected_alert_labels() -> dict[str, list[dict[str, str]]]:
    """The labels of every alert the promtool unit tests expect to fire, by alert name."""
    found: dict[str, list[dict[str, str]]] = {}
    for path in ds.rule_test_files():
        for case in ds.load_yaml_docs(path)[0]["tests"]:
            for test in case.get("alert_rule_test", []):
                for alert in test.get("exp_alerts") or []:
                    found.setdefault(test["alertname"], []).append(alert.get("exp_labels", {}))
    return found


def test_inhibitions_come_from_job_wide_alerts_only() -> None:
    """An inhibition source must mean "the whole job is down". A per-instance alert (FinsentWorkerDown)
    would, with `equal: [job]`, mute the job-wide warnings of the healthy replicas too: the warnings are
    summed by job and carry no instance label to match on."""
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    fired = _expected_alert_labels()
    for inhibit in config["inhibit_rules"]:
        sources = [re.fullmatch(r'alertname="(\w+)"', m) for m in inhibit["source_matchers"]]
        names = [m[1] for m in sources if m]
        assert names, f"inhibit rule without an alertname source: {inhibit}"
        for name in names:
            assert fired.get(name), f"{name} never fires in the promtool unit tests"
            for labels in fired[name]:
                assert "instance" not in labels, f"{name} is an alert per instance, not per job"
                assert set(inhibit.get("equal", [])) <= set(labels), f"{name} lacks {inhibit['equal']}"
    for name, alerts in fired.items():  # warnings are per job (or topic, source, ...), never per instance
        for labels in alerts:
            if labels.get("severity") == "warning":
                assert "instance" not in labels, name


def _post_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/api/v2/alerts", json=alerts, timeout=5)
    assert response.status_code == 200, response.text


def _alert_states(url: str) -> dict[tuple[str, str], str]:
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return {
        (a["labels"]["alertname"], a["labels"].get("job", a["labels"].get("key", ""))): a["status"]["state"]
        for a in alerts
    }


def _wait_for_state(url: str, expected: dict[tuple[str, str], str]) -> None:
    deadline = time.monotonic() + 10
    state = _alert_states(url)
    while time.monotonic() < deadline and state != expected:
        time.sleep(0.2)
        state = _alert_states(url)
    assert state == expected


def test_real_alertmanager_loads_the_config_and_inhibits(tmp_path: Path) -> None:
    """The example config runs in a real Alertmanager: no labeler at all mutes the labelers' health
    warnings, the alert workers' held windows and the Prometheus sentiment alerts; one dead labeler among
    several mutes nothing."""
    am = ds.start_example_alertmanager(tmp_path)
    try:
        health = {"category": "health"}
        _post_alerts(
            am.url,
            [
                {
                    "labels": {
                        "alertname": "FinsentWorkerDown",
                        "severity": "critical",
                        "job": "finsent-labeler",
                        "instance": "a:9108",
                        **health,
                    }
                },
                {
                    "labels": {
                        "alertname": "FinsentNoData",
                        "severity": "warning",
                        "job": "finsent-labeler",
                        **health,
                    }
                },
                {
                    "labels": {
                        "alertname": "FinsentNoData",
                        "severity": "warning",
                        "job": "finsent-alerts",
                        **health,
                    }
                },
                {
                    "labels": {
                        "alertname": "FinsentAlertWindowsHeld",
                        "severity": "warning",
                        "job": "finsent-alerts",
                        **health,
                    }
                },
                {
                    "labels": {
                        "alertname": "FinsentSentimentSpike",
                        "service": "finsent",
                        "severity": "critical",
                        "key_type": "ticker",
                        "key": "AAPL",
                    }
                },
                {
                    "labels": {
                        "alertname": "FinsentTopicNegativeSentimentSpike",
                        "severity": "warning",
                        "category": "sentiment",
                        "topic": "earnings",
                    }
                },
            ],
        )
        # no labeler at all: its job's health warnings and the Prometheus sentiment alerts are muted
        absent = {"alertname": "FinsentLabelerAbsent", "severity": "critical", "job": "finsent-labeler"}
        started = datetime.now(UTC) - timedelta(minutes=10)
        _post_alerts(am.url, [{"labels": {**absent, **health}, "startsAt": started.isoformat()}])
        _wait_for_state(
            am.url,
            {
                ("FinsentWorkerDown", "finsent-labeler"): "active",
                ("FinsentLabelerAbsent", "finsent-labeler"): "active",
                ("FinsentNoData", "finsent-labeler"): "suppressed",
                ("FinsentNoData", "finsent-alerts"): "active",
                ("FinsentAlertWindowsHeld", "finsent-alerts"): "suppressed",  # the same outage
                ("FinsentSentimentSpike", "AAPL"): "active",
                ("FinsentTopicNegativeSentimentSpike", ""): "suppressed",
            },
        )
        # the other labelers are back, one replica is still down (crash-looping): nothing is muted, its
        # FinsentWorkerDown (which the inhibitor has long seen) pages on its own
        resolved = datetime.now(UTC) - timedelta(seconds=1)
        _post_alerts(
            am.url,
            [
                {
                    "labels": {**absent, **health},
                    "startsAt": started.isoformat(),
                    "endsAt": resolved.isoformat(),
                }
            ],
        )
        _wait_for_state(
            am.url,
            {
                ("FinsentWorkerDown", "finsent-labeler"): "active",
                ("FinsentNoData", "finsent-labeler"): "active",
                ("FinsentNoData", "finsent-alerts"): "active",
                ("FinsentAlertWindowsHeld", "finsent-alerts"): "active",
                ("FinsentSentimentSpike", "AAPL"): "active",
                ("FinsentTopicNegativeSentimentSpike", ""): "active",
            },
        )
    finally:
        am.server.stop()


def test_every_rule_label_used_in_routing_exists() -> None:
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    matchers = [m for route in config["route"]["routes"] for m in route["matchers"]]
    # labels of the alerts `finsent alerts` posts itself (alerts/notifiers/alertmanager.py)
    label_values: dict[str, set[str]] = {"service": {"finsent"}}
    for rule in ds.rules():
        for k, v in rule.raw.get("labels", {}).items():
            label_values.setdefault(k, set()).add(v)
    for matcher in matchers:
        name, value = re.fullmatch(r'(\w+)="([^"]*)"', matcher).groups()  # type: ignore[union-attr]
        assert value in label_values.get(name, set()), f"route matcher {matcher} matches no rule"


def test_rule_test_files_are_referenced_relative(tmp_path: Path) -> None:
    """The unit tests also run from another working directory (as CI may do)."""
    files = [str(p) for p in ds.rule_test_files()]
    result = ds.run([ds.promtool(), "test", "rules", *files], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
