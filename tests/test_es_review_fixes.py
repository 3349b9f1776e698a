"""Elasticsearch answers that were taken the wrong way, against the real Elasticsearch-API server (noida-db)
and, for answers it does not give, a proxy in front of it: alert documents dropped on a write block, a
refused key or a missing index; setup refusals of the alias retried for ever; a 200 to `_bulk` that is no
bulk answer crashing the labeler; and `finsent produce` on an id Kafka cannot carry, or on a backfill that
a second run would duplicate."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import ApiError

from finsent.alert_index import ALERTS_MAPPING, AlertIndex
from finsent.alert_worker import AlertWorker
from finsent.outputs.es_setup import IndexSetupError, ensure_index_setup, events_setup
from finsent.outputs.es_sink import ElasticsearchSink, IndexAction, SinkStopped, is_refused_document
from finsent.settings import ElasticsearchSettings
from ingest.decode import DecodeLimits, decode
from ingest.message import DeadLetter, KafkaMeta
from tests.pipeline_helpers import ForwardingProxy, read_topic, reply
from tests.servers import Noida, create_topic
from tests.test_alerts_delivery import (
    Clock,
    MemoryStateStore,
    Outcomes,
    Receiver,
    alert_settings,
    slack_dispatcher,
    start_worker,
)
from tests.test_alerts_notifiers import make_alert
from tests.test_outputs_es import api_error, es, es_error
from tests.test_pipeline_produce import produce_cli, read_all

# ------------------------------------------------------------------------------------- alert documents


class AlertsAnswers(ForwardingProxy):
    """What noida-db does not answer for the alerts index: document writes refused with 401 (an expired
    key) `unauthorized` times; 403 to every HEAD while `no_metadata` (a key that may write documents but
    lacks view_index_metadata); 404 index_not_found to a write into a missing index while `no_auto_create`
    (action.auto_create_index=false, which noida-db does not heed). Everything else is forwarded."""

    def __init__(self, target: str) -> None:
        self.unauthorized = 0
        self.no_metadata = False
        self.no_auto_create = False
        self.direct = es(target)
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        path = handler.path.split("?")[0]
        if self.no_metadata and handler.command == "HEAD":
            reply(handler, 403)  # a HEAD answer has no body
            return True
        if "/_doc/" not in path:
            return False
        if self.unauthorized > 0:
            self.unauthorized -= 1
            reply(handler, 401, es_error(401, "security_exception", "unable to authenticate"))
            return True
        index = path.split("/")[1]
        if self.no_auto_create and not self.direct.indices.exists(index=index):
            reply(handler, 404, es_error(404, "index_not_found_exception", f"no such index [{index}]"))
            return True
        return False


@pytest.fixture
def alerts_proxy(es_url: str) -> Iterator[AlertsAnswers]:
    proxy = AlertsAnswers(es_url)
    yield proxy
    proxy.close()


def worker_writing_to(index: AlertIndex, clock: Clock) -> AlertWorker:
    dispatcher, _ = slack_dispatcher(Receiver(clock), clock, Outcomes())
    worker, _ = start_worker(alert_settings(), dispatcher, clock, MemoryStateStore())
    worker.index = index
    return worker


def test_alert_documents_refused_by_a_write_block_are_written_once_it_is_lifted(
    es_url: str, unique: str
) -> None:
    """403 cluster_block_exception (index.blocks.write, a disk's flood stage): the document was dropped as
    refused for good, while the labeler's sink holds its batches on the same answer."""
    direct = es(es_url)
    index = AlertIndex(es(es_url), f"wb{unique}")
    assert index.prepare()
    direct.indices.add_block(index=index.index, block="write")
    clock = Clock()
    worker = worker_writing_to(index, clock)
    alert = make_alert("ACME")
    worker._index(alert, 0)
    assert list(worker._unindexed) == [alert.alert_id]  # held for the next try, not dropped
    direct.indices.put_settings(index=index.index, settings={"index.blocks.write": False})
    clock.now += 2
    worker.step()
    assert not worker._unindexed
    assert direct.get(index=index.index, id=alert.alert_id)["_source"]["status"] == "firing"


def test_alert_documents_refused_with_an_expired_key_are_written_once_it_is_renewed(
    alerts_proxy: AlertsAnswers, es_url: str, unique: str
) -> None:
    index = AlertIndex(es(alerts_proxy.url), f"ek{unique}")
    assert index.prepare()
    alerts_proxy.unauthorized = 2
    clock = Clock()
    worker = worker_writing_to(index, clock)
    alert = make_alert("ACME")
    worker._index(alert, 0)
    assert list(worker._unindexed) == [alert.alert_id]
    clock.now += 1.5
    worker.step()  # refused again
    assert list(worker._unindexed) == [alert.alert_id] and alerts_proxy.unauthorized == 0
    clock.now += 2.5
    worker.step()
    assert not worker._unindexed
    assert es(es_url).exists(index=index.index, id=alert.alert_id)


class RefusedIndexCreation(ForwardingProxy):
    """Answers the creation of any index with 400 mapper_parsing_exception (a template of another mapping
    over the alerts index's name) while `refuse` holds; forwards the rest."""

    def __init__(self, target: str) -> None:
        self.refuse = True
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        path = handler.path.split("?")[0]
        if self.refuse and handler.command == "PUT" and path.count("/") == 1:
            reply(handler, 400, es_error(400, "mapper_parsing_exception", "failed to parse mapping"))
            return True
        return False


def test_an_alerts_index_that_cannot_be_created_keeps_the_documents_queued(es_url: str, unique: str) -> None:
    """The index's creation refused with a 400 is no document's fault: each alert was dropped as refused
    for good, though the next try, once the template is fixed, writes it."""
    proxy = RefusedIndexCreation(es_url)
    try:
        index = AlertIndex(es(proxy.url), f"rc{unique}")
        assert not index.prepare()
        clock = Clock()
        worker = worker_writing_to(index, clock)
        alert = make_alert("ACME")
        worker._index(alert, 0)
        assert list(worker._unindexed) == [alert.alert_id]
        proxy.refuse = False
        clock.now += 2
        worker.step()
        assert not worker._unindexed
        assert es(es_url).exists(index=index.index, id=alert.alert_id)
    finally:
        proxy.close()


@pytest.mark.parametrize("made_by_an_operator", [True, False], ids=["index-there", "index-missing"])
def test_a_key_that_may_not_look_at_the_index_still_writes_alert_documents(
    alerts_proxy: AlertsAnswers, es_url: str, unique: str, made_by_an_operator: bool
) -> None:
    """HEAD /<prefix>-alerts answers 403 without view_index_metadata: the start-up failed, every write
    asked again, got 403, and every alert document was dropped without its write being tried."""
    direct = es(es_url)
    name = f"nm{unique}-alerts"
    if made_by_an_operator:
        direct.indices.create(index=name, mappings=ALERTS_MAPPING)
    alerts_proxy.no_metadata = True
    index = AlertIndex(es(alerts_proxy.url), f"nm{unique}")
    assert index.prepare()
    alert = make_alert("ACME")
    index.write(alert)
    assert direct.exists(index=name, id=alert.alert_id)
    props = direct.indices.get_mapping(index=name)[name]["mappings"]["properties"]
    assert props["key"] == {"type": "keyword"}  # created with its mapping where it was missing


def test_an_alerts_index_deleted_while_running_is_created_again_with_its_mapping(
    alerts_proxy: AlertsAnswers, es_url: str, unique: str
) -> None:
    """With auto-creation off a write to a deleted index answers 404 index_not_found: the index, marked
    ready at the start, was never created again, and each alert document was dropped."""
    direct = es(es_url)
    index = AlertIndex(es(alerts_proxy.url), f"del{unique}")
    assert index.prepare()
    direct.indices.delete(index=index.index)
    alerts_proxy.no_auto_create = True
    clock = Clock()
    worker = worker_writing_to(index, clock)
    alert = make_alert("ACME")
    worker._index(alert, 0)
    assert list(worker._unindexed) == [alert.alert_id]
    clock.now += 2
    worker.step()
    assert not worker._unindexed
    assert direct.exists(index=index.index, id=alert.alert_id)
    props = direct.indices.get_mapping(index=index.index)[index.index]["mappings"]["properties"]
    assert props["starts_at"] == {"type": "date"} and props["key"] == {"type": "keyword"}


def index_fault(status: int, kind: str, reason: str = "x") -> dict[str, Any]:
    return es_error(status, kind, reason)


@pytest.mark.parametrize(
    ("status", "body", "refused"),
    [
        (400, index_fault(400, "document_parsing_exception", "failed to parse field [count]"), True),
        (400, {"error": "mapper_parsing_exception"}, True),  # a flat message: the status says
        (413, "413 Request Entity Too Large", True),
        (403, index_fault(403, "cluster_block_exception", "index write (api)"), False),
        (403, None, False),  # a HEAD's answer: no body
        (401, index_fault(401, "security_exception", "unable to authenticate"), False),
        (404, index_fault(404, "index_not_found_exception", "no such index"), False),
        (400, index_fault(400, "validation_exception", "maximum normal shards open"), False),
        (400, index_fault(400, "illegal_argument_exception", "no write index is defined"), False),
        (429, index_fault(429, "es_rejected_execution_exception"), False),
        (503, None, False),
    ],
)
def test_which_refused_alert_documents_are_dropped(status: int, body: Any, refused: bool) -> None:
    """The labeler's rule for a bulk item (is_document_fault), read from a one-document answer."""
    assert is_refused_document(api_error(status, body)) is refused


# -------------------------------------------------------------------------------------- alias setup


class AliasRefusals(ForwardingProxy):
    """Refuses the alias requests of the setup: `head` is the status of every `HEAD .../_alias/...`,
    `put` (with a security_exception) that of adding an alias; None forwards."""

    def __init__(self, target: str, *, head: int | None = None, put: int | None = None) -> None:
        self.head, self.put = head, put
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if "/_alias" not in handler.path:
            return False
        if handler.command == "HEAD" and self.head is not None:
            reply(handler, self.head)
            return True
        if handler.command in ("PUT", "POST") and self.put is not None:
            reason = "action [indices:admin/aliases] is unauthorized for API key id [k1]"
            reply(handler, self.put, es_error(self.put, "security_exception", reason))
            return True
        return False


def refused_setup(url: str, prefix: str) -> str:
    """`finsent run`'s index setup against `url`: the IndexSetupError it stops with (exit 2), which must
    come at once, not from a retry loop ended by the stop."""
    from finsent.app import setup_elasticsearch
    from finsent.settings import Settings

    es_settings = {"url": url, "index_prefix": prefix, "number_of_replicas": 0, "retry_backoff_max_s": 0.2}
    stop = threading.Event()
    timer = threading.Timer(20.0, stop.set)
    timer.start()
    try:
        with pytest.raises(IndexSetupError) as refused:
            setup_elasticsearch(Settings(elasticsearch=es_settings), stop)
        assert not stop.is_set()
    finally:
        timer.cancel()
    return str(refused.value)


@pytest.mark.parametrize(("status", "fix"), [(403, "view_index_metadata privilege"), (401, "not accepted")])
def test_a_refused_alias_check_stops_the_start_with_the_reason(
    es_url: str, unique: str, status: int, fix: str
) -> None:
    proxy = AliasRefusals(es_url, head=status)
    try:
        message = refused_setup(proxy.url, f"ah{unique}")
    finally:
        proxy.close()
    assert message.startswith(f"Elasticsearch refused checking alias ah{unique}-events: {status} "), message
    assert fix in message, message


def test_a_refused_alias_addition_stops_the_start_with_the_reason(es_url: str, unique: str) -> None:
    """Today's index made before the template, and a key without `manage` on it: adding the alias was
    retried for ever."""
    setup = events_setup(ElasticsearchSettings(url=es_url, index_prefix=f"ap{unique}"), now=datetime.now(UTC))
    assert setup.bootstrap_index is not None
    es(es_url).indices.create(index=setup.bootstrap_index)
    proxy = AliasRefusals(es_url, put=403)
    try:
        message = refused_setup(proxy.url, f"ap{unique}")
    finally:
        proxy.close()
    assert message.startswith(
        f"Elasticsearch refused adding alias ap{unique}-events to index {setup.bootstrap_index}: 403 "
        "security_exception: action [indices:admin/aliases] is unauthorized"
    ), message
    assert "manage privilege" in message, message


def test_an_alias_check_the_server_cannot_answer_now_is_retried(es_url: str, unique: str) -> None:
    proxy = AliasRefusals(es_url, head=503)
    try:
        setup = events_setup(ElasticsearchSettings(url=es_url, index_prefix=f"a5{unique}"))
        with pytest.raises(ApiError) as unavailable:  # raised as it is, for the start to retry
            ensure_index_setup(es(proxy.url), setup)
    finally:
        proxy.close()
    assert unavailable.value.meta.status == 503


# ------------------------------------------------------------------------------------ bulk answers


MALFORMED_BULK_ANSWERS: dict[str, tuple[str, bytes]] = {
    "html-page": ("text/html", b"<html>sign in to the portal</html>"),
    "plain-text": ("text/plain", b"OK"),
    "json-list": ("application/json", b"[]"),
    "no-items": ("application/json", b'{"took": 1, "errors": true}'),
    "fewer-items": (
        "application/json",
        b'{"took": 1, "errors": true, "items": [{"index": {"status": 429}}]}',
    ),
    "item-not-an-object": ("application/json", b'{"took": 1, "errors": true, "items": [1, 2, 3]}'),
    "empty-item": ("application/json", b'{"took": 1, "errors": false, "items": [{}, {}, {}]}'),
}


class MalformedBulk(ForwardingProxy):
    """Answers `_bulk` with a 200 carrying Elasticsearch's product header and `body` `times` times (a
    proxy's page, a foreign server behind the same address), then forwards."""

    def __init__(self, target: str, content_type: str, body: bytes, times: int) -> None:
        self.content_type, self.body, self.times = content_type, body, times
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if "_bulk" not in handler.path or self.times <= 0:
            return False
        self.times -= 1
        handler.send_response(200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("X-Elastic-Product", "Elasticsearch")
        handler.send_header("Content-Length", str(len(self.body)))
        handler.end_headers()
        handler.wfile.write(self.body)
        return True


@pytest.mark.parametrize("case", list(MALFORMED_BULK_ANSWERS), ids=list(MALFORMED_BULK_ANSWERS))
def test_a_bulk_answer_that_is_none_holds_the_batch_instead_of_crashing(
    case: str, es_url: str, unique: str
) -> None:
    """AttributeError, KeyError or ValueError from reading it ended the labeler (exit 1, a crash loop)."""
    content_type, body = MALFORMED_BULK_ANSWERS[case]
    proxy = MalformedBulk(es_url, content_type, body, times=2)
    errors: list[int] = []
    try:
        sink = ElasticsearchSink(
            es(proxy.url), stop=threading.Event(), backoff_max_s=0.1, on_error=lambda: errors.append(1)
        )
        index = f"mb{unique}"
        assert sink.write([IndexAction(index, str(i), {"i": i}) for i in range(3)]) == []
    finally:
        proxy.close()
    assert len(errors) == 2 and sink.available and "SerializationError" in sink._why_retry
    direct = es(es_url)
    direct.indices.refresh(index=index)
    assert direct.count(index=index)["count"] == 3


def test_a_stop_while_bulk_answers_are_malformed_writes_nothing(es_url: str, unique: str) -> None:
    content_type, body = MALFORMED_BULK_ANSWERS["html-page"]
    proxy = MalformedBulk(es_url, content_type, body, times=1_000)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        sink = ElasticsearchSink(es(proxy.url), stop=stop, backoff_max_s=0.1)
        with pytest.raises(SinkStopped):
            sink.write([IndexAction(f"ms{unique}", "1", {"i": 1})])
    finally:
        timer.cancel()
        proxy.close()
    assert not sink.available


# -------------------------------------------------------------------------------------- produce


def test_an_id_kafka_cannot_carry_is_sent_unkeyed_and_dead_lettered(
    noida: Noida, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`"id": "\\ud800"` (an unpaired surrogate escape) is valid JSON whose id is no UTF-8: encoding it as
    the key ended the replay with a traceback, dropping the records it had sent."""
    f = tmp_path / "s.jsonl"
    bad = b'{"id":"\\ud800","source":"s","text":"bad id"}'
    f.write_bytes(b'{"id":"a","source":"s","text":"one"}\n' + bad + b'\n{"id":"c","source":"s","text":"3"}\n')
    assert [key for key, _ in read_all(f)] == [b"a", None, b"c"]
    topic = f"surrogate-{unique}"
    create_topic(noida.kafka, topic)
    assert produce_cli(monkeypatch, noida.kafka, f, topic) == 0
    got = read_topic(noida.kafka, topic, expected=3, settle_s=0.3)
    assert [r.value for r in got][1] == bad  # as it was, for the pipeline to dead-letter
    record = got[1]
    meta = KafkaMeta(topic, record.partition, record.offset, record.timestamp, record.key)
    dead = decode(record.value, meta, DecodeLimits(), datetime.now(UTC))
    assert isinstance(dead, DeadLetter) and dead.error == "invalid_utf8"
    assert dead.reason == "field 'id' holds an unpaired surrogate escape"


def replayed_warning(path: Path) -> str:
    """What `finsent produce` warns of after sending all of `path`'s records ('' for nothing)."""
    from finsent.produce import open_input

    with open_input(path) as replay_input:
        list(replay_input.records)
    return replay_input.undated_warning() or ""


def test_a_backfill_that_a_rerun_would_duplicate_is_warned_about_once(tmp_path: Path) -> None:
    """Records with neither `id` nor `published_at` get their id from the Kafka timestamp of the run, so
    each run of the file indexes them anew."""
    undated = tmp_path / "undated.csv"
    undated.write_text("source,text,id\nwire,ACME beats,\nwire,BETA misses,b1\nwire,GAMMA holds,\n")
    warning = replayed_warning(undated)
    assert "\n" not in warning and "2 records had neither `id` nor `published_at`" in warning, warning
    lines = [
        {"source": "s", "text": "dated", "published_at": "2026-11-30T09:00:00Z"},
        {"source": "s", "text": "keyed", "id": "k1"},
        {"source": "s", "text": "neither"},
        "not an object",
    ]
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    assert "1 records had neither" in replayed_warning(jsonl)
    keyed = tmp_path / "keyed.csv"
    keyed.write_text("text,id\nACME beats,a1\n")
    assert replayed_warning(keyed) == ""


def test_produce_warns_of_undated_records_after_its_count(
    noida: Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f = tmp_path / "undated.csv"
    f.write_text("text\nACME beats\n")
    topic = f"undated-{unique}"
    create_topic(noida.kafka, topic)
    capsys.readouterr()
    assert produce_cli(monkeypatch, noida.kafka, f, topic) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sent 1 records") and err.count("records had neither") == 1, (out, err)


def test_the_warning_counts_only_the_records_taken(tmp_path: Path) -> None:
    """Reading the first record at the open (to check the file) does not count it: a replay stopped
    before it sent anything has nothing to warn about."""
    from finsent.produce import open_input

    f = tmp_path / "undated.csv"
    f.write_text("text\none\ntwo\n")
    with open_input(f) as replay_input:
        next(replay_input.records)
    assert "1 records had neither" in (replay_input.undated_warning() or "")
    with open_input(f) as untouched:
        pass
    assert untouched.undated_warning() is None
