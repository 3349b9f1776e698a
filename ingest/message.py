"""Plain values that leave the ingest stage: a validated message, or a dead letter with its reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

ErrorCode = Literal[
    "invalid_utf8",
    "invalid_json",
    "not_object",
    "schema",
    "empty_text",
    "oversized",
    "unreadable",
    "rejected_by_sink",
    "inference_failed",
]
"""The bounded `finsent.error` codes (also the `reason` label of `finsent_messages_dead_lettered_total`)."""

ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)


@dataclass(frozen=True, slots=True)
class KafkaMeta:
    """Where a record came from; kept so dead letters and ES documents can point back at it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A valid, enriched input message, ready to be labeled."""

    id: str
    source: str
    text: str
    title: str | None
    url: str | None
    lang: str | None
    author: str | None
    tickers: tuple[str, ...]
    published_at: datetime
    content_hash: str
    meta: KafkaMeta
    raw: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be labeled: the original bytes plus a bounded code and a human reason."""

    error: ErrorCode
    reason: str
    raw: bytes | None
    meta: KafkaMeta
