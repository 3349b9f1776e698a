"""Elasticsearch output against the real Elasticsearch-API server: idempotent index setup, bulk writes,
per-document rejections, and waiting out an unavailable server without losing anything."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch

from finsent.outputs.es_setup import IndexSetup, ensure_index_setup, events_setup
from finsent.outputs.es_sink import ElasticsearchSink, IndexAction, SinkStopped
from finsent.settings import ElasticsearchSettings
from tests.pipeline_helpers import ForwardingProxy, reply
from tests.servers import free_port


def es(url: str) -> Elasticsearch:
    return Elasticsearch(url, request_timeout=5, max_retries=0)


def test_index_setup_is_idempotent_and_aliased(es_url: str, unique: str) -> None:
    client = es(es_url)
    setup = events_setup(ElasticsearchSettings(url=es_url, index_prefix=f"t{unique}", number_of_replicas=0))
    first = ensure_index_setup(client, setup)
    assert ensure_index_setup(client, setup) == first  # second start-up changes nothing
    tpl = client.indices.get_index_template(name=setup.template_name)["index_templates"][0]["index_template"]
    assert tpl["index_patterns"] == [f"t{unique}-events-*"]
    props = tpl["template"]["mappings"]["properties"]
    assert props["tickers"]["type"] == "keyword" and props["published_at"]["type"] == "date"
    assert props["sentiment_probs"]["properties"]["negative"]["type"] == "float"
    sink = ElasticsearchSink(client, stop=threading.Event())
    doc = {"id": "a", "tickers": ["ACME"], "published_at": "2026-11-30T00:00:00Z", "sentiment": "negative"}
    index = f"t{unique}-events-2026.11.30"
    assert sink.write([IndexAction(index, "a", doc), IndexAction(index, "b", {**doc, "id": "b"})]) == []
    assert sink.write([IndexAction(index, "a", {**doc, "sentiment": "neutral"})]) == []  # replay overwrites
    client.indices.refresh(index=f"t{unique}-events")
    assert client.count(index=f"t{unique}-events")["count"] == 2
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert mapping["tickers"]["type"] == "keyword"
    got = client.get(index=index, id="a")["_source"]
    assert got["sentiment"] == "neutral"


def test_lifecycle_absent_is_detected_not_fatal(es_url: str, unique: str) -> None:
    """noida-db has no ILM endpoint: setup must log and go on; with ILM it returns True."""
    client = es(es_url)
    has_ilm = (
        httpx.put(f"{es_url}/_ilm/policy/probe-{unique}", json={"policy": {"phases": {}}}).status_code < 300
    )
    setup = IndexSetup(
        template_name=f"a{unique}",
        index_patterns=(f"a{unique}-*",),
        alias=f"a{unique}",
        mappings={"properties": {"x": {"type": "keyword"}}},
        number_of_replicas=0,
        lifecycle_policy=f"a{unique}",
        delete_after_days=30,
        bootstrap_index=f"a{unique}-000001",
    )
    assert ensure_index_setup(client, setup) is has_ilm
    assert ensure_index_setup(client, setup) is has_ilm
    assert f"a{unique}" in client.indices.get_alias(index=f"a{unique}-000001")[f"a{unique}-000001"]["aliases"]


def test_rejected_documents_are_returned_with_reason(es_url: str, unique: str) -> None:
    client = es(es_url)
    index = f"rej{unique}"
    client.indices.create(index=index, mappings={"properties": {"n": {"type": "integer"}}})
    sink = ElasticsearchSink(client, stop=threading.Event())
    rejected = sink.write(
        [IndexAction(index, "ok", {"n": 1}), IndexAction(index, "bad", {"n": "not a number"})]
    )
    assert [r.doc_id for r in rejected] == ["bad"]
    assert "rejected" in rejected[0].reason and "400" in rejected[0].reason
    assert client.exists(index=index, id="ok")


class FlakyProxy(ForwardingProxy):
    """Answers 503 (or drops the connection) for the first `failures` requests, then forwards to the real
    server: an Elasticsearch that is down for a while."""

    def __init__(self, target: str, failures: int) -> None:
        self.failures = failures
        self.seen = 0
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        self.seen += 1
        if self.seen > self.failures:
            return False
        if self.seen % 2:
            handler.close_connection = True
            handler.connection.close()
        else:
            reply(handler, 503)
        return True


@pytest.fixture
def flaky(es_url: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(es_url, failures=4)
    yield proxy
    proxy.close()


def test_unavailable_server_is_waited_out(flaky: FlakyProxy, es_url: str, unique: str) -> None:
    errors: list[int] = []
    sink = ElasticsearchSink(
        es(flaky.url), stop=threading.Event(), backoff_max_s=0.2, on_error=lambda: errors.append(1)
    )
    index = f"down{unique}"
    assert sink.write([IndexAction(index, str(i), {"i": i}) for i in range(5)]) == []
    assert errors and sink.available
    direct = es(es_url)
    direct.indices.refresh(index=index)
    assert direct.count(index=index)["count"] == 5


class RealElasticsearchQuirks(ForwardingProxy):
    """Answers `_bulk` the way real Elasticsearch does where noida-db does not: a request holding an _id
    over 512 bytes is refused as a whole (400 action_request_validation_exception); and, on demand, whole
    requests refused with 401 (an expired key) or every document refused with 403 cluster_block_exception
    (an index write block)."""

    def __init__(self, target: str) -> None:
        self.unauthorized = 0
        self.blocked = 0
        self.refuse_all = False
        self.bulk_requests = 0
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if "_bulk" not in handler.path:
            return False
        self.bulk_requests += 1
        actions = [json.loads(line)["index"] for line in body.splitlines()[0::2] if line]
        if self.refuse_all:
            err = {"type": "media_type_header_exception", "reason": "invalid media-type"}
            reply(handler, 400, {"error": err, "status": 400})
        elif self.unauthorized > 0:
            self.unauthorized -= 1
            reply(handler, 401, {"error": {"type": "security_exception", "reason": "expired"}, "status": 401})
        elif any(len(a["_id"].encode()) > 512 for a in actions):
            err = {"type": "action_request_validation_exception", "reason": "id is too long"}
            reply(handler, 400, {"error": err, "status": 400})
        elif self.blocked > 0:
            self.blocked -= 1
            err = {"type": "cluster_block_exception", "reason": "index write (api)"}
            items = [{"index": {**a, "status": 403, "error": err}} for a in actions]
            reply(handler, 200, {"took": 1, "errors": True, "items": items})
        else:
            return False
        return True


@pytest.fixture
def quirks(es_url: str) -> Iterator[RealElasticsearchQuirks]:
    proxy = RealElasticsearchQuirks(es_url)
    yield proxy
    proxy.close()


def test_a_bulk_refused_as_a_whole_is_split_down_to_the_document_at_fault(
    quirks: RealElasticsearchQuirks, es_url: str, unique: str
) -> None:
    index = f"split{unique}"
    actions = [IndexAction(index, str(i), {"i": i}) for i in range(7)]
    actions.insert(3, IndexAction(index, "x" * 600, {"i": -1}))
    rejected = ElasticsearchSink(es(quirks.url), stop=threading.Event()).write(actions)
    assert [r.doc_id for r in rejected] == ["x" * 600] and "(400)" in rejected[0].reason
    direct = es(es_url)
    direct.indices.refresh(index=index)
    assert direct.count(index=index)["count"] == 7


def test_refused_credentials_and_write_blocks_are_waited_out_not_dead_lettered(
    quirks: RealElasticsearchQuirks, es_url: str, unique: str
) -> None:
    quirks.unauthorized, quirks.blocked = 2, 2
    errors: list[int] = []
    sink = ElasticsearchSink(
        es(quirks.url), stop=threading.Event(), backoff_max_s=0.1, on_error=lambda: errors.append(1)
    )
    index = f"blocked{unique}"
    assert sink.write([IndexAction(index, str(i), {"i": i}) for i in range(3)]) == []
    assert quirks.bulk_requests == 5 and len(errors) == 4 and sink.available
    direct = es(es_url)
    direct.indices.refresh(index=index)
    assert direct.count(index=index)["count"] == 3


def test_stop_while_unavailable_raises_without_writing() -> None:
    stop = threading.Event()
    sink = ElasticsearchSink(es(f"http://127.0.0.1:{free_port()}"), stop=stop, backoff_max_s=0.1)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SinkStopped):
        sink.write([IndexAction("x", "1", {"i": 1})])
    assert time.monotonic() - started < 5
    assert not sink.available and not sink.reachable()


def test_a_bulk_refused_whole_for_the_request_itself_is_held_not_dead_lettered(
    quirks: RealElasticsearchQuirks, unique: str
) -> None:
    """A 400 that no single document explains (a proxy, a header the server refuses) splits down to
    single documents that are refused too: the documents are fine, so the batch waits, and nothing is
    dead-lettered."""
    quirks.refuse_all = True
    stop = threading.Event()
    sink = ElasticsearchSink(es(quirks.url), stop=stop, backoff_max_s=0.1)
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(SinkStopped):
        sink.write([IndexAction(f"proxy{unique}", str(i), {"i": i}) for i in range(4)])
    assert not sink.available


def test_the_lifecycle_counts_a_daily_index_from_the_day_it_holds() -> None:
    """Without parse_origination_date, min_age counts from the index's creation: a backfilled day would
    be kept retention_days from now, not from that day."""
    from finsent.outputs.es_setup import template_settings

    setup = events_setup(ElasticsearchSettings(url="http://es:9200", index_prefix="p"))
    with_ilm = template_settings(setup, lifecycle=True)
    assert with_ilm["index.lifecycle.name"] == "p-events"
    assert with_ilm["index.lifecycle.parse_origination_date"] is True
    assert "index.lifecycle.parse_origination_date" not in template_settings(setup, lifecycle=False)
