"""The alerts index against the real Elasticsearch-API server: created when the worker starts, so that
dashboards and queries find it before the first alert; several workers at once; Elasticsearch down then."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import pytest
from elasticsearch import ConnectionError as EsConnectionError
from elasticsearch import Elasticsearch

from alerts.model import Alert
from finsent.alert_index import ALERTS_MAPPING, TEMPLATE_RETRY_S, AlertIndex
from tests.pipeline_helpers import ForwardingProxy, at_once, reply
from tests.servers import free_port


def es(url: str) -> Elasticsearch:
    return Elasticsearch(url, request_timeout=5, max_retries=0)


def an_alert(key: str = "ACME") -> Alert:
    return Alert(
        rule="negative_spike",
        key_type="ticker",
        key=key,
        status="firing",
        severity="warning",
        starts_at=1_764_460_800.0,
        ends_at=None,
        window_start=1_764_460_500.0,
        window_end=1_764_460_800.0,
        count=50,
        negative_count=36.0,
        negative_share=0.72,
        baseline_share=0.2,
        expected_negative=10.0,
        p_value=0.0001,
        summary=f"{key}: negative share 0.72 vs baseline 0.20",
    )


def test_the_alerts_index_answers_before_the_first_alert(es_url: str, unique: str) -> None:
    assert AlertIndex(es(es_url), f"a{unique}").prepare()
    client = es(es_url)
    index = f"a{unique}-alerts"
    assert client.count(index=index)["count"] == 0  # not index_not_found: Grafana's annotations work
    props = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["starts_at"]["type"] == "date" and props["key"]["type"] == "keyword"
    assert set(props) == set(ALERTS_MAPPING["properties"])


def test_an_index_made_by_an_older_version_gets_the_newer_fields_mapped(es_url: str, unique: str) -> None:
    client = es(es_url)
    index = f"o{unique}-alerts"
    older = {name: spec for name, spec in ALERTS_MAPPING["properties"].items() if name != "escalated_from"}
    client.indices.create(index=index, mappings={"properties": older})
    AlertIndex(es(es_url), f"o{unique}").write(
        replace(an_alert(), severity="critical", escalated_from="warning")
    )
    props = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert props["escalated_from"] == {"type": "keyword"}  # not text, as a dynamic mapping would make it


def test_workers_starting_at_once_all_get_the_index(es_url: str, unique: str) -> None:
    made: list[AlertIndex] = []

    def start() -> None:
        index = AlertIndex(es(es_url), f"c{unique}")
        index.prepare()
        made.append(index)

    at_once(start)
    assert len(made) == 4
    for i, index in enumerate(made):  # each is ready: its first write does not try to create it again
        index.write(an_alert(f"K{i}"))
    client = es(es_url)
    client.indices.refresh(index=f"c{unique}-alerts")
    assert client.count(index=f"c{unique}-alerts")["count"] == 4


class DownAtStart(ForwardingProxy):
    """Answers 503 to everything while `down` is set: Elasticsearch unavailable while the worker starts."""

    def __init__(self, target: str) -> None:
        self.down = True
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if not self.down:
            return False
        reply(handler, 503)
        return True


def test_elasticsearch_down_at_start_is_not_fatal_and_the_first_alert_creates_it(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = DownAtStart(es_url)
    try:
        with caplog.at_level(logging.WARNING, logger="finsent.alert_index"):
            index = AlertIndex(es(proxy.url), f"d{unique}")
            assert not index.prepare()
        assert f"index d{unique}-alerts not created at start-up" in caplog.text
        assert not es(es_url).indices.exists(index=f"d{unique}-alerts")
        proxy.down = False
        index.write(an_alert())
    finally:
        proxy.close()
    assert es(es_url).exists(index=f"d{unique}-alerts", id=an_alert().alert_id)


def test_an_unreachable_server_at_start_is_not_fatal(unique: str) -> None:
    """A connection error (not an answer) too; the start-up attempt is not retried by the client."""
    started = time.monotonic()
    index = AlertIndex(Elasticsearch(f"http://127.0.0.1:{free_port()}"), f"u{unique}")
    assert not index.prepare()
    assert time.monotonic() - started < 5
    with pytest.raises(EsConnectionError):  # the first write tries again, and fails like any write
        index.write(an_alert())


def test_an_older_transition_never_overwrites_a_later_one(es_url: str, unique: str) -> None:
    """During a rebalance the old owner's queued "firing" can reach Elasticsearch after the new owner's
    "resolved" of the same alert; the document must stay resolved. Writing a transition again is fine."""
    index = AlertIndex(es(es_url), f"v{unique}")
    firing = an_alert()
    resolved = firing.resolved(firing.window_end + 1800)
    index.write(resolved)
    index.write(firing)  # late
    index.write(resolved)  # replayed
    doc = es(es_url).get(index=index.index, id=firing.alert_id)
    assert doc["_source"]["status"] == "resolved" and doc["_source"]["ends_at"]
    later = replace(firing, starts_at=firing.starts_at + 7200, window_end=firing.window_end + 7200)
    index.write(later)  # the next episode is another document
    assert es(es_url).get(index=index.index, id=later.alert_id)["_source"]["status"] == "firing"


def test_an_alerts_index_deleted_while_running_comes_back_with_its_mapping(es_url: str, unique: str) -> None:
    """Deleted by an operator while the worker runs, the index is made again by the next write
    (auto-create is on by default): the template of its name gives it the alert mapping, not a dynamic
    one that makes `key` and `status` text."""
    index = AlertIndex(es(es_url), f"t{unique}")
    assert index.prepare()
    client = es(es_url)
    client.indices.delete(index=index.index)
    index.write(an_alert())
    props = client.indices.get_mapping(index=index.index)[index.index]["mappings"]["properties"]
    assert props["key"] == {"type": "keyword"} and props["status"] == {"type": "keyword"}
    assert props["starts_at"]["type"] == "date"


def test_a_template_refused_is_a_warning_and_the_index_is_still_made(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials without manage_index_templates: the template is left out, the index is made."""
    proxy = RefusesTemplates(es_url)
    try:
        with caplog.at_level(logging.WARNING, logger="finsent.alert_index"):
            assert AlertIndex(es(proxy.url), f"r{unique}").prepare()
    finally:
        proxy.close()
    assert (
        f"alerts index r{unique}-alerts: index template not installed (403 security_exception" in caplog.text
    )
    client = es(es_url)
    assert client.indices.exists(index=f"r{unique}-alerts")
    assert not client.indices.exists_index_template(name=f"r{unique}-alerts")


def test_a_template_failed_for_the_servers_sake_is_tried_again_by_a_later_alert(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 on the template at start: the index is made, and once it exists nothing else would put the
    template; an alert written TEMPLATE_RETRY_S later does, and the index deleted then comes back mapped.
    A 403 (no manage_index_templates) is never tried again."""
    now = [0.0]
    proxy = RefusesTemplates(es_url, status=503)
    refused = RefusesTemplates(es_url, status=403)
    try:
        index = AlertIndex(es(proxy.url), f"t{unique}", clock=lambda: now[0])
        with caplog.at_level(logging.INFO, logger="finsent.alert_index"):
            assert index.prepare()
            index.write(an_alert("EARLY"))
            assert proxy.puts == 1  # not due yet
            proxy.refusing = False
            now[0] += TEMPLATE_RETRY_S
            index.write(an_alert("LATER"))
            assert proxy.puts == 2
            index.write(an_alert("AFTER"))
            assert proxy.puts == 2  # installed: not put again
            es(es_url).indices.delete(index=f"t{unique}-alerts")
            index.write(an_alert("AGAIN"))  # made again by the write (auto-create), with the template
            forbidden = AlertIndex(es(refused.url), f"f{unique}", clock=lambda: now[0])
            assert forbidden.prepare()
            now[0] += 10 * TEMPLATE_RETRY_S
            forbidden.write(an_alert())
            assert refused.puts == 1
    finally:
        proxy.close()
        refused.close()
    assert f"alerts index t{unique}-alerts: index template not installed (503" in caplog.text
    assert "a later alert tries again" in caplog.text
    assert f"alerts index t{unique}-alerts: index template installed" in caplog.text
    mapping = es(es_url).indices.get_mapping(index=f"t{unique}-alerts")[f"t{unique}-alerts"]["mappings"]
    assert mapping["properties"]["key"] == {"type": "keyword"}
    assert mapping["properties"]["status"] == {"type": "keyword"}


def test_a_deployments_own_templates_keep_applying(es_url: str, unique: str) -> None:
    """Only the highest-priority template applies to a new index: the alerts template (priority 0) never
    takes the place of a deployment's template over the name, and one of the same name is left as it is."""
    client = es(es_url)
    client.indices.put_index_template(name=f"w{unique}-all", index_patterns=[f"w{unique}-*"], priority=0)
    assert AlertIndex(es(es_url), f"w{unique}").prepare()  # refused beside it at the same priority
    assert not client.indices.exists_index_template(name=f"w{unique}-alerts")
    assert client.indices.exists(index=f"w{unique}-alerts")
    theirs = {"index_patterns": [f"m{unique}-alerts"], "priority": 7, "meta": {"owner": "ops"}}
    client.indices.put_index_template(name=f"m{unique}-alerts", **theirs)
    AlertIndex(es(es_url), f"m{unique}").prepare()
    kept = client.indices.get_index_template(name=f"m{unique}-alerts")["index_templates"][0]["index_template"]
    assert kept["priority"] == 7 and kept["_meta"] == {"owner": "ops"}
    AlertIndex(es(es_url), f"n{unique}").prepare()
    AlertIndex(es(es_url), f"n{unique}").prepare()  # its own, from an earlier start: put again
    ours = client.indices.get_index_template(name=f"n{unique}-alerts")["index_templates"][0]["index_template"]
    assert ours["priority"] == 0 and ours["_meta"] == {"managed_by": "finsent"}


class RefusesTemplates(ForwardingProxy):
    """Refuses index template requests with `status` while `refusing`: 403 is a key that may create
    indices but not templates, 503 a server in trouble. Counts the PUTs it saw."""

    def __init__(self, target: str, status: int = 403) -> None:
        super().__init__(target)
        self.status, self.refusing, self.puts = status, True, 0

    def answer(self, handler: Any, body: bytes) -> bool:
        if not handler.path.startswith("/_index_template/") or handler.command != "PUT":
            return False
        self.puts += 1
        if not self.refusing:
            return False
        kind, reason = (
            ("security_exception", "action [indices:admin/index_template/put] is unauthorized")
            if self.status == 403
            else ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master]")
        )
        error = {"type": kind, "reason": reason}
        reply(handler, self.status, {"error": {"root_cause": [error], **error}, "status": self.status})
        return True
