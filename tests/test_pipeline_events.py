"""Labeled-event fan-out per alert key and the Elasticsearch document builder (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from finsent.labeled_events import alert_keys, labeled_events
from finsent.outputs.es_documents import EVENTS_MAPPINGS, build_document, events_index, pseudonym
from finsent.outputs.es_sink import IndexAction, bulk_body
from inference.types import Prediction
from ingest.message import KafkaMeta, Message

PRED = Prediction(
    topic="Earnings",
    topic_score=0.9,
    sentiment="negative",
    sentiment_score=0.8,
    topic_probs={"Earnings": 0.9, "Markets": 0.1},
    sentiment_probs={"negative": 0.8, "neutral": 0.15, "positive": 0.05},
)
MSG = Message(
    id="m1",
    source="news",
    text="x" * 1_500,
    title="T",
    url="https://u",
    lang="en",
    author="ann",
    tickers=("ACME", "AAPL"),
    published_at=datetime(2026, 11, 30, 8, 30, tzinfo=UTC),
    content_hash="c" * 32,
    meta=KafkaMeta("raw", 1, 5, 1, b"k"),
    raw=b"{}",
)
LABELED_AT = datetime(2026, 11, 30, 8, 30, 1, 500_000, tzinfo=UTC)


def test_alert_keys_per_configured_type() -> None:
    assert alert_keys(MSG, PRED, ("ticker", "topic", "source", "all")) == [
        ("ticker", "ACME"),
        ("ticker", "AAPL"),
        ("topic", "Earnings"),
        ("source", "news"),
        ("all", "*"),
    ]
    assert alert_keys(MSG, PRED, ("all",)) == [("all", "*")]
    with pytest.raises(ValueError, match="unknown alert key type"):
        alert_keys(MSG, PRED, ("sector",))


def test_labeled_events_follow_the_contract() -> None:
    events = labeled_events(MSG, PRED, key_types=("ticker", "all"), labeled_at=LABELED_AT, model_version="v1")
    assert [k for k, _ in events] == [b"ticker:ACME", b"ticker:AAPL", b"all:*"]
    first = json.loads(events[0][1])
    assert first["event_id"] == "m1|ticker:ACME"
    assert (first["key_type"], first["key"], first["id"]) == ("ticker", "ACME", "m1")
    assert len(first["text"]) == 1_000
    assert first["published_at"] == "2026-11-30T08:30:00.000Z"
    assert first["labeled_at"] == "2026-11-30T08:30:01.500Z"
    assert first["sentiment_probs"] == {"negative": 0.8, "neutral": 0.15, "positive": 0.05}
    assert first["tickers"] == ["ACME", "AAPL"] and first["model_version"] == "v1"
    assert {"url", "source", "topic", "topic_score", "sentiment", "sentiment_score"} <= set(first)


def test_message_without_tickers_gets_no_ticker_events() -> None:
    msg = Message(**{**{f: getattr(MSG, f) for f in MSG.__slots__}, "tickers": ()})  # type: ignore[arg-type]
    events = labeled_events(
        msg, PRED, key_types=("ticker", "source"), labeled_at=LABELED_AT, model_version="v"
    )
    assert [k for k, _ in events] == [b"source:news"]


def test_document_and_index() -> None:
    doc = build_document(MSG, PRED, ingested_at=LABELED_AT, labeled_at=LABELED_AT, model_version="v1")
    assert events_index("fs", MSG.published_at) == "fs-events-2026.11.30"
    assert doc["kafka"] == {"topic": "raw", "partition": 1, "offset": 5}
    assert doc["author"] == "ann" and doc["tickers"] == ["ACME", "AAPL"]
    assert doc["sentiment_probs"]["negative"] == 0.8
    mapped = set(EVENTS_MAPPINGS["properties"])
    assert set(doc) == mapped, set(doc) ^ mapped


def test_author_pseudonym_is_keyed_and_stable() -> None:
    doc = build_document(
        MSG, PRED, ingested_at=LABELED_AT, labeled_at=LABELED_AT, model_version="v1", author_key=b"secret"
    )
    assert doc["author"] == pseudonym("ann", b"secret") != "ann"
    assert pseudonym("ann", b"secret") != pseudonym("ann", b"other")
    assert doc["author"].startswith("anon-")


def test_events_and_bulk_body_are_utf8_json_even_with_numpy_scores() -> None:
    # A labeler may hand back numpy scalars; the outputs' orjson calls must take them, and keep text as UTF-8.
    import numpy as np

    pred = Prediction(
        topic="Earnings",
        topic_score=np.float32(0.9),  # type: ignore[arg-type]
        sentiment="negative",
        sentiment_score=np.float64(0.8),
        topic_probs={},
        sentiment_probs={"negative": np.float32(0.8)},  # type: ignore[dict-item]
    )
    msg = Message(**{**{f: getattr(MSG, f) for f in MSG.__slots__}, "text": "Börse 📉 fällt"})  # type: ignore[arg-type]
    (key, value), *_ = labeled_events(msg, pred, key_types=("all",), labeled_at=LABELED_AT, model_version="v")
    assert key == b"all:*" and "Börse 📉 fällt".encode() in value
    assert json.loads(value)["sentiment_score"] == 0.8
    doc = build_document(msg, pred, ingested_at=LABELED_AT, labeled_at=LABELED_AT, model_version="v")
    doc["extra"] = np.int64(3)
    body = bulk_body([IndexAction("fs-events-2026.11.30", "m1", doc), IndexAction("i", "m2", {"a": 1})])
    lines = body.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5  # NDJSON: one action and one source per document, then \n
    assert json.loads(lines[0]) == {"index": {"_index": "fs-events-2026.11.30", "_id": "m1"}}
    assert json.loads(lines[1])["text"] == "Börse 📉 fällt" and json.loads(lines[1])["extra"] == 3
    assert json.loads(lines[3]) == {"a": 1}


def test_timestamps_are_memoised_by_their_utc_instant() -> None:
    """Two New York times an hour apart across the end of daylight saving time compare equal as datetimes
    (same wall time, `fold` differs); each keeps its own UTC text, and equal instants share one."""
    from zoneinfo import ZoneInfo

    from finsent.labeled_events import rfc3339

    ny = ZoneInfo("America/New_York")
    first, second = datetime(2026, 11, 1, 1, 30, tzinfo=ny), datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ny)
    assert first == second  # what a cache keyed on the local time would confuse
    assert [rfc3339(first), rfc3339(second)] == ["2026-11-01T05:30:00.000Z", "2026-11-01T06:30:00.000Z"]
    assert rfc3339(second.astimezone(UTC)) == rfc3339(second) == "2026-11-01T06:30:00.000Z"
