"""The labeled event as the detector sees it, parsed and validated from the labeled topic's JSON.

Parsing is strict about what the detector needs (ids, key, event time, sentiment) and lenient about the
rest, so a bad record is reported with a reason instead of crashing the worker."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ingest.decode import CONTROL, Invalid, check_one_line  # CONTROL: Unicode's control characters (Cc)

KEY_TYPES = ("ticker", "topic", "source", "all")


def alert_keys_of(
    tickers: Iterable[str], topic: str | None, source: str | None, key_types: Iterable[str]
) -> list[tuple[str, str]]:
    """(key_type, key) pairs of one message, in a stable order, without repeats: its tickers, topic and
    source, and `all` (value `*`), for the key types asked. The pipeline's fan-out into labeled events
    and the backtest's of stored documents (where a missing topic or source, None, gives no key)."""
    pairs: list[tuple[str, str]] = []
    for key_type in key_types:
        if key_type == "ticker":
            pairs.extend(("ticker", t) for t in tickers)
        elif key_type == "topic":
            pairs.extend([("topic", topic)] if topic is not None else [])
        elif key_type == "source":
            pairs.extend([("source", source)] if source is not None else [])
        elif key_type == "all":
            pairs.append(("all", "*"))
        else:
            raise ValueError(f"unknown alert key type {key_type!r}; known: {', '.join(KEY_TYPES)}")
    return list(dict.fromkeys(pairs))


# Event times the detector accepts: 1970-01-01 up to the end of year 9999. Beyond that a time cannot be
# written back as RFC 3339, and epoch floats lose the precision that window arithmetic relies on.
MIN_TS = 0.0
MAX_TS = 253_402_300_799.0
# A JSON string may hold a lone surrogate ("\ud83d", half an emoji a labeler cut): Python decodes it, but
# no UTF-8 encoder takes it, so it would fail every notification, hash and document that quotes it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_KEY_CHARS = 256
"""The longest key: a ticker, a topic or a source name (at most 100 characters in sources, 256 in the
pipeline's input); a longer one is no key the pipeline writes."""
# The shapes of time an event may carry: RFC 3339 (a space for the T; the zone may be left out, read as
# UTC). fromisoformat also takes a bare date, `20260615`, or a week date ("2026-W24" as June 8th).
_RFC3339_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
# A model version longer than this is cut: the detector keeps a few in its state, and names one in alerts.
MODEL_VERSION_MAX_CHARS = 200


class InvalidEvent(ValueError):
    """A labeled event the detector cannot use; `code` is a bounded reason for metrics."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class LabeledEvent:
    """One (message, alert key) observation: when, for which key, and how negative."""

    event_id: str
    key_type: str
    key: str
    ts: float
    negative: bool
    negative_prob: float
    text: str = ""
    url: str = ""
    message_id: str = ""
    model_version: str = ""  # the labeler's serving version; "" when unknown (older labelers, synthetic)

    @property
    def key_id(self) -> str:
        return f"{self.key_type}:{self.key}"


def parse_time(value: Any) -> float:
    """RFC 3339 string (or epoch seconds) -> epoch seconds; naive times are taken as UTC, a date alone or
    another ISO 8601 shape is refused.

    JSON numbers such as NaN, -Infinity, 1e400 or 1e20 decode to floats that would crash or stall the
    window arithmetic, so only finite times within MIN_TS..MAX_TS are accepted."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        return checked_time(float(value))
    if not isinstance(value, str) or not value.strip():
        raise ValueError("missing time")
    text = value.strip()
    if not _RFC3339_SHAPE.match(text):
        raise ValueError(f"{text[:40]!r} is not an RFC 3339 time (YYYY-MM-DDTHH:MM:SSZ) nor epoch seconds")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return checked_time(dt.timestamp())


def checked_time(ts: float) -> float:
    """`ts` itself, or ValueError when it is not finite or outside MIN_TS..MAX_TS."""
    if not math.isfinite(ts) or not MIN_TS <= ts <= MAX_TS:
        raise ValueError(f"time {ts!r} is not between 1970 and 9999")
    return ts


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, the mark of a character that could not be read."""
    return LONE_SURROGATE.sub("\ufffd", text)


def labeled_time(obj: Any) -> float | None:
    """The event's `labeled_at` (the pipeline writes it), or None when it is absent or no usable time:
    it only stands in for the wall clock, so a bad one does not make the event invalid."""
    if not isinstance(obj, Mapping):
        return None
    try:
        return parse_time(obj.get("labeled_at"))
    except (ValueError, TypeError, OverflowError):
        return None


def model_version_of(obj: Mapping[str, Any]) -> str:
    """The event's `model_version`, or "" when it is absent or not a string (older labelers, synthetic
    events): it only tells the detector that the model changed, so a bad one does not make the event
    invalid. Cut to MODEL_VERSION_MAX_CHARS; a control character or lone surrogate becomes U+FFFD, since
    the version is named in log lines and alert summaries."""
    value = obj.get("model_version")
    if not isinstance(value, str):
        return ""
    return CONTROL.sub("\ufffd", valid_text(value.strip()[:MODEL_VERSION_MAX_CHARS]))


def parse_event(obj: Any, negative_label: str) -> LabeledEvent:
    """Validate one decoded labeled event (see docs/CONTRACTS.md); raise InvalidEvent with a reason.

    What identifies the event (key, ids) must be valid Unicode, or the event is invalid (`schema`); in
    its example text a lone surrogate becomes U+FFFD, and a URL holding one is dropped. An event whose
    `sentiment_probs` lack `negative_label` (and whose `sentiment` is not it) is `label`: its labels are
    not the ones the settings name. (With `sentiment` alone, another label cannot be told from a
    non-negative one.)"""
    if not isinstance(obj, Mapping):
        raise InvalidEvent("not_object", "labeled event is not a JSON object")
    key_type = obj.get("key_type")
    key = obj.get("key")
    if key_type not in KEY_TYPES:
        raise InvalidEvent("schema", f"key_type {key_type!r} is not one of {KEY_TYPES}")
    if not isinstance(key, str) or not key:
        raise InvalidEvent("schema", "key is missing or not a string")
    message_id = obj.get("id")
    message_id = message_id if isinstance(message_id, str) else ""
    event_id = obj.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        if not message_id:
            raise InvalidEvent("schema", "neither event_id nor id is present")
        event_id = f"{message_id}|{key_type}:{key}"
    for name, value in (("key", key), ("event_id", event_id), ("id", message_id)):
        if LONE_SURROGATE.search(value):
            raise InvalidEvent("schema", f"{name} holds a lone surrogate (not valid Unicode)")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidEvent("schema", f"key is over {MAX_KEY_CHARS} characters")
    try:  # the key goes into log lines, e-mails, chat messages and an Alertmanager label: a newline forges
        # lines, a zero-width space makes "AC\u200bME" an alert of its own that reads as ACME's
        check_one_line("key", key)
    except Invalid as exc:
        raise InvalidEvent("schema", str(exc)) from None
    try:
        # labeled_at only where published_at is absent: a published_at of 0 (1970) is a time, and "" or
        # false are invalid, not missing
        published = obj.get("published_at")
        ts = parse_time(obj.get("labeled_at") if published is None else published)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidEvent("schema", f"bad published_at: {exc}") from None
    sentiment = obj.get("sentiment")
    probs = obj.get("sentiment_probs")
    prob: float | None = None
    if isinstance(probs, Mapping):
        raw = probs.get(negative_label)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and 0.0 <= float(raw) <= 1.0:
            prob = float(raw)
    if not isinstance(sentiment, str) and prob is None:
        raise InvalidEvent("schema", "neither sentiment nor sentiment_probs is present")
    if isinstance(probs, Mapping) and probs and negative_label not in probs and sentiment != negative_label:
        # labels of another labeler (bearish/bullish), or a mismatched setting: counted as not negative,
        # every event would pass unnoticed and no spike could ever fire
        labels = sorted(str(k)[:40] for k in probs)[:5]
        raise InvalidEvent("label", f"sentiment labels {labels!r} lack the negative label {negative_label!r}")
    negative = sentiment == negative_label if isinstance(sentiment, str) else (prob or 0.0) >= 0.5
    if prob is None:
        prob = 1.0 if negative else 0.0
    text = obj.get("text")
    url = obj.get("url")
    return LabeledEvent(
        event_id=event_id,
        key_type=str(key_type),
        key=key,
        ts=ts,
        negative=negative,
        negative_prob=prob,
        text=valid_text(text[:1000]) if isinstance(text, str) else "",
        url=url if isinstance(url, str) and not LONE_SURROGATE.search(url) else "",
        message_id=message_id,
        model_version=model_version_of(obj),
    )
