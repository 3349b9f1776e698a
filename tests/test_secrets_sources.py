"""What a source sends to get its items never comes back in them, and what it is configured to send is
sent: a real local HTTP server records each request (query and headers) and serves feeds and APIs whose
item links echo the request's query, as some paid feeds do."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from ingest.secret_names import SECRET_NAMES, drop_secret_params, is_secret_name
from ingest.sources.checkpoint import Checkpoint
from ingest.sources.config import parse_sources
from ingest.sources.fetchers import HttpSourceClient, fetch_feed, fetch_http_json
from ingest.sources.http import HttpClient
from ingest.sources.links import link_cleaner
from tests.fixtures.sources.server import FixtureServer, Reply, Request

KEY = "s3cr3tFEEDPARAM"
URL_TOKEN = "s3cr3tFEEDURLQ"
HEADER_KEY = "s3cr3tFEEDHDR"
PASSWORD = "s3cr3tFEEDPW"


def source(url: str, **extra: Any) -> Any:
    kind = extra.pop("kind", "rss")
    entry = {"name": "s", "kind": kind, "url": url, "retries": 0, **extra}
    return parse_sources([entry], env={}).sources[0]


def never_known(_: Any) -> bool:
    return False


def echoing_feed(req: Request, n: int) -> Reply:
    """A feed whose links carry the request's query (and the feed's user info, for the second item)."""
    query = urlencode([(k, v) for k, vs in req.query.items() for v in vs]).replace("&", "&amp;")
    items = (
        f"<item><title>Apple shares fall</title><link>https://news.example.com/a/1?{query}&amp;ref=home"
        "</link><guid>g1</guid></item>"
        f"<item><title>Tesla recalls cars</title><link>https://feeduser:{PASSWORD}@news.example.com/a/2?"
        f"id=7&amp;apikey={KEY}#top</link></item>"
        "<item><title>Relative link</title><link>/rel/3?page=1</link><guid>g3</guid></item>"
    )
    body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    return Reply(200, body.encode(), {"Content-Type": "application/rss+xml"})


def test_item_links_lose_the_keys_the_source_sends(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/feed", echoing_feed).replace("http://", f"http://feeduser:{PASSWORD}@")
    src = source(
        f"{url}?token={URL_TOKEN}&lang=en",
        params={"apikey": KEY},
        headers={"X-Api-Key": HEADER_KEY},
    )
    fetched = fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    (asked,) = server.asked("/feed")
    assert asked.query == {"token": [URL_TOKEN], "lang": ["en"], "apikey": [KEY]}  # all of it was sent
    first, second, third = fetched.messages
    assert "s3cr3t" not in json.dumps(fetched.messages)
    # the rest of each link is kept as it was: an unrelated parameter, a short value the source sends
    # under a plain name (`lang=en`), the fragment
    assert first["url"] == "https://news.example.com/a/1?lang=en&ref=home"
    assert first["id"] == "s:g1"
    assert second["url"] == "https://news.example.com/a/2?id=7#top"
    assert second["id"] == "s:https://news.example.com/a/2?id=7#top"  # no GUID: the id is the cleaned link
    assert third["url"] == f"{server.url}/rel/3?page=1"  # resolved against the feed, less its user info


def test_api_record_links_and_link_ids_are_cleaned(server: FixtureServer, client: HttpClient) -> None:
    def api(req: Request, n: int) -> Reply:
        records = [
            {"link": f"https://news.example.com/b/1?apikey={KEY}&x=1", "title": "Exxon beats"},
            {"link": f"https://news.example.com/b/2?k={HEADER_KEY}", "title": "Chevron misses"},
        ]
        return Reply(200, json.dumps({"items": records}).encode(), {"Content-Type": "application/json"})

    src = source(
        server.route("/api", api),
        kind="http_json",
        records="items",
        fields={"id": "link", "url": "link"},
        params={"apikey": KEY},
        headers={"Authorization": f"Bearer {HEADER_KEY}"},
    )
    fetched = fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    assert [m["url"] for m in fetched.messages] == [
        "https://news.example.com/b/1?x=1",
        "https://news.example.com/b/2",
    ]
    assert [m["id"] for m in fetched.messages] == [f"s:{m['url']}" for m in fetched.messages]


def test_the_link_cleaner_keeps_what_the_source_does_not_send() -> None:
    clean = link_cleaner(
        f"https://u:{PASSWORD}@feed.example.com/x?token=abc&page=1&q=earnings+call",
        {"apikey": "k+y/1234"},
        {"Accept": "application/rss+xml"},
    )
    assert "s3cr3t" not in repr(clean) and "abc" not in repr(clean)
    assert clean("https://n.example.com/a?token=abc&page=1&id=1") == "https://n.example.com/a?page=1&id=1"
    assert clean("https://n.example.com/a?key=k%2By%2F1234&q=earnings%20call&b=2") == (
        "https://n.example.com/a?b=2"
    )
    assert clean("https://n.example.com/a?key=k+y/1234") == "https://n.example.com/a"
    assert clean(f"https://u:{PASSWORD}@n.example.com/a") == "https://n.example.com/a"
    assert clean(f"https://other:{PASSWORD}@n.example.com/a") == "https://n.example.com/a"
    assert clean("https://other:pw@n.example.com/a?x") == "https://other:pw@n.example.com/a?x"
    assert clean("/rel?token=abc") == "/rel"
    assert clean("  https://n.example.com/a  ") == "  https://n.example.com/a  "  # unchanged: as given


@pytest.mark.parametrize(
    ("url", "params", "sent"),
    [
        ("/q?token=abc", {}, {"token": ["abc"]}),
        ("/q?token=abc", {"apikey": "k1"}, {"token": ["abc"], "apikey": ["k1"]}),
        ("/q?token=abc&apikey=old&apikey=older", {"apikey": "new"}, {"token": ["abc"], "apikey": ["new"]}),
        ("/q?a=1%2F2&b=2", {"c": "x y"}, {"a": ["1/2"], "b": ["2"], "c": ["x y"]}),
    ],
)
def test_the_urls_own_query_is_sent_with_the_params(
    server: FixtureServer, client: HttpClient, url: str, params: dict[str, str], sent: dict[str, list[str]]
) -> None:
    rss = b"<rss><channel><item><guid>1</guid><title>t</title></item></channel></rss>"
    server.route("/q", lambda r, n: Reply(200, rss, {"Content-Type": "application/rss+xml"}))
    src = source(server.url + url, params=params)
    fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    (asked,) = server.asked("/q")
    assert asked.query == sent


def test_the_urls_query_goes_with_every_page(server: FixtureServer, client: HttpClient) -> None:
    def api(req: Request, n: int) -> Reply:
        page = req.query.get("page", ["1"])[0]
        records = [{"id": page, "title": f"page {page}"}] if page in ("1", "2") else []
        return Reply(200, json.dumps(records).encode(), {"Content-Type": "application/json"})

    src = source(
        server.route("/pages", api) + "?token=abc&page=9",
        kind="http_json",
        pagination={"type": "page", "max_pages": 5},
    )
    fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    assert [r.query for r in server.asked("/pages")] == [
        {"token": ["abc"], "page": [p]} for p in ("1", "2", "3")
    ]


def _asked_authorization(server: FixtureServer, client: HttpClient, url: str, **extra: Any) -> str:
    rss = b"<rss><channel><item><guid>1</guid><title>t</title></item></channel></rss>"
    path = server.route("/auth", lambda r, n: Reply(200, rss, {"Content-Type": "application/rss+xml"}))
    src = source(path.replace("http://", url), **extra)
    fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    return server.asked("/auth")[-1].headers.get("authorization", "")


def test_a_configured_authorization_header_wins_over_the_urls_user_info(
    server: FixtureServer, client: HttpClient
) -> None:
    bearer = _asked_authorization(
        server, client, f"http://u:{PASSWORD}@", headers={"Authorization": f"Bearer {HEADER_KEY}"}
    )
    assert bearer == f"Bearer {HEADER_KEY}"
    lower = _asked_authorization(server, client, "http://u:pw@", headers={"authorization": "Token t"})
    assert lower == "Token t"
    basic = _asked_authorization(server, client, f"http://u:{PASSWORD}@", headers={"X-Api-Key": "k"})
    assert basic == "Basic " + base64.b64encode(f"u:{PASSWORD}".encode()).decode()


@pytest.mark.parametrize(
    "name",
    ["token", "KEY", "apikey", "api_key", "x-api-key", "X-Api-Key", "auth_token", "access_token", "apiKey",
     "sessionid", "jwt", "sig", "pwd", "pass", "Password", "client_secret", "credentials", "Authorization",
     "authtoken", "signature"],
)  # fmt: skip
def test_secret_looking_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["author", "keyword", "signal", "passage", "id", "page", "q", "lang", ""])
def test_plain_names(name: str) -> None:
    assert not is_secret_name(name)


def test_secret_params_are_dropped_and_the_others_kept_as_written() -> None:
    assert drop_secret_params("a=1&API_KEY=x&b=%20&auth_token=y&c") == "a=1&b=%20&c"
    assert "access_token" in SECRET_NAMES.split("|")[:3]  # longest first, for a regex alternation
