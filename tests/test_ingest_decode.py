"""Decoding and validation of raw records: every bad input becomes a dead letter with a clear reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.events import KEY_TYPES
from finsent.labeled_events import labeled_events
from inference.types import Prediction
from ingest.decode import DecodeLimits, decode
from ingest.message import ERROR_CODES, DeadLetter, KafkaMeta, Message

META = KafkaMeta("raw", 2, 41, timestamp_ms=1_700_000_000_000, key=b"k")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = DecodeLimits(max_message_bytes=2_000, max_text_chars=500)


def dec(value: bytes | None, meta: KafkaMeta = META) -> Message | DeadLetter:
    return decode(value, meta, LIMITS, NOW)


def js(obj: object) -> bytes:
    return json.dumps(obj).encode()


def dead(value: bytes | None) -> DeadLetter:
    out = dec(value)
    assert isinstance(out, DeadLetter), out
    return out


def test_valid_message_is_enriched() -> None:
    out = dec(
        js(
            {
                "id": "m1",
                "source": "news",
                "text": "  $acme falls; $BRK.B up, not $100  ",
                "tickers": ["aapl", "$ACME"],
                "published_at": "2026-11-30T09:30:00+01:00",
                "url": "https://x",
                "lang": "en",
                "author": "ann",
            }
        )
    )
    assert isinstance(out, Message)
    assert out.id == "m1"
    assert out.text == "$acme falls; $BRK.B up, not $100"
    assert out.tickers == ("AAPL", "ACME", "BRK.B")
    assert out.published_at == datetime(2026, 11, 30, 8, 30, tzinfo=UTC)
    assert (out.url, out.lang, out.author) == ("https://x", "en", "ann")
    assert len(out.content_hash) == 32
    assert out.meta == META


def test_title_and_body_are_joined_and_id_is_derived_stably() -> None:
    raw = js({"source": "rss", "title": "Fed holds", "body": "Rates unchanged."})
    a, b = (
        dec(raw, KafkaMeta("raw", 0, 7, 1_700_000_000_000, None)),
        dec(raw, KafkaMeta("raw", 3, 9, 1_700_000_000_000, None)),
    )
    assert isinstance(a, Message) and isinstance(b, Message)
    assert a.text == "Fed holds\nRates unchanged."
    assert a.title == "Fed holds"
    assert a.id == b.id and a.id.startswith("h-")  # a replay, from wherever it is read
    # without published_at the record's Kafka timestamp tells posts apart: the same words posted at 09:00
    # and 17:00 were one document (the later overwrote the earlier) and one alert event
    later = dec(raw, KafkaMeta("raw", 0, 8, 1_700_028_800_000, None))
    assert isinstance(later, Message) and later.id != a.id
    with_time = js({"source": "rss", "text": "Fed holds", "published_at": "2023-11-14T22:13:20Z"})
    first, again = (
        dec(with_time, KafkaMeta("raw", 0, 1, 1, None)),
        dec(with_time, KafkaMeta("raw", 0, 2, 2, None)),
    )
    assert isinstance(first, Message) and isinstance(again, Message) and first.id == again.id


def test_published_at_falls_back_to_kafka_timestamp_then_now() -> None:
    out = dec(js({"source": "s", "text": "t"}))
    assert isinstance(out, Message)
    assert out.published_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    out = dec(js({"source": "s", "text": "t"}), KafkaMeta("raw", 0, 1, None, None))
    assert isinstance(out, Message) and out.published_at == NOW
    # a producer writing microseconds, or a clock in year 3000: dated by the decoder instead, the message
    # would land in another daily index at each replay, so it is refused with the reason
    for bad_ms in (1_700_000_000_000_000, 32_503_680_000_000):
        out = dec(js({"source": "s", "text": "t"}), KafkaMeta("raw", 0, 1, bad_ms, None))
        assert isinstance(out, DeadLetter) and out.error == "schema" and "milliseconds expected" in out.reason
    # one writing seconds: read as 1970-01-20, every message was late for the alerts (and, without
    # Elasticsearch, stored under that day)
    out = dec(js({"source": "s", "text": "t"}), KafkaMeta("raw", 0, 1, 1_700_000_000, None))
    assert isinstance(out, DeadLetter) and out.error == "schema"
    assert out.reason.endswith(
        "reads as 1970-01-20T16:13:20Z, before Kafka had timestamps: seconds instead of milliseconds?"
    )


def test_publication_times_outside_the_indexed_window_are_refused() -> None:
    limits = DecodeLimits(max_age_s=90 * 86_400, max_ahead_s=86_400)
    cases = {
        "2026-09-01T12:00:00Z": None,  # 90 days back: kept
        "2026-08-30T12:00:00Z": "older than the 90-day limit of the event indices",
        "2026-12-01T11:00:00Z": None,
        "2026-12-01T13:00:00Z": "more than 24 h ahead",
        "1970-01-01T00:30:00+01:00": "out of range",  # 1969 in UTC, the day the index is named by
    }
    for published, words in cases.items():
        out = decode(js({"source": "s", "text": "t", "published_at": published}), META, limits, NOW)
        if words is None:
            assert isinstance(out, Message), (published, out)
        else:
            assert isinstance(out, DeadLetter) and out.error == "schema" and words in out.reason, published
    old_record = KafkaMeta("raw", 0, 1, timestamp_ms=1_000_000_000_000)  # 2001, no published_at
    out = decode(js({"source": "s", "text": "t"}), old_record, limits, NOW)
    assert isinstance(out, DeadLetter) and "Kafka timestamp 2001-09-09 is older" in out.reason


def test_blank_text_falls_back_to_title_and_body() -> None:
    for blank in (" ", "\u200b", "\u0000"):  # the tokenizer drops zero-width and control characters
        out = dec(js({"source": "rss", "text": blank, "title": "Fed holds", "body": "Rates unchanged."}))
        assert isinstance(out, Message) and out.text == "Fed holds\nRates unchanged."
    out = dec(js({"source": "rss", "text": "🚀🚀 to the moon"}))
    assert isinstance(out, Message)


def test_reasons() -> None:
    cases: list[tuple[bytes | None, str, str]] = [
        (None, "not_object", "tombstone"),
        (b"\xff\xfe{}", "invalid_utf8", "UTF-8"),
        (b"{not json", "invalid_json", "JSON"),
        (b"[1, 2]", "not_object", "array"),
        (js({"text": "x"}), "schema", "'source' is required"),
        (js({"source": 3, "text": "x"}), "schema", "'source' must be a string"),
        (js({"source": "s"}), "schema", "neither 'text'"),
        (js({"source": "s", "text": "   "}), "empty_text", "empty"),
        (js({"source": "s", "text": "\u200b\u2060\ufeff\u00ad"}), "empty_text", "invisible"),
        (js({"source": "s", "text": "\u0000\u0001"}), "empty_text", "invisible"),
        (js({"source": "s", "text": "?! …"}), "empty_text", "punctuation"),
        (js({"source": "s", "text": "x" * 501}), "oversized", "501 characters"),
        (b'{"source": "s", "text": "' + b"x" * 2_000 + b'"}', "oversized", "bytes"),
        (js({"source": "s", "text": "x", "published_at": "yesterday"}), "schema", "RFC 3339"),
        (js({"source": "s", "text": "x", "published_at": "2026-11-30T10:00:00"}), "schema", "timezone"),
        (js({"source": "s", "text": "x", "published_at": 17}), "schema", "must be a string"),
        (js({"source": "s", "text": "x", "tickers": "AAPL"}), "schema", "list"),
        (js({"source": "s", "text": "x", "tickers": [1]}), "schema", "tickers[0]"),
        (js({"source": "s", "text": "x", "tickers": ["not a ticker"]}), "schema", "not a ticker"),
        (js({"source": "s", "text": "x", "id": ""}), "schema", "'id' is empty"),
        (js({"source": "s", "text": "x", "id": "é" * 257}), "schema", "longer than 512 bytes"),
        (js({"source": "s", "text": "x", "url": ["a"]}), "schema", "'url'"),
        (js({"source": "s" * 257, "text": "x"}), "schema", "'source' is longer than 256 characters"),
        (js({"source": "wire\u0000", "text": "x"}), "schema", "'source' holds a control character"),
        (
            js({"source": "s", "text": "x", "url": "https://a/\nERROR forged"}),
            "schema",
            "'url' holds a control",
        ),
        (
            js({"source": "s", "text": "x", "url": "https://a/\u2028ERROR forged"}),
            "schema",
            "'url' holds a bidirectional formatting character or a line separator",
        ),
        (
            js({"source": "s", "text": "x", "url": "https://a/\u202egpj.exe"}),
            "schema",
            "'url' holds a bidirectional",
        ),
        (js({"source": "s", "text": "\ufffd\ufffd"}), "empty_text", "no letter"),  # bytes lost upstream
        (js({"source": "s", "body": "..."}), "empty_text", "only punctuation"),
        (b'{"source": "s", "text": "bad \\ud800 surrogate"}', "invalid_utf8", "surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "oversized", "bytes"),
    ]
    for value, code, words in cases:
        dl = dead(value)
        assert dl.error == code, (value[:40] if value else value, dl)
        assert words in dl.reason, (dl.reason, words)
        assert dl.raw == value and dl.meta == META


def test_every_labeled_event_of_the_largest_valid_message_fits_a_kafka_request() -> None:
    """A labeled event repeats the source and URL, and the labeler retries a batch it cannot send: one
    valid message whose event outgrew a produce request (1 MiB) would stall its partition for good."""
    limits = DecodeLimits()
    big = {
        "id": "\U0001f4c8" * 128,  # 512 bytes
        "source": "\U0001f4c8" * 256,
        "text": "\U0001f4c8 up " * 20_000,
        "url": "https://x/" + "\U0001f4c8" * 8182,
        "tickers": [f"T{i:09d}.KLMN" for i in range(50)],
    }
    out = decode(js(big), META, limits, NOW)
    assert isinstance(out, Message)
    prediction = Prediction("Markets", 0.9, "negative", 0.8, {"Markets": 0.9}, {"negative": 0.8})
    events = labeled_events(out, prediction, key_types=KEY_TYPES, labeled_at=NOW, model_version="v" * 64)
    assert len(events) == 53 and max(len(k) + len(v) for k, v in events) < 128 * 1024
    too_long = decode(js({**big, "url": big["url"] + "x"}), META, limits, NOW)
    assert isinstance(too_long, DeadLetter) and "'url' is longer than 8192 characters" in too_long.reason


def test_deep_nesting_within_size_limit_is_invalid_json() -> None:
    limits = DecodeLimits(max_message_bytes=10_000_000)
    out = decode(b"[" * 1_000_000 + b"]" * 1_000_000, META, limits, NOW)
    assert isinstance(out, DeadLetter) and out.error in ("invalid_json", "not_object")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    out = dec(value)
    if isinstance(out, DeadLetter):
        assert out.error in ERROR_CODES and out.reason and out.raw == value
    else:
        assert out.text and out.source


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)  # NaN and infinities are no JSON: invalid_json
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "source": json_values | st.text(max_size=10),
            "text": json_values | st.text(),
            "title": json_values,
            "body": json_values,
            "published_at": json_values | st.datetimes().map(str),
            "tickers": json_values | st.lists(st.text(max_size=6), max_size=4),
            "url": json_values,
        },
    )
)
def test_arbitrary_json_objects_never_raise(obj: dict[str, object]) -> None:
    out = dec(json.dumps(obj).encode())
    assert isinstance(out, Message | DeadLetter)
    if isinstance(out, DeadLetter):
        assert out.error in ERROR_CODES and out.error != "invalid_json"


def test_an_iri_with_a_joiner_is_kept() -> None:
    """A Persian word's zero-width non-joiner and an emoji sequence's joiner are ordinary in IRIs; only the
    bidirectional formatting characters (U+202E shows a link reversed) and line separators are refused."""
    for url in (
        "https://fa.wikipedia.org/wiki/\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "https://x/\U0001f468\u200d\U0001f4bb",
    ):
        out = decode(js({"source": "s", "text": "x", "url": url}), META, DecodeLimits(), NOW)
        assert isinstance(out, Message) and out.url == url


def test_a_json_value_that_is_no_object_is_named_in_plain_words() -> None:
    reasons = [decode(value, META, DecodeLimits(), NOW) for value in (b"[1]", b"7", b"null")]
    assert [r.reason for r in reasons if isinstance(r, DeadLetter)] == [
        "JSON value is an array, expected an object",
        "JSON value is a number, expected an object",
        "JSON value is null, expected an object",
    ]
