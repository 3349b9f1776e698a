"""Fixes from the second sources review: feed credentials in published links, gzip bodies of many members,
RFC 822 zones email.utils cannot read (`UTF8` declarations: test_sources_review_fixes.py). Fetches go to a
real local HTTP server."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.sources.checkpoint import Checkpoint
from ingest.sources.config import parse_sources
from ingest.sources.feeds import parse_feed
from ingest.sources.fetchers import Fetched, HttpSourceClient, fetch_feed
from ingest.sources.http import _MAX_GZIP_MEMBERS, FetchError, HttpClient, _BoundedBody, _decoder
from ingest.sources.timeparse import parse_time
from tests.fixtures.sources.server import FixtureServer, Reply

FEED = {"Content-Type": "application/rss+xml"}


def source(url: str, env: dict[str, str] | None = None, **extra: Any) -> Any:
    entry = {"name": "s", "kind": "rss", "url": url, "backoff_s": 0.01, "retries": 0, **extra}
    return parse_sources([entry], env=env or {}).sources[0]


def feed_once(src: Any, client: HttpClient) -> Fetched:
    return fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), lambda _: False)


def rss(items: str, declaration: str = "") -> str:
    return f'{declaration}<rss version="2.0"><channel><title>t</title>{items}</channel></rss>'


# --- 1. credentials of the feed URL in published links ---------------------------------------------------


def test_relative_links_publish_neither_the_password_nor_the_key_of_the_feed_url(
    server: FixtureServer, client: HttpClient
) -> None:
    """`/news/1` resolved against `http://reader:PW@host/feed?apikey=KEY` was published with the password,
    and `#q3` with the key, as the message's url and (without a GUID) its id."""
    body = rss(
        "<item><title>Acme beats estimates</title><link>/news/1</link></item>"
        "<item><title>Quarterly results</title><link>#q3</link></item>"
    ).encode()
    url = server.route("/feed", lambda r, n: Reply(200, body, FEED))
    src = source(
        url.replace("http://", "http://reader:${PW}@"),
        env={"PW": "hunter2secret", "KEY": "TOPSECRET123"},
        params={"apikey": "${KEY}"},
    )
    messages = feed_once(src, client).messages
    assert server.asked("/feed")[0].query["apikey"] == ["TOPSECRET123"]  # the key did go into the request
    assert [m["url"] for m in messages] == [f"{server.url}/news/1", f"{server.url}/feed#q3"]
    for m in messages:
        for secret in ("hunter2secret", "TOPSECRET123", "reader"):
            assert secret not in m["id"] and secret not in m["url"]


def test_links_resolve_against_the_feed_url_less_its_user_info_and_query() -> None:
    doc = rss(
        "<item><title>A</title><link>/news/1</link></item>"
        "<item><title>B</title><link>page.html</link></item>"
        "<item><title>C</title><link>#x</link></item>"
        "<item><title>D</title><link>https://guest:open@other.example/d?ref=feed</link></item>"
    ).encode()
    entries = parse_feed(doc, None, "https://u:pw@ir.example/feeds/rss?token=k#top").entries
    assert [e.link for e in entries] == [
        "https://ir.example/news/1",
        "https://ir.example/feeds/page.html",
        "https://ir.example/feeds/rss#x",
        "https://guest:open@other.example/d?ref=feed",  # an absolute link is the feed's own: left as it is
    ]


# --- 2. gzip bodies of many members ----------------------------------------------------------------------


def _read(body: bytes, chunk: int, max_bytes: int = 10_000_000) -> bytes:
    bounded = _BoundedBody(_decoder("gzip", "test"), max_bytes, "test")
    for i in range(0, len(body), chunk):
        bounded.add(body[i : i + chunk])
    return bounded.finish()


@pytest.mark.parametrize("chunk", [1 << 30, 65536])
def test_a_gzip_body_of_thousands_of_members_is_read(chunk: int) -> None:
    """Each member after the first was one more nested call: RecursionError, which no caller expected."""
    doc = rss("<item><title>A</title></item>").encode()
    assert _read(gzip.compress(b"") * 4000 + gzip.compress(doc), chunk) == doc
    assert _read(gzip.compress(b"a") * 3000, chunk) == b"a" * 3000


def test_a_gzip_body_of_too_many_members_is_a_fetch_error() -> None:
    with pytest.raises(FetchError) as e:
        _read(gzip.compress(b"") * (_MAX_GZIP_MEMBERS + 1), 1 << 30)
    assert e.value.kind == "parse" and "members" in e.value.detail


def test_a_fetched_feed_of_thousands_of_gzip_members_is_read(
    server: FixtureServer, client: HttpClient
) -> None:
    doc = rss("<item><title>A</title><link>https://x.example/a</link></item>").encode()
    body = gzip.compress(b"") * 4000 + gzip.compress(doc)
    url = server.route("/gz", lambda r, n: Reply(200, body, {**FEED, "Content-Encoding": "gzip"}))
    (message,) = feed_once(source(url), client).messages
    assert message["url"] == "https://x.example/a"


# --- 3. RFC 822 zones email.utils does not read ------------------------------------------------------------


DATE = "Tue, 01 Dec 2026 10:00:00"


def test_an_rfc822_zone_that_is_no_offset_or_known_name_gives_no_time() -> None:
    """email.utils reads `GMT+0100` (JavaScript's dates) or `Europe/Paris` as no zone (then taken as UTC: an
    hour off), and `+01` as one minute east: offsets after GMT or UTC are read, unknown zones give no time."""
    unreadable = ["GMT+1", "Europe/Paris", "EST5EDT", "+01"]  # GMT+1 is an hour west to POSIX, east to people
    assert [parse_time(f"{DATE} {zone}") for zone in unreadable] == [None] * len(unreadable)
    readable = {"+0100": 9, "+0100 (CET)": 9, "CET": 9, "EDT": 14, "-0000": 10, "+0000": 10, "GMT": 10}
    readable |= {"+01:00": 9, "-05:00": 15}  # an ISO 8601 offset in an RFC 822 date
    readable |= {
        "GMT+0100": 9,
        "GMT-0500 (EST)": 15,
        "UTC+01:00": 9,
        "GMT+0000": 10,
        "UTC+0": 10,
        "Etc/UTC": 10,
    }
    readable |= {"UT": 10, "Z": 10, "": 10}  # no zone: UTC, as before
    hours = {zone: parse_time(f"{DATE} {zone}") for zone in readable}
    assert hours == {zone: datetime(2026, 12, 1, hour, tzinfo=UTC) for zone, hour in readable.items()}
