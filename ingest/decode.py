"""Turn one Kafka record into a validated Message or a DeadLetter with a clear reason. Never raises."""

from __future__ import annotations

import html
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from ingest.enrich import cashtags, content_hash, derived_id, merge_tickers, normalise_ticker
from ingest.message import DeadLetter, ErrorCode, KafkaMeta, Message

OPTIONAL_STRINGS = ("url", "lang", "author")
# published_at (or, without it, the Kafka timestamp) outside these years is a bad value (dead-lettered).
MIN_YEAR, MAX_YEAR = 1970, 2200
MIN_KAFKA_TIMESTAMP_MS = 946_684_800_000
"""2000-01-01: a record's Kafka timestamp before it is a producer writing seconds (1.7e9 reads as
1970-01-20), not a time; records have carried timestamps since Kafka 0.10 (2016)."""
# Elasticsearch refuses a longer _id, and for the whole bulk request at that.
MAX_ID_BYTES = 512
# A source names a feed: it is a metric label value, an alert key and a keyword (ignore_above 256) in
# Elasticsearch, so a longer one is a producer's bug, and 200 huge ones made /metrics too big to scrape.
MAX_SOURCE_CHARS = 256
# A URL is repeated in every labeled event of a message: unbounded, one record would outgrow a Kafka
# request and its batch would be retried for ever. Longer than any real link (browsers stop near 8 KiB).
MAX_URL_CHARS = 8192
# Unicode's control characters (category Cc), matched in C: a per-character loop cost tens of
# microseconds per message on the consume path.
CONTROL_CHARS = "\x00-\x1f\x7f-\x9f"  # as a regex character range
CONTROL = re.compile(f"[{CONTROL_CHARS}]")
# The bidi embeddings, overrides and isolates (as a regex character range): they show text in another
# order than it reads (U+202E shows "news" as "swen").
BIDI_CONTROL_CHARS = "\u202a-\u202e\u2066-\u2069"
# What no IRI may hold (RFC 3987 section 4.1: those and the marks LRM, RLM, ALM), and the line and
# paragraph separators. Other format characters are ordinary in IRIs: a Persian word's zero-width
# non-joiner, an emoji sequence's joiner.
_BIDI_OR_LINE = re.compile(f"[\u061c\u200e\u200f{BIDI_CONTROL_CHARS}\u2028\u2029]")
# RFC 3339 section 5.6, checked before parsing: datetime.fromisoformat also takes ISO 8601 forms that are no
# RFC 3339 (week dates, basic format, hours alone, offsets with seconds) and refuses a lowercase t or z. An
# offset without its colon (+0100), which producers often write and finsent always read, is taken too.
# A space for the T is taken too (section 5.6 lets applications use one), and surrounding whitespace.
# No groups: they cost more than the match.
_RFC3339 = re.compile(
    r"\d\d\d\d-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?"  # fromisoformat checks the ranges,
    r"(?:[Zz]|[+-][0-2]\d:?[0-5]\d)?",  # under 24 h; ±hhmm too (ISO 8601, common); none: refused, with reason
    re.ASCII,
)
# The characters of ASCII that are letters, digits or symbols (categories L, N, S): has_content's fast
# path, equal to its Unicode reading (tests.test_ingest_review_fixes checks it).
_ASCII_CONTENT = re.compile(r"[0-9A-Za-z$+<=>^`|~]")
# Printable ASCII holding one of those characters and no `&` (which may start an entity): a source that
# needs no further check.
_PLAIN_ASCII_NAME = re.compile(r"[ -%'-~]*[0-9A-Za-z$+<=>^`|~][ -%'-~]*")
# The fields a message is read from: one of them twice in an object is refused (see _object).
FIELDS = frozenset(
    ("id", "source", "text", "title", "body", "published_at", "tickers", "url", "lang", "author")
)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds applied before and after parsing."""

    max_message_bytes: int = 1_000_000
    max_text_chars: int = 100_000
    max_tickers: int = 50
    # The accepted range of publication times around the time of decoding (None: 1970-2200 only). The
    # pipeline sets max_age_s from the Elasticsearch settings (finsent.runner.decode_limits): each day is
    # an index of its own, so older messages would make indices deleted at once, or without a bound.
    max_age_s: float | None = None
    max_ahead_s: float | None = None


class Invalid(Exception):
    """Internal: a validation failure carrying its bounded code."""

    def __init__(self, error: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.error: ErrorCode = error
        self.reason = reason


def decode(value: bytes | None, meta: KafkaMeta, limits: DecodeLimits, now: datetime) -> Message | DeadLetter:
    """Validate and enrich one record; every failure becomes a DeadLetter (bad input never crashes)."""
    try:
        return _decode(value, meta, limits, now)
    except Invalid as e:
        return DeadLetter(error=e.error, reason=e.reason, raw=value, meta=meta)
    except Exception as e:  # a bug here must not stop the worker; the record is kept with the reason
        return DeadLetter(
            error="schema", reason=f"unexpected decoder error: {type(e).__name__}", raw=value, meta=meta
        )


class _Duplicated(dict[str, Any]):
    """A JSON object that names one of FIELDS twice (`field`): json keeps the last value silently, so a
    record could be labeled from another text, or filed under another source, than a reader of it sees."""

    field: str = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object, a _Duplicated when it repeats one of FIELDS. Only the
    outermost object is checked (`_decode`): a nested one may repeat what it likes."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen and name in FIELDS:
            marked = _Duplicated(obj)
            marked.field = name
            return marked
        seen.add(name)
    return obj


def _not_a_number(literal: str) -> Any:
    """json's parse_constant: NaN, Infinity and -Infinity are no JSON (RFC 8259), only Python's reading."""
    raise ValueError(f"{literal} is not a JSON number")


def _finite(literal: str) -> float:
    """json's parse_float: a number past the double range (1e400) is refused, not read as infinity."""
    number = float(literal)
    if math.isinf(number):
        raise ValueError(f"number {literal[:32]} is out of range")
    return number


# One decoder for every record: json.loads with hooks would build a new one (and its scanner) per call.
_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_not_a_number, parse_float=_finite)


def _decode(value: bytes | None, meta: KafkaMeta, limits: DecodeLimits, now: datetime) -> Message:
    if value is None:
        raise Invalid("not_object", "record has no value (tombstone)")
    if len(value) > limits.max_message_bytes:
        raise Invalid("oversized", f"record is {len(value)} bytes, limit is {limits.max_message_bytes}")
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("invalid_utf8", f"not valid UTF-8 at byte {e.start}: {e.reason}") from None
    try:
        obj = _JSON.decode(decoded)
    except RecursionError:
        raise Invalid("invalid_json", "JSON nested too deeply") from None
    except ValueError as e:
        if decoded.startswith("\ufeff"):  # as json.loads says it
            raise Invalid("invalid_json", "not valid JSON: it starts with a UTF-8 byte order mark") from None
        raise Invalid("invalid_json", f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        kind = _json_type(obj)
        what = kind if kind == "null" else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        raise Invalid("not_object", f"JSON value is {what}, expected an object")
    if isinstance(obj, _Duplicated):
        raise Invalid("schema", f"field '{obj.field}' appears more than once")
    return _validate(obj, value, meta, limits, now)


def _validate(
    obj: dict[str, Any], raw: bytes, meta: KafkaMeta, limits: DecodeLimits, now: datetime
) -> Message:
    source = _string(obj, "source", required=True)
    assert source is not None
    if len(source.strip()) > MAX_SOURCE_CHARS:
        raise Invalid("schema", f"field 'source' is longer than {MAX_SOURCE_CHARS} characters")
    if not (source.isascii() and _PLAIN_ASCII_NAME.fullmatch(source)):  # the usual name, in one match
        # also keeps the derived id's NUL separators unambiguous (ingest.enrich.derived_id)
        check_one_line("source", source)
        if not has_content(source):  # a feed's name is read: one of only blanks or dashes names nothing
            raise Invalid("schema", "field 'source' is empty (no letter, digit or symbol)")
    title = _string(obj, "title")
    text = (_string(obj, "text") or "").strip()
    # Bounds first: has_content reads HTML entities and every character, 0.3-0.5 s for 1 MB on the poll
    # thread, so it only ever reads a field within the limit.
    if len(text) > limits.max_text_chars:
        raise Invalid("oversized", f"text has {len(text)} characters, limit is {limits.max_text_chars}")
    if not has_content(text):  # absent or blank: the title and body stand in for it
        body = _string(obj, "body")
        if obj.get("text") is None and title is None and body is None:
            raise Invalid("schema", "message has neither 'text' nor 'title'/'body'")
        parts = [
            (name, part.strip()) for name, part in (("title", title), ("body", body)) if part and part.strip()
        ]
        for name, part in parts:
            if len(part) > limits.max_text_chars:
                raise Invalid(
                    "oversized", f"{name} has {len(part)} characters, limit is {limits.max_text_chars}"
                )
        kept = [part for _, part in parts if has_content(part)]  # a title of only dashes is left out
        joined = sum(len(p) + 1 for p in kept) - 1
        if joined > limits.max_text_chars:
            raise Invalid(
                "oversized", f"title and body have {joined} characters, limit is {limits.max_text_chars}"
            )
        if not kept:  # text, title and body all read: none has content
            if not (text or parts):
                raise Invalid("empty_text", "text is empty after stripping whitespace")
            raise Invalid(
                "empty_text", "text has no letter, digit or symbol (only punctuation or invisible characters)"
            )
        text = "\n".join(kept)
    elif obj.get("body") is not None:
        _string(obj, "body")  # unused then, but a body of the wrong type or invalid text is still refused
    explicit_id = _string(obj, "id")
    if explicit_id is not None:
        explicit_id = explicit_id.strip()
        if not explicit_id:
            raise Invalid("schema", "field 'id' is empty")
        if len(explicit_id.encode("utf-8")) > MAX_ID_BYTES:
            raise Invalid("schema", f"field 'id' is longer than {MAX_ID_BYTES} bytes (it is the document id)")
        check_one_line("id", explicit_id)
    published_raw = _string(obj, "published_at")
    published_at = _published_at(published_raw, meta, now)
    _check_window(published_at, published_raw is None, limits, now)
    extra = {name: _string(obj, name) for name in OPTIONAL_STRINGS}
    if extra["url"] is not None:
        _check_url(extra["url"])
    # stored with every document: a 900 KB title or author came through
    if title is not None and len(title) > limits.max_text_chars:
        _too_long("title", title, limits)
    if extra["lang"] is not None:
        check_one_line("lang", extra["lang"])
        if len(extra["lang"]) > limits.max_text_chars:
            _too_long("lang", extra["lang"], limits)
    if extra["author"] is not None and len(extra["author"]) > limits.max_text_chars:
        _too_long("author", extra["author"], limits)
    tickers = merge_tickers(_field_tickers(obj, limits.max_tickers), cashtags(text))
    return Message(
        id=explicit_id if explicit_id else derived_id(source, text, _id_time(published_raw, meta)),
        source=source.strip(),
        text=text,
        title=title,
        url=extra["url"],
        lang=extra["lang"],
        author=extra["author"],
        tickers=tickers[: limits.max_tickers],
        published_at=published_at,
        content_hash=content_hash(text),
        meta=meta,
        raw=raw,
    )


def url_problem(url: str) -> str | None:
    """Why `url` cannot be kept, or None. A control character (a newline) would forge lines in logs and
    notifications that quote the link; the length bound keeps every labeled event within a Kafka request.
    Shared with `ingest.sources`, which refuses such items before publishing them."""
    if len(url) > MAX_URL_CHARS:
        return f"is longer than {MAX_URL_CHARS} characters"
    if CONTROL.search(url):
        return "holds a control character"
    if not url.isascii() and _BIDI_OR_LINE.search(url):  # U+202E shows a link reversed
        return "holds a bidirectional formatting character or a line separator"
    return None


def _check_url(url: str) -> None:
    problem = url_problem(url)
    if problem is not None:
        raise Invalid("schema", f"field 'url' {problem}")


def _too_long(name: str, value: str, limits: DecodeLimits) -> NoReturn:
    raise Invalid("schema", f"field '{name}' has {len(value)} characters, limit is {limits.max_text_chars}")


def check_one_line(name: str, value: str) -> None:
    """Refuse what changes how a field shown on one line reads (a source is a metric label, an alert key
    and the title of notifications; an id and a language are logged): control characters (a newline
    forges a log line), format characters (Cf: a zero-width space looks empty, U+202E shows "news" as
    "swen") and the line and paragraph separators. ASCII text holds none of the last two kinds."""
    if CONTROL.search(value):
        raise Invalid("schema", f"field '{name}' holds a control character")
    if not value.isascii() and any(unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in value):
        raise Invalid("schema", f"field '{name}' holds an invisible formatting character or a line separator")


def has_content(text: str) -> bool:
    """Whether the text holds a letter, digit or symbol. The tokenizer drops control and invisible
    characters (zero-width spaces, soft hyphens, NUL) and U+FFFD, the mark an upstream decoder leaves
    for bytes it could not read: a text of only those reaches the model empty and would still get a
    confident label. HTML entities count as what they stand for (`&nbsp;`, `&#8203;` are blank), as the
    model reads them after its clean-up."""
    if text.isascii() and "&" not in text:
        return _ASCII_CONTENT.search(text) is not None
    text = read_entities(text)
    return any(unicodedata.category(c)[0] in "LNS" and c != "\ufffd" for c in text)


_LONG_DECIMAL_REFERENCE = re.compile(r"&#([0-9]{8,})(;?)")


def _shorten_reference(m: re.Match[str]) -> str:
    """A decimal reference without its leading zeros; U+FFFD for one of 8 or more significant digits."""
    digits = m.group(1).lstrip("0")
    return "\ufffd" if len(digits) >= 8 else f"&#{digits or '0'}{m.group(2)}"


def read_entities(text: str) -> str:
    """`html.unescape`, safe on hostile input: a decimal reference of more than 4,300 digits, leading
    zeros included, made it raise (Python's limit on int() of long strings). Leading zeros are dropped;
    a reference of 8 or more significant digits is past U+10FFFF, so U+FFFD, as html.unescape gives for
    other out-of-range references. Text without `&` is returned as it is."""
    if "&" not in text:
        return text
    return html.unescape(_LONG_DECIMAL_REFERENCE.sub(_shorten_reference, text))


def _string(obj: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise Invalid("schema", f"field '{name}' is required")
        return None
    if not isinstance(value, str):
        raise Invalid("schema", f"field '{name}' must be a string, got {_json_type(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("invalid_utf8", f"field '{name}' holds an unpaired surrogate escape") from None
    return value


def _published_at(raw: str | None, meta: KafkaMeta, now: datetime) -> datetime:
    if raw is None:
        return _kafka_time(meta.timestamp_ms, now)
    parsed = parse_rfc3339(raw.strip())
    if parsed is None:
        shaped = _RFC3339.fullmatch(raw.strip()) is not None  # the shape, but no such day or time
        what = "is no valid date and time" if shaped else "is not an RFC 3339 timestamp"
        raise Invalid("schema", f"field 'published_at' {what}: {raw[:64]!r}")
    if parsed.tzinfo is None:
        raise Invalid("schema", f"field 'published_at' has no timezone offset: {raw[:64]!r}")
    try:
        utc = parsed.astimezone(UTC)  # the bound holds in UTC, the time the daily index is named by
    except OverflowError:
        utc = None
    if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise Invalid("schema", f"field 'published_at' is out of range: {raw[:64]!r}")
    return utc


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time (section 5.6), or None. Without an offset (`2026-11-30T10:00:00`), the naive
    time, which the caller refuses with that reason. A leap second (`23:59:60`) is read as the last
    microsecond of its minute: Python's datetime has no 60th second, and the order of events holds."""
    if _RFC3339.fullmatch(text) is None:
        return None
    if text[17:19] == "60":  # the seconds, at fixed places once the shape is checked
        text = f"{text[:17]}59.999999{text[19:].lstrip('.0123456789')}"
    try:
        return datetime.fromisoformat(text.upper())  # it takes every RFC 3339 form but a lowercase t, z
    except ValueError:  # no such day or time (02-30, 25:00)
        return None


def _id_time(published_raw: str | None, meta: KafkaMeta) -> str | None:
    """The time a derived id covers: `published_at` as sent, else the record's Kafka timestamp, which a
    replay keeps (one identical post at 09:00 and one at 17:00 were a single document and a single alert
    event); None for a record with neither, which the decoder dates at each read."""
    if published_raw is not None:
        return published_raw
    if meta.timestamp_ms is None or meta.timestamp_ms < 0:
        return None
    return f"kafka-ms:{meta.timestamp_ms}"


def _kafka_time(timestamp_ms: int | None, now: datetime) -> datetime:
    """The record's Kafka timestamp; `now` when the record has none (an old message format). A timestamp
    that is no plausible time (a producer writing microseconds, a clock in year 3000) is refused: dated
    by the decoder instead, the message would land in another daily index at each replay."""
    if timestamp_ms is None or timestamp_ms < 0:
        return now.astimezone(UTC)
    try:
        when = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        when = None
    if when is None or not MIN_YEAR <= when.year <= MAX_YEAR:
        raise Invalid(
            "schema",
            f"no 'published_at', and the record's Kafka timestamp {timestamp_ms} is no time between "
            f"{MIN_YEAR} and {MAX_YEAR} (milliseconds expected)",
        )
    if timestamp_ms < MIN_KAFKA_TIMESTAMP_MS:
        raise Invalid(
            "schema",
            f"no 'published_at', and the record's Kafka timestamp {timestamp_ms} reads as "
            f"{when:%Y-%m-%dT%H:%M:%SZ}, before Kafka had timestamps: seconds instead of milliseconds?",
        )
    return when


def _check_window(published_at: datetime, from_kafka: bool, limits: DecodeLimits, now: datetime) -> None:
    what = "the record's Kafka timestamp" if from_kafka else "field 'published_at'"
    age = (now - published_at).total_seconds()
    if limits.max_age_s is not None and age > limits.max_age_s:
        days = limits.max_age_s / 86400
        limit = f"the {days:g}-day limit of the event indices"
        raise Invalid("schema", f"{what} {published_at:%Y-%m-%d} is older than {limit}")
    if limits.max_ahead_s is not None and -age > limits.max_ahead_s:
        hours = limits.max_ahead_s / 3600
        raise Invalid("schema", f"{what} {published_at:%Y-%m-%dT%H:%MZ} is more than {hours:g} h ahead")


def _field_tickers(obj: dict[str, Any], limit: int) -> list[str]:
    value = obj.get("tickers")
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid("schema", f"field 'tickers' must be a list of strings, got {_json_type(value)}")
    if len(value) > limit:
        raise Invalid("schema", f"field 'tickers' has {len(value)} entries, limit is {limit}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid("schema", f"tickers[{i}] must be a string, got {_json_type(item)}")
        symbol = normalise_ticker(item)
        if symbol is None:
            raise Invalid("schema", f"tickers[{i}] is not a ticker symbol: {item[:32]!r}")
        out.append(symbol)
    return out


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__
