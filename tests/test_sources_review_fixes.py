"""Fixes from the sources review: validators that cannot be sent back, conditional requests across a
redirect, ids and times the pipeline's decoder refuses, multi-byte and non-text encodings, GUIDs a feed
reuses, relative links. Fetches go to a real local HTTP server."""

from __future__ import annotations

import gzip
import logging
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ingest.decode import MAX_ID_BYTES
from ingest.sources.checkpoint import Checkpoint
from ingest.sources.config import FieldMap, parse_sources
from ingest.sources.feeds import FeedError, parse_feed
from ingest.sources.fetchers import Fetched, HttpSourceClient, fetch_feed
from ingest.sources.http import FetchError, HttpClient, conditional_headers, usable_validator
from ingest.sources.normalize import (
    ItemOptions,
    dedup_keys,
    from_feed_entry,
    from_record,
    message_id,
    publishable_time,
    reused_guids,
)
from ingest.sources.timeparse import parse_time
from tests.fixtures.sources.server import FixtureServer, Reply, Request

OPTS = ItemOptions(source="wire")
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def source(url: str, env: dict[str, str] | None = None, **extra: Any) -> Any:
    entry = {"name": "s", "kind": "rss", "url": url, "backoff_s": 0.01, "retries": 0, **extra}
    return parse_sources([entry], env=env or {}).sources[0]


def feed_once(src: Any, client: HttpClient, cp: Checkpoint | None = None) -> Fetched:
    return fetch_feed(src, HttpSourceClient(src, client), cp or Checkpoint(), lambda _: False)


def rss(items: str, declaration: str = "") -> str:
    return f'{declaration}<rss version="2.0"><channel><title>t</title>{items}</channel></rss>'


# --- 2. validators that are not ASCII -------------------------------------------------------------------


def test_only_printable_ascii_validators_are_kept_or_sent() -> None:
    assert usable_validator('"v1"') == '"v1"'
    assert usable_validator('"caf\u00e9"') is None and usable_validator("a\tb") is None
    assert usable_validator("") is None and usable_validator(None) is None
    assert conditional_headers('"caf\u00e9"', "Tue, 02 Jan 2024 16:00:00 GMT") == {
        "If-Modified-Since": "Tue, 02 Jan 2024 16:00:00 GMT"
    }


def test_a_non_ascii_etag_is_not_kept_and_an_old_one_is_not_sent(
    server: FixtureServer, client: HttpClient
) -> None:
    """A saved `"café"` made httpx raise UnicodeEncodeError building every later request: the source
    failed as `internal` for good, and its checkpoint never changed."""
    body = rss("<item><guid>g1</guid><title>Acme beats estimates</title></item>").encode()
    headers = {"Content-Type": "application/rss+xml", "ETag": '"caf\u00e9"'}
    url = server.route("/etag", lambda r, n: Reply(200, body, headers))
    first = feed_once(source(url), client)
    assert len(first.messages) == 1 and first.changes["etag"] is None
    again = feed_once(source(url), client, Checkpoint(etag='"caf\u00e9"'))  # a checkpoint from before
    assert len(again.messages) == 1
    assert "if-none-match" not in server.asked("/etag")[1].headers


def test_a_header_that_cannot_be_encoded_is_a_fetch_error(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/h", lambda r, n: Reply(200, b"", {}))
    src = source(url, env={"KEY": "cl\u00e9"}, headers={"X-Api-Key": "${KEY}"})
    with pytest.raises(FetchError) as e:
        feed_once(src, client)
    assert e.value.kind == "connect" and "UnicodeEncodeError" in e.value.detail
    assert not server.asked("/h")


# --- 6. conditional requests across a redirect -----------------------------------------------------------


def test_validators_reach_the_final_url_of_a_cross_origin_redirect(
    server: FixtureServer, client: HttpClient
) -> None:
    """The validators rode in the source's headers, which a redirect to another origin drops: the feed
    behind it was downloaded in full on every run."""
    other = server.url.replace("127.0.0.1", "localhost")
    start = server.route("/start", lambda r, n: Reply(301, b"", {"Location": f"{other}/feed.xml"}))
    body = rss("<item><guid>g1</guid><title>Acme beats estimates</title></item>").encode()

    def feed(req: Request, n: int) -> Reply:
        if req.headers.get("if-none-match") == '"v1"':
            return Reply(304, b"", {"ETag": '"v1"'})
        return Reply(200, body, {"Content-Type": "application/rss+xml", "ETag": '"v1"'})

    server.route("/feed.xml", feed)
    src = source(start, env={"KEY": "sk-secret"}, headers={"X-Api-Key": "${KEY}"})
    first = feed_once(src, client)
    assert first.changes["etag"] == '"v1"'
    assert feed_once(src, client, Checkpoint(etag='"v1"')).not_modified
    landed = server.asked("/feed.xml")[1].headers
    assert landed["if-none-match"] == '"v1"' and "x-api-key" not in landed


# --- 3. what the decoder refuses -------------------------------------------------------------------------


def test_publication_times_the_decoder_refuses_are_left_out() -> None:
    assert publishable_time(NOW + timedelta(hours=23), NOW) == NOW + timedelta(hours=23)
    assert publishable_time(NOW + timedelta(days=2), NOW) is None
    assert publishable_time(datetime(1969, 12, 31, tzinfo=UTC), NOW) is None
    assert publishable_time(None, NOW) is None
    far = from_record({"title": "T", "published_at": "9999-12-31T00:00:00Z"}, FieldMap(), OPTS)
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    assert "published_at" not in far
    assert "published_at" not in from_record({"title": "T", "published_at": ahead}, FieldMap(), OPTS)


@pytest.mark.parametrize(
    "native",
    ["abc\tdef", "abc\u200bdef", "\ufeffabc", "a\u2028b", "\u80a1" * 200, "x" * (MAX_ID_BYTES - 4)],
)
def test_native_ids_the_decoder_refuses_are_hashed(native: str) -> None:
    """A guid with a tab, a zero-width space, or 200 CJK characters (600 bytes) was published as it was,
    dead-lettered by the decoder, and remembered as published."""
    mid = message_id("wire", native, None, "text")
    assert mid.startswith("wire:") and len(mid) == len("wire:") + 32 and native not in mid
    assert mid == message_id("wire", native, "https://x.example/other", "other text")  # still stable


def test_native_ids_the_decoder_takes_are_kept() -> None:
    longest = "x" * (MAX_ID_BYTES - len("wire:"))
    assert message_id("wire", longest, None, "t") == f"wire:{longest}"
    assert message_id("wire", "\u00e9t\u00e9-42", None, "t") == "wire:\u00e9t\u00e9-42"


# --- 4. encodings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gb2312", "gbk", "big5", "shift_jis", "euc-kr", "euc-jp"])
def test_feeds_declaring_multi_byte_encodings_are_read(encoding: str) -> None:
    """expat raised ValueError ("multi-byte encodings are not supported"), which escaped as `internal`."""
    title = {"shift_jis": "\u682a\u4fa1", "euc-jp": "\u682a\u4fa1", "euc-kr": "\uc8fc\uac00"}.get(
        encoding, "\u80a1\u5e02"
    )
    doc = rss(
        f"<item><guid>1</guid><title>{title}</title></item>", f'<?xml version="1.0" encoding="{encoding}"?>'
    )
    assert parse_feed(doc.encode(encoding)).entries[0].title == title


@pytest.mark.parametrize(
    ("declared", "codec", "title"),
    [
        ("windows-1252", "cp1252", "\u20ac 5"),  # a single-byte declared encoding is still read
        # expat knows only `UTF-8`; `UTF8` went to pyexpat's single-byte fallback and failed as broken XML
        ("UTF8", "utf-8", "M\u00fcller AG \u20ac"),
        ("utf8", "utf-8", "M\u00fcller AG \u20ac"),
        ("Utf8", "utf-8", "M\u00fcller AG \u20ac"),
    ],
)
def test_a_feed_declaring_a_single_byte_encoding_or_utf8_without_the_hyphen_is_read(
    declared: str, codec: str, title: str
) -> None:
    doc = rss(f"<item><title>{title}</title></item>", f'<?xml version="1.0" encoding="{declared}"?>')
    assert parse_feed(doc.encode(codec)).entries[0].title == title


@pytest.mark.parametrize("declared", ["rot13", "hex", "no-such-encoding"])
def test_an_unreadable_declared_encoding_is_a_feed_error(declared: str) -> None:
    doc = rss("<item><title>T</title></item>", f'<?xml version="1.0" encoding="{declared}"?>')
    with pytest.raises(FeedError, match="encoding"):
        parse_feed(doc.encode())


@pytest.mark.parametrize("charset", ["rot13", "hex", "base64", "bogus"])
def test_an_http_charset_naming_no_text_encoding_is_ignored(charset: str) -> None:
    """codecs.lookup knows rot13, hex and base64, but decoding bytes with them raised LookupError."""
    doc = rss("<item><guid>1</guid><title>Hello</title></item>").encode()
    assert parse_feed(doc, charset).entries[0].title == "Hello"


def test_a_gb2312_feed_is_fetched(server: FixtureServer, client: HttpClient) -> None:
    title = "\u80a1\u5e02 \u4e0a\u6da8"
    doc = rss(
        f"<item><guid>c1</guid><title>{title}</title></item>", '<?xml version="1.0" encoding="gb2312"?>'
    )
    body = doc.encode("gb2312")
    url = server.route("/gb", lambda r, n: Reply(200, body, {"Content-Type": "application/rss+xml"}))
    (message,) = feed_once(source(url), client).messages
    assert message["title"] == title


# --- 5. a GUID reused for different entries --------------------------------------------------------------


def test_entries_sharing_a_guid_get_ids_of_their_own(
    server: FixtureServer, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    items = (
        "".join(
            f"<item><guid isPermaLink='false'>https://cms.example/news</guid><title>{t}</title>"
            f"<link>https://cms.example/news/{i}</link></item>"
            for i, t in enumerate(["Acme beats estimates", "Globex cuts guidance"])
        )
        + "<item><guid>own</guid><title>Initech files for bankruptcy</title></item>"
    )
    body = rss(items).encode()
    url = server.route("/dup", lambda r, n: Reply(200, body, {"Content-Type": "application/rss+xml"}))
    with caplog.at_level(logging.WARNING, logger="ingest.sources.fetchers"):
        fetched = feed_once(source(url), client)
    ids = [m["id"] for m in fetched.messages]
    assert len(set(ids)) == 3 and ids[2] == "s:own"
    assert ids[0] == message_id("s", None, "https://cms.example/news/0", "")
    assert any("GUID" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_a_guid_repeated_for_the_same_entry_is_no_reuse() -> None:
    feed = parse_feed(rss("<item><guid>g</guid><title>A</title></item>" * 2).encode())
    assert reused_guids(feed.entries) == frozenset()
    assert from_feed_entry(feed.entries[0], OPTS)["id"] == "wire:g"


# --- 7. relative links -----------------------------------------------------------------------------------


def test_relative_links_are_resolved_against_xml_base_or_the_document_url() -> None:
    doc = rss(
        "<item><title>A</title><link>/news/1</link></item>"
        '<item xml:base="https://cdn.example/ir/"><title>B</title><link>2</link></item>'
        "<item><title>C</title><link>https://other.example/3</link></item>"
    ).encode()
    links = [e.link for e in parse_feed(doc, None, "https://ir.acme.example/feed.xml").entries]
    assert links == ["https://ir.acme.example/news/1", "https://cdn.example/ir/2", "https://other.example/3"]
    atom = (
        b'<feed xmlns="http://www.w3.org/2005/Atom" xml:base="https://g.example/blog/">'
        b'<entry><id>1</id><title>A</title><link href="posts/1"/></entry></feed>'
    )
    assert parse_feed(atom).entries[0].link == "https://g.example/blog/posts/1"


def test_relative_links_from_two_sites_do_not_collide(server: FixtureServer, client: HttpClient) -> None:
    body = rss("<item><title>Quarterly results</title><link>/news/1001</link></item>").encode()
    url = server.route("/ir", lambda r, n: Reply(200, body, {"Content-Type": "application/rss+xml"}))
    (message,) = feed_once(source(url), client).messages
    assert message["url"] == f"{server.url}/news/1001"


def test_a_url_still_relative_is_no_dedup_key() -> None:
    keys = dedup_keys({"id": "wire:1", "url": "/news/1001", "title": "T"})
    assert not any(k.startswith("url:") for k in keys)
    absolute = dedup_keys({"id": "wire:1", "url": "https://x.example/news/1001", "title": "T"})
    assert any(k.startswith("url:") for k in absolute)


# --- 8. zone names email.utils does not know ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mon, 01 Jan 2024 10:00:00 CET", datetime(2024, 1, 1, 9, tzinfo=UTC)),
        ("Mon, 01 Jul 2024 10:00:00 CEST", datetime(2024, 7, 1, 8, tzinfo=UTC)),
        ("Mon, 01 Jan 2024 10:00:00 JST", datetime(2024, 1, 1, 1, tzinfo=UTC)),
        ("Mon, 01 Jan 2024 10:00:00 EST", datetime(2024, 1, 1, 15, tzinfo=UTC)),
        ("Mon, 01 Jan 2024 10:00:00 GMT", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("Mon, 01 Jan 2024 10:00:00", datetime(2024, 1, 1, 10, tzinfo=UTC)),  # no zone: UTC, as before
        ("Mon, 01 Jan 2024 10:00:00 IST", None),  # India, Israel or Ireland: no time rather than a wrong one
        ("Mon, 01 Jan 2024 10:00:00 XYZ", None),
    ],
)
def test_rfc822_zone_names(value: str, expected: datetime | None) -> None:
    """email.utils reads a zone name it does not know as UTC: a CEST time was two hours off."""
    assert parse_time(value) == expected


# --- 9. raw deflate and gzip of several members --------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    co = zlib.compressobj(wbits=-15)
    return co.compress(data) + co.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("deflate", _raw_deflate),  # without the zlib header: failed as `parse`
        ("deflate", zlib.compress),
        ("gzip", lambda d: gzip.compress(d[:40]) + gzip.compress(d[40:])),  # kept the first member only
    ],
)
def test_raw_deflate_and_multi_member_gzip_bodies_are_read(
    server: FixtureServer, client: HttpClient, encoding: str, encode: Any
) -> None:
    doc = rss("".join(f"<item><guid>{i}</guid><title>Story {i}</title></item>" for i in range(3))).encode()
    headers = {"Content-Type": "application/rss+xml", "Content-Encoding": encoding}
    url = server.route("/z", lambda r, n: Reply(200, encode(doc), headers, chunked=True))
    assert len(feed_once(source(url), client).messages) == 3


def test_every_gzip_member_counts_towards_the_size_limit(server: FixtureServer, client: HttpClient) -> None:
    body = b"".join(gzip.compress(b" " * 600_000) for _ in range(3))
    headers = {"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"}
    url = server.route("/big", lambda r, n: Reply(200, body, headers))
    with pytest.raises(FetchError) as e:
        feed_once(source(url, max_response_bytes=1_000_000), client)
    assert e.value.kind == "too_large"
