"""Fan-out of one labeled message into labeled events, one per alert key (the topic's key scheme).

Record key `"<key_type>:<key_value>"`: every event for one ticker (or topic, source, or `all`) lands in one
partition, so alert workers scale by partition. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from alerts.events import alert_keys_of
from inference.types import Prediction
from ingest.message import Message

LABELED_TEXT_MAX_CHARS = 1_000


def rfc3339(ts: datetime) -> str:
    """UTC timestamp with millisecond precision and a `Z` suffix. Memoised on the UTC instant (about 2 us a
    call otherwise): a batch's labeled_at is written into every document and event of the batch, and each
    published_at into the message's document and its events."""
    return _utc_text(ts if ts.tzinfo is UTC else ts.astimezone(UTC))


@lru_cache(maxsize=4096)
def _utc_text(ts: datetime) -> str:
    # Keyed on UTC datetimes only: local times an hour apart across a DST change (`fold`) compare equal.
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_keys(message: Message, prediction: Prediction, key_types: Iterable[str]) -> list[tuple[str, str]]:
    """(key_type, key) pairs for one message, in a stable order, without repeats (`alert_keys_of`)."""
    return alert_keys_of(message.tickers, prediction.topic, message.source, key_types)


def event_fields(
    message: Message, prediction: Prediction, *, labeled_at: datetime, model_version: str
) -> dict[str, Any]:
    """The fields every labeled event of `message` shares (each event adds its own key fields)."""
    return {
        "id": message.id,
        "source": message.source,
        "text": message.text[:LABELED_TEXT_MAX_CHARS],
        "url": message.url,
        "tickers": list(message.tickers),
        "published_at": rfc3339(message.published_at),
        "labeled_at": rfc3339(labeled_at),
        "topic": prediction.topic,
        "topic_score": round(float(prediction.topic_score), 6),
        "sentiment": prediction.sentiment,
        "sentiment_score": round(float(prediction.sentiment_score), 6),
        "sentiment_probs": {k: round(float(v), 6) for k, v in prediction.sentiment_probs.items()},
        "model_version": model_version,
    }


def key_fields(message: Message, key_type: str, key: str) -> dict[str, str]:
    """The fields that tell one event of a message from its others."""
    return {"event_id": f"{message.id}|{key_type}:{key}", "key_type": key_type, "key": key}


def labeled_events(
    message: Message,
    prediction: Prediction,
    *,
    key_types: Sequence[str],
    labeled_at: datetime,
    model_version: str,
) -> list[tuple[bytes, bytes]]:
    """(record key, JSON value) for every alert key of `message`."""
    base = event_fields(message, prediction, labeled_at=labeled_at, model_version=model_version)
    # The shared fields are serialised once (orjson: half the stdlib's CPU per message, bench/outputs.py);
    # each event only prepends its own three fields.
    shared = orjson.dumps(base, option=orjson.OPT_SERIALIZE_NUMPY)[1:]
    out: list[tuple[bytes, bytes]] = []
    for key_type, key in alert_keys(message, prediction, key_types):
        own = orjson.dumps(key_fields(message, key_type, key))
        out.append((f"{key_type}:{key}".encode(), own[:-1] + b"," + shared))
    return out
