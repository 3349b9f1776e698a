"""The values a source sends to get its items (an API key in its URL or params, a header's token, the URL's
password) never come back in an item's id or texts: paid feeds echo the request's query into each item's
GUID or Atom id, which became the message id (raw topic, Elasticsearch `_id`, the dedup index, dead
letters), and into links written as text in a title or body."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.sources.checkpoint import Checkpoint
from ingest.sources.config import FieldMap, parse_sources
from ingest.sources.dedup import DedupIndex
from ingest.sources.feeds import parse_feed
from ingest.sources.fetchers import HttpSourceClient, fetch_feed, fetch_http_json, item_options
from ingest.sources.http import HttpClient
from ingest.sources.links import link_cleaner
from ingest.sources.normalize import ItemOptions, dedup_keys, from_feed_entry, from_record
from ingest.sources.runner import DedupGuard
from tests.fixtures.sources.server import FixtureServer, Reply, Request

KEY = "SECRETKEY12345"
TOKEN = "hdrTOKEN9876543"
PASSWORD = "pw-0f9e8d7c"


def source(url: str, **extra: Any) -> Any:
    kind = extra.pop("kind", "rss")
    entry = {"name": "paidwire", "kind": kind, "url": url, "retries": 0, **extra}
    return parse_sources([entry], env={}).sources[0]


def never_known(_: Any) -> bool:
    return False


def leaks(messages: Any, *values: str) -> list[str]:
    dumped = json.dumps(messages) + json.dumps([dedup_keys(m) for m in messages])
    return [v for v in values if v in dumped]


def echoing_rss(req: Request, n: int) -> Reply:
    """An RSS feed repeating the request's `apikey` in each item's link, GUID and description."""
    key = req.query["apikey"][0]
    items = (
        f"<item><title>Acme beats estimates</title><link>https://news.example.com/a/1?apikey={key}</link>"
        f'<guid isPermaLink="true">https://news.example.com/a/1?apikey={key}</guid>'
        f"<description>Acme Corp shares rose. Full story: https://news.example.com/a/1?apikey={key}"
        "</description></item>"
        f"<item><title>Acme guidance cut</title><link>https://news.example.com/a/2?apikey={key}&amp;x=1</link>"
        f'<guid isPermaLink="false">acme-2:{key}</guid></item>'
        f"<item><title>Acme CFO leaves</title><link>https://news.example.com/a/3?apikey={key}</link></item>"
    )
    body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'
    return Reply(200, body.encode(), {"Content-Type": "application/rss+xml"})


def test_rss_guids_and_descriptions_lose_the_key(server: FixtureServer, client: HttpClient) -> None:
    src = source(server.route("/rss", echoing_rss) + f"?apikey={KEY}")
    fetched = fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    first, second, third = fetched.messages
    assert leaks(fetched.messages, KEY) == []
    # a GUID that is the link is cleaned as the link is: the id is the item's url
    assert first["id"] == "paidwire:https://news.example.com/a/1" == f"paidwire:{first['url']}"
    assert first["body"] == "Acme Corp shares rose. Full story: https://news.example.com/a/1?apikey=***"
    # a GUID that is no URL keeps its shape, the key masked
    assert second["id"] == "paidwire:acme-2:***"
    assert second["url"] == "https://news.example.com/a/2?x=1"
    # no GUID: the id is the cleaned link, as before
    assert third["id"] == "paidwire:https://news.example.com/a/3"


def test_ids_are_the_same_at_every_fetch_and_after_the_key_is_rotated(
    server: FixtureServer, client: HttpClient
) -> None:
    url = server.route("/rss", echoing_rss)
    runs = []
    for key in (KEY, KEY, "ROTATEDKEY67890"):
        src = source(f"{url}?apikey={key}")
        fetched = fetch_feed(src, HttpSourceClient(src, client), Checkpoint(), never_known)
        assert leaks(fetched.messages, key) == []
        runs.append(fetched.messages)
    ids = [[m["id"] for m in msgs] for msgs in runs]
    assert ids[0] == ids[1] == ids[2]
    assert [dedup_keys(m) for m in runs[0]] == [dedup_keys(m) for m in runs[1]]
    # the first item's text holds the masked key only: its content key survives the rotation too
    assert [dedup_keys(m) for m in runs[0]] == [dedup_keys(m) for m in runs[2]]


def test_atom_ids_and_summaries_lose_the_key() -> None:
    """The reviewer's Atom case (parsed as fetch_feed parses, without the network)."""
    opts = item_options(source(f"https://news.example.com/atom?apikey={KEY}", kind="atom"))
    atom = f"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
    <entry><id>https://news.example.com/a/2?apikey={KEY}</id><title>Acme recalls product</title>
    <link href="https://news.example.com/a/2?apikey={KEY}"/>
    <summary>Full story: https://news.example.com/a/2?apikey={KEY}</summary></entry>
    <entry><id>tag:news.example.com,2026:{KEY}/7</id><title>Acme {KEY} wins</title>
    <author><name>desk {KEY}</name></author><link href="https://news.example.com/a/7"/></entry>
    </feed>""".encode()
    msgs = [from_feed_entry(e, opts) for e in parse_feed(atom).entries]
    assert leaks(msgs, KEY) == []
    assert msgs[0]["id"] == "paidwire:https://news.example.com/a/2"
    assert msgs[0]["body"] == "Full story: https://news.example.com/a/2?apikey=***"
    assert msgs[1]["id"] == "paidwire:tag:news.example.com,2026:***/7"
    assert msgs[1]["title"] == "Acme *** wins"
    assert msgs[1]["author"] == "desk ***"


def test_api_record_ids_and_texts_lose_header_and_param_values(
    server: FixtureServer, client: HttpClient
) -> None:
    def api(req: Request, n: int) -> Reply:
        records = [
            {  # an id that is a link, not the record's url field
                "uid": f"https://api.example/v1/items/1?apikey={KEY}",
                "link": "https://news.example.com/b/1",
                "headline": "Exxon beats",
                "summary": f"See https://news.example.com/b/1?apikey={KEY} and token {TOKEN}",
            },
            {"uid": f"rec-{TOKEN}-2", "headline": f"Chevron misses ({TOKEN})", "link": None},
            {"uid": "3", "text": f"percent-encoded: https://x.example/?k={KEY.lower()}%2B%2F", "link": None},
        ]
        return Reply(200, json.dumps({"items": records}).encode(), {"Content-Type": "application/json"})

    src = source(
        server.route("/api", api),
        kind="http_json",
        records="items",
        fields={"id": "uid", "url": "link", "title": "headline", "body": "summary"},
        params={"apikey": KEY, "key2": f"{KEY.lower()}+/"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    fetched = fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    first, second, third = fetched.messages
    assert leaks(fetched.messages, KEY, TOKEN, KEY.lower()) == []
    assert first["id"] == "paidwire:https://api.example/v1/items/1"
    assert first["body"] == "See https://news.example.com/b/1?apikey=*** and token ***"
    assert second["id"] == "paidwire:rec-***-2"
    assert second["title"] == "Chevron misses (***)"
    assert third["id"] == "paidwire:3"
    assert third["text"] == "percent-encoded: https://x.example/?k=***"


def test_file_and_stdin_records_are_left_as_they_are() -> None:
    """Sources that send nothing have nothing to mask."""
    msg = from_record({"id": f"x?apikey={KEY}", "title": KEY}, FieldMap(), ItemOptions(source="drops"))
    assert msg["id"] == f"drops:x?apikey={KEY}"
    assert msg["title"] == KEY


def test_the_urls_password_is_masked_in_texts() -> None:
    opts = item_options(source(f"https://feeduser:{PASSWORD}@news.example.com/rss"))
    msg = from_record({"title": f"pw {PASSWORD} leaked"}, FieldMap(), opts)
    assert msg["title"] == "pw *** leaked"


def test_short_values_and_search_words_are_not_masked() -> None:
    """A short value (`token: abc123`, `page: 1`, `lang: en`) and a value of words sent under a plain name
    (`q: earnings`, `category: semiconductors`, `Accept: application/json`) are ordinary text: masking them
    would garble what the model labels."""
    src = source(
        "https://api.example/v1/news?q=earnings&lang=en",
        kind="http_json",
        params={
            "token": "abc123",
            "page": "1",
            "category": "semiconductors",
            "query": "earnings call",
            "client": "dashboard-20260615",
            "appid": "f3a9c1e7b2d4a6c8e0f1a3b5",
        },
        headers={"Accept": "application/json", "X-Api-Key": "k1"},
    )
    opts = item_options(src)
    text = (
        "earnings call: en page 1, abc123 k1, semiconductors via application/json "
        "(dashboard-20260615, f3a9c1e7b2d4a6c8e0f1a3b5)"
    )
    msg = from_record({"id": "abc123-k1", "title": "Nvidia earnings", "body": text}, FieldMap(), opts)
    assert msg["id"] == "paidwire:abc123-k1"
    assert msg["title"] == "Nvidia earnings"
    # only the value that reads like a credential is masked: `dashboard-20260615` is a word and a date
    assert msg["body"] == (
        "earnings call: en page 1, abc123 k1, semiconductors via application/json (dashboard-20260615, ***)"
    )
    cleaner = link_cleaner(src.url, {"token": "abc123", "appid": "f3a9c1e7b2d4a6c8e0f1a3b5"}, {})
    assert "abc123" not in repr(cleaner) and "f3a9" not in repr(cleaner)


def test_dates_numbers_and_words_sent_under_plain_names_are_not_masked() -> None:
    """The review's cases: `from: 2026-01-01` turned "Markets on 2026-01-01: stocks rally" into "Markets
    on ***: stocks rally", and an SEC `cik=0000320193` masked the CIK in filing texts. Under a plain name
    only a value that reads like a credential is masked; under a secret-looking one any of 8+ characters."""
    plain = {
        "from": "2026-01-01",
        "to": "2026-01-31T23:59:59Z",
        "since": "2026-01-01T09:30:00.000+00:00",
        "day": "01/15/2026",
        "limit": "100000000",
        "min_cap": "1,250,000.50",
        "symbols": "AAPL,MSFT,GOOG,AMZN,NVDA",
        "tickers": "BRK.B,7203.T",
        "sector": "communication-services",
        "topic": "ConsumerDiscretionary",
        "category": "semiconductors",
        "report": "FY2025Q4-results",
    }
    credentials = {
        "appid": "f3a9c1e7b2d4a6c8e0f1a3b5",  # 20+ characters
        "client_ref": "f3a9c1e7b2d4a6c8",  # 16 mixing letters and digits
        "request_id": "123e4567-e89b-12d3-a456-426614174000",
        "blob": "dGhpcyBpcyBhIHNlY3JldA==",
        "sig": "2026012345678901",  # a secret-looking name: all digits, masked all the same
        "apikey": "SECRETKEY12345",
    }
    src = source(
        "https://efts.sec.gov/LATEST/search-index?cik=0000320193",
        kind="http_json",
        params={**plain, **credentials},
        headers={"Authorization": f"Bearer {TOKEN}", "X-Client": "dashboard-20260615"},
    )
    opts = item_options(src)
    words = " ".join([*plain.values(), "0000320193", "dashboard-20260615"])
    msg = from_record(
        {"id": "0000320193-26-000001", "title": "Markets on 2026-01-01: stocks rally", "body": words},
        FieldMap(),
        opts,
    )
    assert msg["id"] == "paidwire:0000320193-26-000001"
    assert msg["title"] == "Markets on 2026-01-01: stocks rally"
    assert msg["body"] == words
    secret = " ".join([*credentials.values(), TOKEN])
    masked = from_record({"body": f"leaked: {secret}"}, FieldMap(), opts)
    assert masked["body"] == "leaked: " + " ".join(["***"] * (len(credentials) + 1))
    assert leaks([masked], *credentials.values(), TOKEN) == []


def test_items_published_before_the_upgrade_are_still_caught_by_their_link() -> None:
    """Upgrading changes the id of an item whose GUID held the key, once; within the dedup horizon the
    item's URL key (its link was cleaned already) still drops it as a duplicate."""
    now = datetime.now(UTC)
    clock = [now.timestamp()]
    guard = DedupGuard(DedupIndex(horizon_s=7 * 86400), None, lambda: clock[0])
    published = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    before = {
        "id": f"paidwire:https://news.example.com/a/1?apikey={KEY}",  # as the old version published it
        "source": "paidwire",
        "title": "Acme beats estimates",
        "body": "Acme Corp shares rose.",
        "url": "https://news.example.com/a/1",
        "published_at": published,
    }
    guard.settle([before], [before])
    opts = item_options(source(f"https://news.example.com/rss?apikey={KEY}"))
    rss = f"""<rss version="2.0"><channel><title>t</title><item><title>Acme beats estimates</title>
    <link>https://news.example.com/a/1?apikey={KEY}</link><guid>https://news.example.com/a/1?apikey={KEY}</guid>
    <description>Acme Corp shares rose.</description><pubDate>{published}</pubDate></item></channel></rss>"""
    after = from_feed_entry(parse_feed(rss.encode()).entries[0], opts)
    assert after["id"] != before["id"]
    clock[0] += 3 * 86400
    assert guard.claim([after]) == ([], 1)
