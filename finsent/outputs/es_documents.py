"""Elasticsearch document for one labeled message, its daily index, and the events index mappings.

The index is chosen by `published_at` (not by arrival time), so a replay rewrites the same document in the
same index: `_id` = message id never duplicates."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from finsent.labeled_events import rfc3339
from inference.types import Prediction
from ingest.message import Message

EVENTS_MAPPINGS: dict[str, Any] = {
    "dynamic": "false",
    "properties": {
        "id": {"type": "keyword"},
        "source": {"type": "keyword", "ignore_above": 256},
        "text": {"type": "text"},
        "title": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 512}}},
        "url": {"type": "keyword", "ignore_above": 2048},
        "lang": {"type": "keyword", "ignore_above": 64},
        "author": {"type": "keyword", "ignore_above": 256},
        "tickers": {"type": "keyword", "ignore_above": 64},
        "published_at": {"type": "date"},
        "ingested_at": {"type": "date"},
        "labeled_at": {"type": "date"},
        "topic": {"type": "keyword"},
        "topic_score": {"type": "float"},
        "sentiment": {"type": "keyword"},
        "sentiment_score": {"type": "float"},
        "sentiment_probs": {
            "properties": {
                "negative": {"type": "float"},
                "neutral": {"type": "float"},
                "positive": {"type": "float"},
            }
        },
        "content_hash": {"type": "keyword"},
        "model_version": {"type": "keyword"},
        "kafka": {
            "properties": {
                "topic": {"type": "keyword"},
                "partition": {"type": "integer"},
                "offset": {"type": "long"},
            }
        },
    },
}


def events_alias(prefix: str) -> str:
    return f"{prefix}-events"


def events_index(prefix: str, published_at: datetime) -> str:
    """`<prefix>-events-YYYY.MM.DD` of the message's publication day (UTC)."""
    return _daily_index(prefix, published_at.date())


@lru_cache(maxsize=256)
def _daily_index(prefix: str, day: date) -> str:
    """Memoised: formatting a date costs about 2 us, once per document, and a stream spans few days."""
    return f"{prefix}-events-{day:%Y.%m.%d}"


def pseudonym(author: str, key: bytes) -> str:
    """Keyed, stable pseudonym: the same author always maps to the same value, which reveals nothing."""
    return "anon-" + hmac.new(key, author.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


def build_document(
    message: Message,
    prediction: Prediction,
    *,
    ingested_at: datetime,
    labeled_at: datetime,
    model_version: str,
    author_key: bytes | None = None,
    store_author: bool = True,
) -> dict[str, Any]:
    """The `_source` of one event document (see docs/CONTRACTS.md); `author` is None without
    `store_author` (`pipeline.store_authors`), pseudonymised with `author_key`."""
    author = message.author if store_author else None
    if author is not None and author_key is not None:
        author = pseudonym(author, author_key)
    return {
        "id": message.id,
        "source": message.source,
        "text": message.text,
        "title": message.title,
        "url": message.url,
        "lang": message.lang,
        "author": author,
        "tickers": list(message.tickers),
        "published_at": rfc3339(message.published_at),
        "ingested_at": rfc3339(ingested_at),
        "labeled_at": rfc3339(labeled_at),
        "topic": prediction.topic,
        "topic_score": float(prediction.topic_score),
        "sentiment": prediction.sentiment,
        "sentiment_score": float(prediction.sentiment_score),
        "sentiment_probs": {k: float(v) for k, v in prediction.sentiment_probs.items()},
        "content_hash": message.content_hash,
        "model_version": model_version,
        "kafka": {
            "topic": message.meta.topic,
            "partition": message.meta.partition,
            "offset": message.meta.offset,
        },
    }
