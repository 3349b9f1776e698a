"""The pure core of sources: feed parsing, normalisation to the message contract, dedup decisions,
checkpoints, line tailing, time parsing, rate limiting and retry timing. No servers."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.sources.checkpoint import Checkpoint, FileOffset, StateStore, advance
from ingest.sources.config import FieldMap
from ingest.sources.dedup import DedupIndex, is_stale
from ingest.sources.feeds import FeedError, parse_feed
from ingest.sources.http import RetryPolicy, http_date, parse_retry_after, retry_delay
from ingest.sources.normalize import (
    InvalidItem,
    ItemOptions,
    canonical_url,
    content_hash,
    dedup_keys,
    encoded_size,
    fit_size,
    from_feed_entry,
    from_record,
    from_text_line,
)
from ingest.sources.ratelimit import TokenBucket
from ingest.sources.runner import DedupGuard
from ingest.sources.tailing import csv_header, parse_csv_row, read_lines, split_lines, start_offset
from ingest.sources.text import clean_text, detect_language, normalize_ticker, tickers_from_categories
from ingest.sources.timeparse import format_time, parse_time

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
OPTS = ItemOptions(source="wire")


def feed(name: str) -> list[dict[str, object]]:
    return [from_feed_entry(e, OPTS) for e in parse_feed((FIXTURES / name).read_bytes()).entries]


# -- feeds ------------------------------------------------------------------------------------------------


def test_rss_items_become_contract_messages() -> None:
    first, second, third = feed("rss.xml")
    assert first == {
        "id": "wire:wire-1001",
        "source": "wire",
        "title": "Apple beats estimates as iPhone sales rise",
        "body": "Apple & its suppliers reported strong results for the quarter.",
        "url": "https://wire.example/news/apple-beats?utm_source=rss",
        "published_at": "2024-01-02T14:30:00Z",
        "tickers": ["AAPL"],  # NASDAQ:AAPL yes; "Technology" is no ticker
        "author": "Jane Doe",
        "lang": "en",
    }
    assert (
        second["body"] == "Shares of Microsoft fell in early trading on the news."
    )  # content:encoded, no HTML
    assert second["tickers"] == ["MSFT", "NVDA"]  # ticker domain and cashtag
    assert third["published_at"] == "2024-01-02T14:45:00Z"  # +0100 converted to UTC
    assert "tickers" not in third  # a bare "IPO" category is not taken as a ticker by default
    assert third["id"] == "wire:https://wire.example/news/fed-wait"  # no guid: the link is the id


def test_atom_entries_keep_language_and_categories() -> None:
    de, en = feed("atom.xml")
    assert de["lang"] == "de" and en["lang"] == "en"  # feed xml:lang, overridden per entry
    assert de["tickers"] == ["SIE"] and de["author"] == "Pressestelle"
    assert de["url"] == "https://presse.example/siemens-prognose"  # rel=alternate, not rel=self
    assert de["published_at"] == "2024-01-03T08:00:00Z"
    assert en["body"] == "The group raised its outlook for the year."
    assert en["published_at"] == "2024-01-03T09:05:00Z"  # updated when there is no published


def test_rss1_rdf_feed() -> None:
    (item,) = feed("rdf.xml")
    assert item["id"] == "wire:https://reg.example/n/1" and item["published_at"] == "2024-01-04T08:00:00Z"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ((FIXTURES / "broken.xml").read_bytes(), "broken XML"),
        ((FIXTURES / "not_a_feed.html").read_bytes(), "broken XML"),
        (b"", "empty document"),
        (b'{"items": []}', "broken XML"),
        (b"<html><body>hi</body></html>", "not an RSS or Atom feed"),
        (b"<rss version='2.0'></rss>", "without <channel>"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<rss><channel><title>&b;</title></channel></rss>",
            "refused XML",
        ),
        (  # an <!ATTLIST> default is copied into every <item>: 0.1 MB grew 190 MB
            b'<?xml version="1.0"?><!DOCTYPE rss [<!ATTLIST item a CDATA "' + b"A" * 100_000 + b'">]>'
            b"<rss><channel>" + b"<item/>" * 2000 + b"</channel></rss>",
            "refused XML: DTDForbidden",
        ),
    ],
)
def test_broken_documents_raise_feed_error(data: bytes, needle: str) -> None:
    with pytest.raises(FeedError, match=needle):
        parse_feed(data)


def test_a_public_doctype_without_an_internal_subset_is_read() -> None:
    """RSS 0.91 names Netscape's DTD; it is never fetched, and refusing internal subsets leaves it alone."""
    doc = (
        b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b'"http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss version="0.91"><channel><title>t</title>'
        b"<item><title>Acme beats estimates</title></item></channel></rss>"
    )
    assert parse_feed(doc).entries[0].title == "Acme beats estimates"


def test_a_feed_in_the_http_charset_or_after_blank_lines_is_read() -> None:
    """A Latin-1 feed without an XML declaration, served as charset=ISO-8859-1, failed whole as broken
    UTF-8, and so did any feed with a blank line before its `<?xml`."""
    title = "Soci\u00e9t\u00e9 G\u00e9n\u00e9rale"
    latin = f"<rss><channel><item><guid>1</guid><title>{title}</title></item></channel></rss>"
    body = latin.encode("latin-1")
    with pytest.raises(FeedError, match="broken XML"):
        parse_feed(body)
    (entry,) = parse_feed(body, "ISO-8859-1").entries
    assert entry.title == title
    declared = b'<?xml version="1.0" encoding="utf-8"?>' + latin.encode("utf-8")
    assert parse_feed(declared, "iso-8859-1").entries[0].title == entry.title  # the document's own wins
    assert parse_feed(b"\n\n  " + declared).entries[0].title == entry.title


def test_ticker_category_modes() -> None:
    cats = [("IPO", None), ("NYSE:IBM", None), ("Technology", None), ("$tsla", None), ("GE", "symbol")]
    assert tickers_from_categories(cats, "prefixed") == ["IBM", "TSLA", "GE"]
    assert tickers_from_categories(cats, "all") == ["IPO", "IBM", "TSLA", "GE"]
    assert tickers_from_categories(cats, "none") == []
    assert normalize_ticker("brk.b") == "BRK.B" and normalize_ticker("not a ticker") is None


# -- records ----------------------------------------------------------------------------------------------


def test_api_record_mapped_with_jmespath() -> None:
    record = json.loads((FIXTURES / "api_page1.json").read_text())["data"]["items"][0]
    fields = FieldMap(
        id="uid",
        title="headline",
        body="summary",
        url="link",
        published_at="created",
        tickers="symbols",
        author="by.name",
    )
    msg = from_record(record, fields, ItemOptions(source="api", lang="en", tickers=("SPY",)))
    assert msg == {
        "id": "api:501",
        "source": "api",
        "title": "Tesla deliveries top forecasts",
        "body": "Deliveries rose 20% in the quarter.",
        "url": "https://api.example/a/501",
        "published_at": "2024-01-05T12:00:00Z",
        "tickers": ["SPY", "TSLA"],  # declared per source, then the record's own
        "author": "Ann",
        "lang": "en",
    }


def test_record_with_epoch_time_and_ticker_string() -> None:
    record = {"text": "Oil slides", "ts": 1704459600000, "sym": "XOM; cvx", "id": 7}
    msg = from_record(record, FieldMap(published_at="ts", tickers="sym"), OPTS)
    assert msg["published_at"] == "2024-01-05T13:00:00Z" and msg["tickers"] == ["XOM", "CVX"]
    assert msg["text"] == "Oil slides" and "title" not in msg and msg["id"] == "wire:7"
    msg = from_record({"text": "x", "sym": [True, "ge", 7]}, FieldMap(tickers="sym"), OPTS)
    assert msg["tickers"] == ["GE"]  # JSON true is no ticker; 7 is no ticker either


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"title": None, "body": ""}, "empty_text"),
        ({"title": {"nested": 1}}, "schema"),
        ([1, 2], "not_object"),
        ({"title": "T", "url": "https://x.example/" + "a" * 8_200}, "schema"),  # the labeler's url limit
        ({"title": "T", "url": "https://x.example/a\nERROR forged log line"}, "schema"),
    ],
)
def test_unusable_records_raise_with_reason(record: object, reason: str) -> None:
    with pytest.raises(InvalidItem) as e:
        from_record(record, FieldMap(), OPTS)  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_ids_are_stable_and_derived_when_missing() -> None:
    a = from_record({"title": "T", "url": "https://x.example/a#frag"}, FieldMap(), OPTS)
    b = from_record({"title": "Other", "url": "https://X.example/a/?utm_medium=x"}, FieldMap(), OPTS)
    assert a["id"] == b["id"]  # the same canonical URL
    c = from_text_line("hello world", OPTS)
    assert c["id"] == from_text_line("hello   world", OPTS)["id"]
    long = from_record({"title": "T", "id": "x" * 600}, FieldMap(), OPTS)
    assert len(long["id"]) < 60


def test_canonical_url_drops_tracking_and_fragment() -> None:
    assert (
        canonical_url("HTTPS://Wire.Example/News/?utm_source=rss&b=2&fbclid=z#top")
        == "https://wire.example/News?b=2"
    )


def test_html_is_stripped_and_entities_decoded() -> None:
    assert clean_text("<p>A &amp; B</p><script>x()</script><br>C") == "A & B C"
    assert clean_text("AT&amp;T  rises\n\n") == "AT&T rises"
    assert clean_text(None) == ""


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The company said that its profit rose in the quarter and the shares are up", "en"),
        ("Die Aktie der Bank ist mit dem Markt nicht gestiegen und die Anleger sind", "de"),
        ("Les actions de la banque sont en hausse pour la semaine avec le marché", "fr"),
        ("Las acciones de la empresa suben por el resultado del trimestre con la", "es"),
        ("AAPL +3%", None),
        ("", None),
    ],
)
def test_language_guess(text: str, lang: str | None) -> None:
    assert detect_language(text) == lang


def test_declared_language_wins() -> None:
    msg = from_record(
        {"text": "Die Aktie ist mit dem Markt gestiegen und die Bank"}, FieldMap(), ItemOptions("s", "en")
    )
    assert msg["lang"] == "en"


def test_oversized_items_are_truncated_to_fit_or_rejected() -> None:
    big = from_record(
        {"title": "T", "body": "é" * 50_000}, FieldMap(), ItemOptions("s", max_item_bytes=2_000)
    )
    assert encoded_size(big) <= 2_000 and big["body"].endswith("…")
    with pytest.raises(InvalidItem) as e:
        from_record({"title": "x" * 5_000}, FieldMap(), ItemOptions("s", max_item_bytes=1_000))
    assert e.value.reason == "oversized"


def test_fit_size_counts_json_escaping_and_never_publishes_empty_text() -> None:
    escaped = {"id": "s:1", "source": "s", "title": "T", "body": '"\\' * 40_000}  # 2 bytes -> 4
    out = fit_size(dict(escaped), 10_000)
    assert 9_900 <= encoded_size(out) <= 10_000 and out["body"].endswith("…")
    with pytest.raises(InvalidItem, match="no room") as e:
        fit_size({"id": "s:" + "i" * 90, "source": "s", "text": "abc " * 100}, 125)
    assert e.value.reason == "oversized"


@given(st.text(min_size=0, max_size=3000), st.integers(min_value=300, max_value=4000))
def test_fit_size_never_exceeds_the_limit(body: str, limit: int) -> None:
    msg = {"id": "s:1", "source": "s", "title": "t", "body": body}
    try:
        out = fit_size(dict(msg), limit)
    except InvalidItem:
        return
    assert encoded_size(out) <= limit
    assert out["body"] == body or out["body"].endswith("…") or out["body"] == ""


# -- dedup ------------------------------------------------------------------------------------------------


def test_dedup_by_url_and_content_across_sources() -> None:
    index = DedupIndex(horizon_s=3600)
    a = from_record({"title": "Fed holds rates", "url": "https://a.example/1"}, FieldMap(), ItemOptions("a"))
    same_url = from_record(
        {"title": "Fed keeps rates", "url": "https://a.example/1?utm_x=1"}, FieldMap(), ItemOptions("b")
    )
    same_text = from_record({"title": "FED holds  rates"}, FieldMap(), ItemOptions("c"))
    other = from_record({"title": "ECB cuts"}, FieldMap(), ItemOptions("c"))
    index.record(dedup_keys(a), now=1000)
    assert index.is_duplicate(dedup_keys(same_url), now=1001)
    assert index.is_duplicate(dedup_keys(same_text), now=1001)
    assert content_hash(a) == content_hash(same_text)
    assert not index.is_duplicate(dedup_keys(other), now=1001)
    assert not index.is_duplicate(dedup_keys(a), now=1000 + 3601)  # beyond the horizon
    assert index.prune(now=1000 + 3601) == len(dedup_keys(a))


def test_a_key_recorded_again_after_the_horizon_starts_a_new_horizon() -> None:
    index = DedupIndex(horizon_s=3600)
    index.record(["k"], now=0)
    index.record(["k"], now=3900)  # expired but not pruned yet: published again, remembered from now
    index.prune(now=3900)
    assert index.is_duplicate(["k"], now=4200)


def test_an_entry_a_feed_keeps_listing_without_a_date_is_never_published_again() -> None:
    """It cannot be stale, and its keys expired a horizon after it was first published: a feed entry
    without <pubDate> came back every week."""
    day = 86400.0
    clock = [0.0]
    guard = DedupGuard(DedupIndex(horizon_s=7 * day), state=None, clock=lambda: clock[0])
    item = {"id": "guid-1", "source": "wire", "text": "Acme recalls widgets", "url": "https://n.example/1"}
    published = 0
    for d in range(30):  # fetched daily for four weeks
        clock[0] = d * day
        fresh, _ = guard.claim([dict(item)])
        guard.settle(fresh, fresh)
        published += len(fresh)
    assert published == 1
    index = DedupIndex(horizon_s=100.0)
    index.record(["id:k"], now=0.0)
    assert not index.seen_again(["id:k"], now=40.0)  # recent: left alone, the saved index not rewritten
    assert index.seen_again(["id:k"], now=60.0) and index.is_duplicate(["id:k"], now=150.0)


def test_the_same_text_posted_daily_under_new_ids_still_comes_back_each_horizon() -> None:
    """Only an item's own id is kept alive by sightings: a daily notice with the same words but its own
    id and link, a duplicate by content, must not keep the first one's content key alive for ever."""
    day = 86400.0
    clock = [0.0]
    guard = DedupGuard(DedupIndex(horizon_s=7 * day), state=None, clock=lambda: clock[0])
    days = []
    for d in range(25):
        clock[0] = d * day
        notice = {"id": f"n{d}", "source": "wire", "text": "Markets closed", "url": f"https://n.example/{d}"}
        fresh, _ = guard.claim([notice])
        guard.settle(fresh, fresh)
        days += [d] * len(fresh)
    assert days == [0, 8, 16, 24]


def test_stale_items_are_older_than_the_horizon() -> None:
    now = datetime(2024, 1, 10, tzinfo=UTC).timestamp()
    assert is_stale({"published_at": "2024-01-01T00:00:00Z"}, now, horizon_s=86400)
    assert not is_stale({"published_at": "2024-01-09T12:00:00Z"}, now, horizon_s=86400)
    assert not is_stale({}, now, horizon_s=86400)


# -- checkpoints ------------------------------------------------------------------------------------------


def test_advance_keeps_newest_time_and_last_id() -> None:
    cp = Checkpoint(last_published_at="2024-01-02T00:00:00Z")
    now = datetime(2024, 1, 10, tzinfo=UTC).timestamp()
    new = advance(
        cp,
        [
            {"id": "a", "published_at": "2024-01-01T00:00:00Z"},
            {"id": "b", "published_at": "2024-01-03T00:00:00Z"},
            # a bad date in the future would make since_param skip every item until then
            {"id": "x", "published_at": "2031-01-01T00:00:00Z"},
            {"id": "c"},
        ],
        now=now,
        etag='"v2"',
    )
    assert new.last_published_at == "2024-01-03T00:00:00Z" and new.last_id == "c" and new.etag == '"v2"'
    assert advance(new, [], now=now).last_published_at == "2024-01-03T00:00:00Z"


def test_state_store_round_trip_and_atomic_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    cp = Checkpoint(etag="e", cursor="c9", files={"/x/a.jsonl": FileOffset(10, 5, 20)})
    store.save_checkpoint("wire", cp)
    assert StateStore(tmp_path).load_checkpoint("wire") == cp
    assert StateStore(tmp_path).load_checkpoint("other") == Checkpoint()
    index = DedupIndex(horizon_s=10, entries={"id:a": 5.0})
    store.save_dedup(index)
    assert StateStore(tmp_path).load_dedup(10).entries == {"id:a": 5.0}
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_corrupt_checkpoint_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "checkpoints" / "wire.json").write_text("{not json", encoding="utf-8")
    assert store.load_checkpoint("wire") == Checkpoint()
    assert list((tmp_path / "checkpoints").glob("wire.json.corrupt-*"))


def test_readonly_store_never_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state", readonly=True)
    store.save_checkpoint("wire", Checkpoint(etag="x"))
    store.save_dedup(DedupIndex(horizon_s=1))
    assert not (tmp_path / "state").exists()


# -- tailing ----------------------------------------------------------------------------------------------


def test_split_lines_keeps_partial_line_for_later() -> None:
    lines, end = split_lines(b"a\nbb\r\ncc", 100)
    assert [(ln.data, ln.start, ln.end) for ln in lines] == [(b"a", 100, 102), (b"bb", 102, 106)]
    assert end == 106
    lines, end = split_lines(b"a\nbb\r\ncc", 100, final=True)
    assert lines[-1].data == b"cc" and end == 108


@given(
    st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.binary(max_size=10)
)
def test_split_lines_covers_every_byte_of_complete_lines(parts: list[bytes], tail: bytes) -> None:
    tail = tail.replace(b"\n", b"")
    buffer = b"".join(p + b"\n" for p in parts) + tail
    lines, end = split_lines(buffer, 0)
    assert end == len(buffer) - len(tail)
    assert [ln.data.rstrip(b"\r") for ln in lines] == [p.rstrip(b"\r") for p in parts]
    assert all(a.end == b.start for a, b in itertools.pairwise(lines))


def test_read_lines_waits_for_a_settled_partial_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a":1}\n{"a":')
    mtime = f.stat().st_mtime
    lines, end = read_lines(f, 0, 1 << 20, now=mtime + 1)
    assert [ln.data for ln in lines] == [b'{"a":1}'] and end == 8
    lines, end = read_lines(f, end, 1 << 20, now=mtime + 3600)  # the writer is long gone
    assert [ln.data for ln in lines] == [b'{"a":'] and end == f.stat().st_size


def test_overlong_line_is_skipped_not_stalled(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"x" * 5000 + b"\n" + b'{"a":1}\n')
    lines, end = read_lines(f, 0, 1024)
    assert end == 5001 and len(lines) == 1
    lines, end = read_lines(f, end, 1024)
    assert [ln.data for ln in lines] == [b'{"a":1}']
    # with only what is left of a fetch's budget, a long line waits for a full budget instead
    assert read_lines(f, 0, 1024, may_skip=False) == ([], 0)


def test_rotation_and_truncation_restart_from_zero(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b"1\n2\n")
    st_ = f.stat()
    assert start_offset(f, FileOffset(4, st_.st_ino, 4))[0] == 4
    assert start_offset(f, FileOffset(2, st_.st_ino + 1, 4))[0] == 0  # replaced by a new file
    f.write_bytes(b"1\n")
    assert start_offset(f, FileOffset(4, os.stat(f).st_ino, 4))[0] == 0  # truncated


def test_csv_header_and_rows(tmp_path: Path) -> None:
    header, end = csv_header(FIXTURES / "items.csv", ",")
    assert header == ["id", "headline", "published", "symbols"] and end > 0
    row = parse_csv_row(b'c1,"Intel cuts jobs, shares fall",2024-01-07T08:00:00Z,INTC', header, ",")
    assert row["headline"] == "Intel cuts jobs, shares fall"
    with pytest.raises(ValueError):
        parse_csv_row(b"a,b,c,d,e", header, ",")


def test_importing_the_sources_leaves_the_csv_cell_limit_alone() -> None:
    """The csv module's cell limit is process-wide: importing a module must not change it for everyone."""
    code = (
        "import csv; before = csv.field_size_limit(); "
        "import ingest.sources.tailing, ingest.sources.service, finsent.cli; "
        "print(before, csv.field_size_limit())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = out.split()
    assert before == after


@pytest.fixture
def csv_limit() -> Iterator[int]:
    """A small csv cell limit for the test (the default is 128 Ki characters), whatever the process had."""
    before = csv.field_size_limit(4096)
    try:
        yield 4096
    finally:
        csv.field_size_limit(before)


def test_a_csv_cell_over_the_limit_is_an_oversized_item_and_the_next_rows_are_read(
    tmp_path: Path, csv_limit: int
) -> None:
    from ingest.sources.config import FilesSource
    from ingest.sources.fetchers import fetch_files

    huge = "x" * (csv_limit + 1)
    drop = tmp_path / "drop.csv"
    drop.write_text(f"id,text\nb1,{huge}\nb2,Acme beats estimates\n", encoding="utf-8")
    with pytest.raises(InvalidItem, match="oversized: a CSV cell is over"):
        parse_csv_row(f"b1,{huge}".encode(), ["id", "text"], ",")
    source = FilesSource(kind="files", name="drops", path=drop)
    fetched = fetch_files(source, Checkpoint(), lambda msg: False, now=drop.stat().st_mtime + 3600)
    assert [(where, e.reason) for where, e in fetched.invalid] == [("drop.csv@8", "oversized")]
    assert [m["text"] for m in fetched.messages] == ["Acme beats estimates"] and fetched.items == 2
    assert fetched.changes["files"][str(drop.resolve())].offset == drop.stat().st_size


def test_a_csv_header_cell_over_the_limit_is_reported_and_the_file_waits(
    tmp_path: Path, csv_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    drop = tmp_path / "drop.csv"
    drop.write_text("id," + "h" * (csv_limit + 1) + "\nb1,x\n", encoding="utf-8")
    assert csv_header(drop, ",") == ([], 0)
    assert f"unusable CSV header (a CSV cell is over {csv_limit} characters)" in caplog.text


# -- time, rate limit, retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T14:30:00Z", "2024-01-02T14:30:00Z"),
        ("2024-01-02T15:30:00+01:00", "2024-01-02T14:30:00Z"),
        ("2024-01-02 14:30:00", "2024-01-02T14:30:00Z"),
        ("Tue, 02 Jan 2024 14:30:00 GMT", "2024-01-02T14:30:00Z"),
        (1704205800, "2024-01-02T14:30:00Z"),
        (1704205800500, "2024-01-02T14:30:00.500Z"),
        ("1704205800", "2024-01-02T14:30:00Z"),
    ],
)
def test_parse_time(value: object, expected: str) -> None:
    parsed = parse_time(value)
    assert parsed is not None and format_time(parsed) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        float("nan"),
        -1,
        True,
        [1],
        10**400,  # too big for a float
        "9" * 5000,  # int() refuses over 4300 digits
        "²",  # str.isdigit() but not a number
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "Fri, 31 Dec 9999 23:59:59 -0100",
    ],
)
def test_parse_time_rejects(value: object) -> None:
    assert parse_time(value) is None


def test_token_bucket_paces_requests() -> None:
    bucket = TokenBucket(2, 1.0)
    assert bucket.reserve(0.0) == 0 and bucket.reserve(0.0) == 0
    assert bucket.reserve(0.0) == pytest.approx(0.5)
    assert bucket.reserve(10.0) == 0  # refilled


def test_retry_timing() -> None:
    policy = RetryPolicy(retries=5, backoff_s=1.0, max_backoff_s=10.0)
    assert [retry_delay(n, policy, None) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert retry_delay(1, policy, 3.0) == 3.0 and retry_delay(1, policy, 999.0) == 10.0
    assert parse_retry_after("7", now=0) == 7.0
    assert parse_retry_after(http_date(1000.0), now=990.0) == pytest.approx(10.0)
    assert parse_retry_after("soon", now=0) is None and parse_retry_after(None, now=0) is None


def test_a_symlink_out_of_the_drop_folder_is_not_read(tmp_path: Path) -> None:
    from ingest.sources.tailing import list_files

    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    (outside / "private.jsonl").write_text('{"text": "not for publishing"}\n')
    (drop / "a.jsonl").write_text('{"text": "ok"}\n')
    (drop / "b.jsonl").symlink_to(drop / "a.jsonl")  # a link within the folder is fine
    (drop / "leak.jsonl").symlink_to(outside / "private.jsonl")
    assert sorted(p.name for p in list_files(drop, "*.jsonl")) == ["a.jsonl", "b.jsonl"]


def test_dates_without_a_zone_are_read_in_the_sources_dates_timezone() -> None:
    """An API writing New York time without a zone was read as UTC: every item dated hours early came
    after its alert window had closed, and none of the source's messages counted."""
    from zoneinfo import ZoneInfo

    from ingest.sources.config import HttpJsonSource
    from ingest.sources.fetchers import item_options

    ny = ZoneInfo("America/New_York")
    cases = {
        "2026-06-15 09:30:00": "2026-06-15T13:30:00Z",  # summer time
        "2026-01-15 09:30:00": "2026-01-15T14:30:00Z",
        "2026-06-15": "2026-06-15T04:00:00Z",
        "Mon, 15 Jun 2026 09:30:00": "2026-06-15T13:30:00Z",
        "2026-06-15T09:30:00+02:00": "2026-06-15T07:30:00Z",  # a zone of its own is kept
        "Mon, 15 Jun 2026 09:30:00 -0000": "2026-06-15T09:30:00Z",  # RFC 5322: UTC, zone unknown
        "Mon, 15 Jun 2026 09:30:00 EDT": "2026-06-15T13:30:00Z",
        1781530200: "2026-06-15T13:30:00Z",  # epoch seconds have no zone to read
    }
    for value, expected in cases.items():
        parsed = parse_time(value, ny)
        assert parsed is not None and format_time(parsed) == expected, value
    source = HttpJsonSource.model_validate(
        {
            "name": "ny-api",
            "kind": "http_json",
            "url": "https://api.example/v1",
            "dates_timezone": "America/New_York",
        }
    )
    msg = from_record(
        {"text": "ACME beats", "published_at": "2026-06-15 09:30:00"}, FieldMap(), item_options(source)
    )
    assert msg["published_at"] == "2026-06-15T13:30:00Z"
    default = HttpJsonSource.model_validate(
        {"name": "utc-api", "kind": "http_json", "url": "https://api.example/v1"}
    )
    msg = from_record(
        {"text": "ACME beats", "published_at": "2026-06-15 09:30:00"}, FieldMap(), item_options(default)
    )
    assert msg["published_at"] == "2026-06-15T09:30:00Z"
    with pytest.raises(ValueError, match="unknown time zone 'New York'"):
        HttpJsonSource.model_validate(
            {"name": "x", "kind": "http_json", "url": "https://api.example/v1", "dates_timezone": "New York"}
        )
