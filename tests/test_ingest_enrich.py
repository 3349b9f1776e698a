"""Ticker extraction and normalisation, content hash, derived ids."""

from __future__ import annotations

from ingest.enrich import cashtags, content_hash, derived_id, merge_tickers, normalise_ticker


def test_cashtags() -> None:
    text = "$AAPL and $brk.b rally; $RDS-A flat; $100 and $5.20 are prices; US$TSLA no; ($MSFT) yes; $AAPL's"
    assert cashtags(text) == ["AAPL", "BRK.B", "RDS-A", "MSFT", "AAPL"]
    assert cashtags("end of sentence $NVDA.") == ["NVDA"]
    assert cashtags("no tags here, $ alone") == []


def test_normalise_ticker() -> None:
    assert normalise_ticker(" $aapl ") == "AAPL"
    assert normalise_ticker("brk.b") == "BRK.B"
    assert normalise_ticker("not a ticker") is None
    # exchange codes that start with a digit are tickers when a producer lists them as such
    assert [normalise_ticker(t) for t in ("7203.T", "0700.hk", "600519")] == ["7203.T", "0700.HK", "600519"]
    # upper() would make ASCII of these ("FI", "IBM", "SS"): not symbols of the writer's
    assert [normalise_ticker(t) for t in ("\ufb01", "\u0131bm", "\u00df")] == [None, None, None]
    assert normalise_ticker("") is None


def test_merge_tickers_dedupes_in_order() -> None:
    assert merge_tickers(["ACME", "AAPL"], ["AAPL", "MSFT", "ACME"]) == ("ACME", "AAPL", "MSFT")


def test_content_hash_ignores_case_and_whitespace() -> None:
    assert content_hash("Fed  holds\nrates") == content_hash("fed holds rates ")
    assert content_hash("Fed holds") != content_hash("Fed cuts")
    # stored in every document: the same value in every version, Unicode whitespace included
    assert (
        content_hash("\xa0 Fed\u2003holds\u3000RATES\n\t steady\u2028 ") == "eb16dc35eb25958f2c21c76bf42e83f5"
    )


def test_derived_id_depends_on_content_only() -> None:
    a = derived_id("news", "text", "2026-11-30T00:00:00Z")
    assert a == derived_id("news", "text", "2026-11-30T00:00:00Z")
    assert a != derived_id("blog", "text", "2026-11-30T00:00:00Z")
    assert a != derived_id("news", "text", None)
