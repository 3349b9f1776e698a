"""Elasticsearch output against the real Elasticsearch-API server: idempotent index setup, bulk writes,
per-document rejections, and waiting out an unavailable server without losing anything."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError, Elasticsearch

from finsent.outputs.es_errors import error_reason, error_type
from finsent.outputs.es_setup import IndexSetup, IndexSetupError, ensure_index_setup, events_setup
from finsent.outputs.es_sink import (
    ElasticsearchSink,
    IndexAction,
    SinkStopped,
    is_document_fault,
    is_request_fault_of_the_document,
)
from finsent.settings import ElasticsearchSettings
from tests.pipeline_helpers import ForwardingProxy, at_once, reply
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


def test_one_id_in_two_daily_indices_of_one_batch_writes_both(es_url: str, unique: str) -> None:
    """Ids are unique within an index only: a batch holding the same explicit id with two publication
    days wrote one document and reported the other as written."""
    client = es(es_url)
    day1, day2 = f"days{unique}-2026.06.01", f"days{unique}-2026.06.02"
    sink = ElasticsearchSink(client, stop=threading.Event())
    assert sink.write([IndexAction(day1, "X", {"n": 1}), IndexAction(day2, "X", {"n": 2})]) == []
    assert client.get(index=day1, id="X")["_source"] == {"n": 1}
    assert client.get(index=day2, id="X")["_source"] == {"n": 2}
    # the same id twice for one index: the later version wins, as a replay's overwrite would
    assert sink.write([IndexAction(day1, "Y", {"n": 1}), IndexAction(day1, "Y", {"n": 3})]) == []
    assert client.get(index=day1, id="Y")["_source"] == {"n": 3}


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
    requests refused with 401 (an expired key), every document refused with 403 cluster_block_exception
    (an index write block), or with 400 because the day's index cannot be created (the cluster is at its
    shard limit: ES 8's validation_exception, then ES 7's illegal_argument_exception)."""

    SHARD_LIMIT = (
        "Validation Failed: 1: this action would add [2] shards, but this cluster currently has "
        "[1000]/[1000] maximum normal shards open;"
    )

    def __init__(self, target: str) -> None:
        self.unauthorized = 0
        self.blocked = 0
        self.shard_limited = 0
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
        elif self.shard_limited > 0:
            kind = "validation_exception" if self.shard_limited % 2 == 0 else "illegal_argument_exception"
            self.shard_limited -= 1
            err = {"type": kind, "reason": self.SHARD_LIMIT}
            items = [{"index": {**a, "status": 400, "error": err}} for a in actions]
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


def test_a_long_write_block_is_said_once_in_ten_retries_and_its_end_too(
    quirks: RealElasticsearchQuirks, es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Documents refused one by one (a write block at disk flood stage) logged a line at every retry, two
    a minute for as long as the block lasted, and nothing said when Elasticsearch took them again."""
    quirks.blocked = 12
    sink = ElasticsearchSink(es(quirks.url), stop=threading.Event(), backoff_max_s=0.01)
    with caplog.at_level("INFO", logger="finsent.outputs.es_sink"):
        assert sink.write([IndexAction(f"fb{unique}", str(i), {"i": i}) for i in range(3)]) == []
    lines = [r.getMessage() for r in caplog.records]
    refused = [line for line in lines if line.startswith("Elasticsearch did not take 3 documents (403 ")]
    assert len(refused) == 2, lines  # the first try and the tenth retry
    assert lines[-1].startswith("Elasticsearch took the batch after 12 retries (")


def test_a_daily_index_the_cluster_has_no_room_for_is_waited_out_not_dead_lettered(
    quirks: RealElasticsearchQuirks, es_url: str, unique: str
) -> None:
    """Each document of the new day answered 400: taken for the documents' fault, the whole day went to
    the dead-letter topic and was committed, blind to alerts, instead of being held."""
    quirks.shard_limited = 2
    sink = ElasticsearchSink(es(quirks.url), stop=threading.Event(), backoff_max_s=0.1)
    index = f"full{unique}"
    assert sink.write([IndexAction(index, str(i), {"i": i}) for i in range(3)]) == []
    assert quirks.bulk_requests == 3
    direct = es(es_url)
    direct.indices.refresh(index=index)
    assert direct.count(index=index)["count"] == 3


def test_only_an_index_level_reason_makes_a_documents_400_the_indexs_fault() -> None:
    shards = RealElasticsearchQuirks.SHARD_LIMIT
    assert not is_document_fault(400, {"type": "illegal_argument_exception", "reason": shards})
    assert not is_document_fault(
        400, {"type": "illegal_argument_exception", "reason": "no write index is defined"}
    )
    assert is_document_fault(
        400, {"type": "illegal_argument_exception", "reason": "Document contains an immense term"}
    )
    # a parsing error's reason quotes the document's value: it cannot make the document's fault the index's
    quoted = "failed to parse field [title]. Preview of field's value: 'no write index'"
    assert is_document_fault(400, {"type": "mapper_parsing_exception", "reason": quoted})


def test_stop_while_unavailable_raises_without_writing() -> None:
    stop = threading.Event()
    sink = ElasticsearchSink(es(f"http://127.0.0.1:{free_port()}"), stop=stop, backoff_max_s=0.1)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SinkStopped):
        sink.write([IndexAction("x", "1", {"i": 1})])
    assert time.monotonic() - started < 5
    assert not sink.available and not sink.client.ping()  # the server is not there at all


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


class LifecycleAnswers(ForwardingProxy):
    """Answers `_ilm` requests as real Elasticsearch does where noida-db cannot (noida-db has no ILM and
    answers them with a flat 400 "no handler found"); everything else reaches noida-db."""

    def __init__(self, target: str, status: int, body: dict[str, Any]) -> None:
        self.status, self.body = status, body
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if not handler.path.startswith("/_ilm/"):
            return False
        reply(handler, self.status, self.body)
        return True


def es_error(status: int, kind: str, reason: str, **extra: Any) -> dict[str, Any]:
    """An error answer in Elasticsearch's detailed format."""
    error = {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason, **extra}
    return {"error": error, "status": status}


REFUSED_POLICIES = {
    # a retention that became an unparsable min_age
    "bad-min-age": es_error(
        400,
        "x_content_parse_exception",
        "[1:87] [phase] failed to parse field [min_age]",
        caused_by={
            "type": "illegal_argument_exception",
            "reason": "failed to parse setting [min_age] with value [30x] as a time value: unit is missing "
            "or unrecognized",
        },
    ),
    # an action this version does not allow in that phase
    "invalid-action": es_error(
        400, "illegal_argument_exception", "invalid action [set_priority] defined in phase [delete]"
    ),
}

NO_LIFECYCLE_API = {
    # real Elasticsearch, a path it has no handler for (noida-db answers the same: the test above)
    "no-handler": (400, {"error": "no handler found for uri [/_ilm/policy/p] and method [PUT]"}),
    # a path known under other methods only
    "wrong-method": (
        405,
        {
            "error": "Incorrect HTTP method for uri [/_ilm/policy/p] and method [PUT], allowed: [GET]",
            "status": 405,
        },
    ),
    # serverless: the API exists but is switched off
    "serverless": (
        410,
        es_error(
            410,
            "api_not_available_exception",
            "Request for uri [/_ilm/policy/p] with method [PUT] exists but is not available when running in "
            "serverless mode",
        ),
    ),
}


def api_error(status: int, body: Any) -> ApiError:
    """An ApiError as the client raises it for an answer with `status` and `body` (parsed JSON or text)."""
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "localhost", 9200))
    return ApiError("error", meta, body)


ERROR_BODIES: dict[str, tuple[Any, str, str]] = {
    # case: (body, its error_type, its error_reason)
    "nested": (
        es_error(400, "action_request_validation_exception", "id is too long"),
        "action_request_validation_exception",
        "id is too long",
    ),
    "nested-with-cause": (
        REFUSED_POLICIES["bad-min-age"],
        "x_content_parse_exception",
        "[1:87] [phase] failed to parse field [min_age] (caused by illegal_argument_exception: failed to "
        "parse setting [min_age] with value [30x] as a time value: unit is missing or unrecognized)",
    ),
    "root-cause-only": (
        {"error": {"root_cause": [{"type": "resource_already_exists_exception", "reason": "exists"}]}},
        "resource_already_exists_exception",
        "",
    ),
    "string-error": (NO_LIFECYCLE_API["no-handler"][1], "", NO_LIFECYCLE_API["no-handler"][1]["error"]),
    "without-error": (
        {"type": "action_request_validation_exception", "message": "from a proxy"},
        "",
        "{'type': 'action_request_validation_exception', 'message': 'from a proxy'}",
    ),
    "empty-root-cause": ({"error": {"root_cause": []}}, "", ""),
    "plain-text": ("413 Request Entity Too Large", "", "413 Request Entity Too Large"),
    "no-body": (None, "", "None"),
}


@pytest.mark.parametrize("case", list(ERROR_BODIES), ids=list(ERROR_BODIES))
def test_the_error_type_and_reason_of_an_answer(case: str) -> None:
    body, kind, reason = ERROR_BODIES[case]
    error = api_error(400, body)
    assert (error_type(error), error_reason(error)) == (kind, reason)


@pytest.mark.parametrize(
    ("status", "case", "expected"),
    [
        (400, "nested", True),  # an _id over 512 bytes: that document's fault
        (400, "root-cause-only", False),
        (400, "without-error", False),  # a proxy's JSON: about the request, not the document
        (400, "string-error", False),
        (400, "plain-text", False),
        (413, "plain-text", True),  # too large, whatever the body
        (413, "no-body", True),
    ],
)
def test_which_refused_single_document_requests_are_the_documents_fault(
    status: int, case: str, expected: bool
) -> None:
    assert is_request_fault_of_the_document(api_error(status, ERROR_BODIES[case][0])) is expected


def events_settings(es_url: str, prefix: str) -> ElasticsearchSettings:
    return ElasticsearchSettings(url=es_url, index_prefix=prefix, number_of_replicas=0, retention_days=30)


@pytest.mark.parametrize("answer", list(REFUSED_POLICIES), ids=list(REFUSED_POLICIES))
def test_a_policy_elasticsearch_refuses_stops_the_setup(answer: str, es_url: str, unique: str) -> None:
    """A 400 to the policy itself is not a server without ILM: going on would keep every index forever."""
    proxy = LifecycleAnswers(es_url, 400, REFUSED_POLICIES[answer])
    try:
        setup = events_setup(events_settings(es_url, f"r{unique}"))
        with pytest.raises(IndexSetupError) as refused:
            ensure_index_setup(es(proxy.url), setup)
    finally:
        proxy.close()
    message = str(refused.value)
    reason = REFUSED_POLICIES[answer]["error"]["reason"]
    assert f"lifecycle policy r{unique}-events (delete after 30d)" in message and reason in message
    assert "400 " + REFUSED_POLICIES[answer]["error"]["type"] in message
    assert "elasticsearch.retention_days" in message and "lifecycle_enabled=false" in message
    if answer == "bad-min-age":
        assert "with value [30x]" in message  # the cause names the value at fault
    direct = es(es_url)
    assert not direct.indices.exists_index_template(name=setup.template_name)  # nothing installed without it
    assert not direct.indices.exists_alias(name=setup.alias)


def test_the_worker_start_stops_on_a_refused_policy_instead_of_retrying(es_url: str, unique: str) -> None:
    """`finsent run` exits 2 with the message (commands.pipeline); retrying a refusal would only hide it."""
    import threading

    from finsent.app import setup_elasticsearch
    from finsent.settings import Settings

    proxy = LifecycleAnswers(es_url, 400, REFUSED_POLICIES["invalid-action"])
    stop = threading.Event()
    try:
        settings = Settings(elasticsearch=events_settings(proxy.url, f"w{unique}").model_dump())
        timer = threading.Timer(20.0, stop.set)  # a retry loop would end only here, with another error
        timer.start()
        with pytest.raises(IndexSetupError, match="invalid action"):
            setup_elasticsearch(settings, stop)
        assert not stop.is_set()
    finally:
        timer.cancel()
        proxy.close()


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_the_lifecycle_api_refuses_stop_the_start_in_one_line(
    es_url: str, unique: str, status: int
) -> None:
    """An API key without the manage_ilm privilege (403), or one that expired (401): the policy request
    was retried for ever, labelers unready and `up` still 1, while only a 400 stopped the start."""
    import threading

    from finsent.app import setup_elasticsearch
    from finsent.settings import Settings

    kind = "security_exception"
    reason = "action [cluster:admin/ilm/put] is unauthorized for API key id [k1] of user [finsent]"
    proxy = LifecycleAnswers(es_url, status, es_error(status, kind, reason))
    stop = threading.Event()
    timer = threading.Timer(20.0, stop.set)  # a retry loop would end only here, with another error
    timer.start()
    try:
        settings = Settings(elasticsearch=events_settings(proxy.url, f"k{unique}").model_dump())
        with pytest.raises(IndexSetupError) as refused:
            setup_elasticsearch(settings, stop)
        assert not stop.is_set()
    finally:
        timer.cancel()
        proxy.close()
    message = str(refused.value)
    assert f"{status} {kind}: {reason}" in message, message
    assert "manage_ilm" in message and "lifecycle_enabled=false" in message, message


def test_a_stop_while_elasticsearch_is_down_at_start_is_a_stop_not_a_crash() -> None:
    """SIGTERM while start-up waits for Elasticsearch re-raised the connection error: `finsent run`
    ended with a traceback and exit 1 for a stop it was asked for (it maps StoppedDuringStartup to 0)."""
    import threading

    from finsent.app import StoppedDuringStartup, setup_elasticsearch
    from finsent.settings import Settings

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: refused
        settings = Settings(elasticsearch=events_settings(url, "down").model_dump())
        stop = threading.Event()
        timer = threading.Timer(0.5, stop.set)
        timer.start()
        try:
            with pytest.raises(StoppedDuringStartup, match="Elasticsearch was unavailable"):
                setup_elasticsearch(settings, stop)
        finally:
            timer.cancel()


@pytest.mark.parametrize("answer", list(NO_LIFECYCLE_API), ids=list(NO_LIFECYCLE_API))
def test_a_server_without_a_lifecycle_api_is_set_up_without_one(
    answer: str, es_url: str, unique: str
) -> None:
    status, body = NO_LIFECYCLE_API[answer]
    proxy = LifecycleAnswers(es_url, status, body)
    try:
        setup = events_setup(events_settings(es_url, f"n{unique}"))
        assert ensure_index_setup(es(proxy.url), setup) is False
    finally:
        proxy.close()
    direct = es(es_url)
    tpl = direct.indices.get_index_template(name=setup.template_name)["index_templates"][0]["index_template"]
    assert "lifecycle" not in json.dumps(tpl["template"].get("settings", {}))
    assert direct.count(index=setup.alias)["count"] == 0


def test_the_events_alias_answers_before_the_first_document(es_url: str, unique: str) -> None:
    """Dashboards and queries on the alias work on a fresh install with a quiet stream: its first index is
    the current day's, as the template makes it (mappings, alias); later starts add no empty index."""
    client = es(es_url)
    settings = events_settings(es_url, f"q{unique}")
    day = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    ensure_index_setup(client, events_setup(settings, now=day))
    alias = f"q{unique}-events"
    assert client.count(index=alias)["count"] == 0
    assert client.search(index=alias, sort=[{"published_at": "desc"}])["hits"]["hits"] == []
    first = f"q{unique}-events-2026.11.30"
    assert list(client.indices.get_alias(name=alias)) == [first]
    assert (
        client.indices.get_mapping(index=first)[first]["mappings"]["properties"]["tickers"]["type"]
        == "keyword"
    )
    ensure_index_setup(client, events_setup(settings, now=day + timedelta(days=1)))
    assert list(client.indices.get_alias(name=alias)) == [first]


class AliasNotYetThere(ForwardingProxy):
    """Says the alias does not exist (404 to `HEAD /_alias/...`): what a worker sees when another one
    creates the first index between its check and its own create."""

    def answer(self, handler: Any, body: bytes) -> bool:
        if not (handler.command == "HEAD" and handler.path.startswith("/_alias/")):
            return False
        reply(handler, 404)
        return True


def test_workers_setting_up_at_once_all_succeed(es_url: str, unique: str) -> None:
    settings = events_settings(es_url, f"c{unique}")
    errors: list[BaseException] = []

    def start() -> None:
        try:
            ensure_index_setup(es(es_url), events_setup(settings))
        except Exception as e:
            errors.append(e)

    at_once(start)
    assert errors == []
    late = AliasNotYetThere(es_url)
    try:  # the other worker's index is there by the time this one creates it: already exists is success
        ensure_index_setup(es(late.url), events_setup(settings))
    finally:
        late.close()
    assert len(es(es_url).indices.get_alias(name=f"c{unique}-events")) == 1


def test_a_template_elasticsearch_refuses_stops_the_start_in_one_line(es_url: str, unique: str) -> None:
    """An operator's own template over the same index names at the same priority: Elasticsearch refuses
    finsent's with a 400 at every try. The start used to retry it for ever (labeler unready, one warning
    every ten tries, and 'stopped while Elasticsearch was unavailable' at the stop); now it stops with the
    reason and what to change (`finsent run` exits 2 with it, as for a refused policy)."""
    from finsent.app import setup_elasticsearch
    from finsent.settings import Settings

    client = es(es_url)
    client.indices.put_index_template(
        name=f"ops-{unique}", index_patterns=[f"c{unique}-*"], priority=200, template={}
    )
    stop = threading.Event()
    timer = threading.Timer(20.0, stop.set)  # a retry loop would end only here, with another error
    timer.start()
    try:
        settings = Settings(elasticsearch=events_settings(es_url, f"c{unique}").model_dump())
        with pytest.raises(IndexSetupError) as refused:
            setup_elasticsearch(settings, stop)
        assert not stop.is_set()
    finally:
        timer.cancel()
    message = str(refused.value)
    assert message.startswith(
        f"Elasticsearch refused index template c{unique}-events (patterns c{unique}-events-*, "
        "priority 200): 400 "
    ), message
    assert "another index template matches the same index names at the same priority" in message, message


@pytest.mark.parametrize(
    ("status", "for_good"),
    [
        (400, True),
        (401, True),
        (403, True),
        (404, True),
        (408, False),
        (409, False),
        (429, False),
        (500, False),
        (503, False),
    ],
)
def test_which_setup_errors_are_refusals(status: int, for_good: bool) -> None:
    from finsent.outputs.es_setup import refused_for_good

    assert refused_for_good(api_error(status, {"error": {"type": "x", "reason": "y"}})) is for_good


def test_todays_index_made_without_the_alias_gets_it(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Today's index created before the template (by hand, another tool): setup used to count it as the
    alias's index though it had no alias, so today's documents were invisible on the alias (dashboards,
    queries) until tomorrow's index. Now the alias is added to it, with a warning."""
    client = es(es_url)
    settings = events_settings(es_url, f"h{unique}")
    day = datetime.now(UTC)
    setup = events_setup(settings, now=day)
    assert setup.bootstrap_index is not None
    client.indices.create(
        index=setup.bootstrap_index, mappings={"properties": {"topic": {"type": "keyword"}}}
    )
    with caplog.at_level("WARNING", logger="finsent.outputs.es_setup"):
        ensure_index_setup(client, setup)
    assert client.indices.exists_alias(name=setup.alias, index=setup.bootstrap_index)
    client.index(
        index=setup.bootstrap_index, id="m1", document={"id": "m1", "topic": "Earnings"}, refresh=True
    )
    assert client.count(index=setup.alias)["count"] == 1
    warned = [r.getMessage() for r in caplog.records if "existed without alias" in r.getMessage()]
    assert warned == [
        f"index {setup.bootstrap_index} existed without alias {setup.alias} (created before the index "
        "template, by hand or by another tool): added the alias and the template's fields its mapping "
        "lacked"
    ]
    mapping = client.indices.get_mapping(index=setup.bootstrap_index)[setup.bootstrap_index]["mappings"]
    assert mapping["properties"]["tickers"]["type"] == "keyword"
    caplog.clear()
    with caplog.at_level("WARNING", logger="finsent.outputs.es_setup"):
        ensure_index_setup(client, setup)  # the next start finds the alias: nothing to say
    assert not [r for r in caplog.records if "existed without alias" in r.getMessage()]


def test_a_field_a_newer_release_maps_is_added_to_the_indices_already_there(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A template applies only to indices created after it: a release mapping a new field left today's
    index without it, so with `dynamic: false` its documents were not searchable by that field (no
    error) until the next day's index; older days, which replays write to, never."""
    client = es(es_url)
    settings = events_settings(es_url, f"n{unique}")
    day = datetime.now(UTC)
    setup = events_setup(settings, now=day)
    assert setup.bootstrap_index is not None
    props = dict(setup.mappings["properties"])
    older = replace(
        setup,
        mappings={**setup.mappings, "properties": {k: v for k, v in props.items() if k != "model_version"}},
    )
    ensure_index_setup(client, older)  # the older release's template made today's index
    yesterday = f"n{unique}-events-2000.01.01"  # an older day, made by the older template too
    client.indices.create(index=yesterday)
    ensure_index_setup(client, setup)  # this release starts
    for index in (setup.bootstrap_index, yesterday):
        mapping = client.indices.get_mapping(index=index)[index]["mappings"]
        assert mapping["properties"]["model_version"] == {"type": "keyword"}, index
    clash = replace(
        setup, mappings={**setup.mappings, "properties": {**props, "model_version": {"type": "long"}}}
    )
    with caplog.at_level("WARNING", logger="finsent.outputs.es_setup"):
        ensure_index_setup(client, clash)  # a field mapped otherwise stays as it is: one warning
    assert [r for r in caplog.records if "could not map the template's fields" in r.getMessage()]


def test_the_client_leaves_retries_to_its_callers() -> None:
    """The sink, the index set-up and the alert documents retry with their own backoff and stop deadline;
    the client's own three immediate retries made a request in flight at a stop outlast the deadline by a
    whole request timeout (20 s past it, seen by a reviewer) and hammered a server answering 503."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from elasticsearch import ApiError

    from finsent.outputs.es_client import make_client
    from finsent.settings import ElasticsearchSettings

    requests: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = b'{"error": {"type": "unavailable", "reason": "busy"}, "status": 503}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = make_client(ElasticsearchSettings(url=f"http://127.0.0.1:{server.server_address[1]}"))
        with pytest.raises(ApiError):
            client.info()
        assert requests == ["/"]
    finally:
        server.shutdown()
        server.server_close()
