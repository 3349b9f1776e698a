"""Sources' text cleaning keeps plain text whole and still strips real HTML; the tickers sources publish are
ones the labeler's decoder takes (how many, and which). Pure: no servers."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.decode import DecodeLimits, decode
from ingest.enrich import normalise_ticker
from ingest.message import KafkaMeta, Message
from ingest.sources.config import FieldMap
from ingest.sources.feeds import parse_feed
from ingest.sources.normalize import MAX_TICKERS, ItemOptions, from_feed_entry, from_record, from_text_line
from ingest.sources.text import clean_text, normalize_ticker, split_tickers

OPTS = ItemOptions(source="social-api")


def decoded(message: dict[str, object]) -> Message:
    """The message as the labeler reads it; fails the test if it would be dead-lettered."""
    now = datetime.now(UTC)
    meta = KafkaMeta("finsent.raw", 0, 1, int(now.timestamp() * 1000))
    out = decode(json.dumps(message).encode(), meta, DecodeLimits(), now)
    assert isinstance(out, Message), out
    return out


# -- plain text keeps its characters ----------------------------------------------------------------------

PLAIN_POSTS = [
    "Buy $AAPL only if price<target and volume>avg, otherwise stay out",
    "lol someone wrote <script> in a tweet. Anyway $TSLA recall is huge, 2M cars affected, stock tanking",
    "<style> is my favourite tag; meanwhile $NVDA guidance cut by 30%",
    "if a<b then $GME>100 for sure",
    "if a<b then c>d we buy",  # `then`, `c` are no attributes that stand without a value
    "Apple Inc <AAPL.O> said on Tuesday it would buy back shares",  # Reuters writes tickers so
    "<NYSE:IBM> beats; <BRK.B> flat; margin <5% vs >3% last year",
    "$XOM <!-- unclosed comment: everything after this is kept, bankruptcy filed >",
    "$SPY <3 but <![CDATA[ never closed > and more",
    "x <script type=x> y and no closing tag, $AMD up",
    "<b $GME> squeeze",
    "if a<b then c=d>e",  # `then` stands without a value, and no value is quoted
    "<i hate it> but $GME<20 is a buy",
    # element names that are also words: a tag only with a name=value attribute or an end tag after it
    "check <link> in bio, $TSLA <meta> thread",
    "<title> TBD: $AAPL earnings <map> of sectors, <math> is hard",
    # custom elements' names have a hyphen, like tickers and words
    "Stock <BRK-B> up, <BF-B> down; <long-term> hold",
]


@pytest.mark.parametrize("post", PLAIN_POSTS)
def test_plain_text_keeps_its_characters(post: str) -> None:
    assert clean_text(post) == post
    assert from_text_line(post, OPTS)["text"] == post
    msg = from_record({"id": "1", "text": post, "url": "https://x.example/1"}, FieldMap(), OPTS)
    assert msg["text"] == post
    assert decoded(msg).text == post


def test_plain_text_entities_are_decoded_and_whitespace_collapsed() -> None:
    assert clean_text("AT&amp;T  rises\n\n") == "AT&T rises"
    assert clean_text("S&P 500 &lt; 5000 &amp;&amp; VIX &gt; 20") == "S&P 500 < 5000 && VIX > 20"
    assert clean_text("&lt;script&gt;alert(1)&lt;/script&gt; $TSLA") == "<script>alert(1)</script> $TSLA"
    assert clean_text(None) == "" and clean_text("") == ""


# -- real HTML is cleaned as before -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ('<p>Shares of <a href="https://x.example/a?b=1&amp;c=2">$ACME</a> fell</p>', "Shares of $ACME fell"),
        ("Line one<br/>line two<br />line three<BR>four", "Line one line two line three four"),
        ("<p>A &amp; B</p><script>x()</script><br>C", "A & B C"),
        (
            '<div class="story"><h2>Apple beats</h2><p>Revenue rose 8%&nbsp;to $90bn.</p>'
            "<ul><li>iPhone up</li><li>Mac down</li></ul></div>",
            "Apple beats Revenue rose 8% to $90bn. iPhone up Mac down",
        ),
        ('<img src="https://x/y.png" alt="chart" width="600"><p>Chart of the day</p>', "Chart of the day"),
        ('<style type="text/css">p {color: red}</style><p>Stocks rose</p>', "Stocks rose"),
        ("<SCRIPT>var a = 1 < 2 && 3 > 2;</SCRIPT >Body", "Body"),
        ("<p>Markets</p><!-- ad slot <b>x</b> --><p>closed higher</p>", "Markets closed higher"),
        ("<table><tr><td>AAPL</td><td>+2%</td></tr></table>", "AAPL +2%"),
        ("<p class=MsoNormal>Press release<o:p></o:p></p>", "Press release"),
        ("<!--[if gte mso 9]><xml>junk</xml><![endif]--><p>Q3 &#8211; record</p>", "Q3 – record"),
        ("<![if !supportLists]>1.<![endif]> Revenue", "1. Revenue"),
        (
            '<iframe src="https://v.example/x" allowfullscreen></iframe><p>Watch the call</p>',
            "Watch the call",
        ),
        (
            '<video controls autoplay muted><source src="v.mp4" type="video/mp4">No video.</video>',
            "No video.",
        ),
        ("<P>OLD STYLE</P><P>HTML</P>", "OLD STYLE HTML"),
        ("<a href='https://x.example/a' title='a > b'>quoted gt</a> ok", "quoted gt ok"),
        ("<a href=https://x.example/a>unquoted</a> link", "unquoted link"),
        ("<p>Microsoft<sup>1</sup> and H<sub>2</sub>O</p>", "Microsoft1 and H2O"),
        ('<svg width="10"><path d="M0 0L10 10"/></svg><p>Icon</p>', "Icon"),
        ("<![CDATA[x<y]]> after", "after"),
        ('<!DOCTYPE html><?xml version="1.0"?><p>hi</p>', "hi"),
        ("<p>Tom&#39;s <em>view</em>: buy</p>", "Tom's view: buy"),
        ("<p>Price &lt;script&gt; literal</p>", "Price <script> literal"),
        # real HTML around plain comparisons: the tags go, the comparisons stay
        ("<p>Buy if price<target and volume>avg</p>", "Buy if price<target and volume>avg"),
        ("<p>see <AAPL.O> and <b>$GME</b>>100</p>", "see <AAPL.O> and $GME>100"),
        # a script's content goes up to its own closing tag only
        ("<script>a()</script>kept<script>b()</script> also kept", "kept also kept"),
        ("<p>x</p><script>a()</script>kept <script> and this too", "x kept <script> and this too"),
    ],
)
def test_real_html_is_still_cleaned(value: str, text: str) -> None:
    assert clean_text(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (  # Vimeo's embed code: bare attributes of any name next to quoted values
            '<p>CEO interview</p><iframe src="https://player.vimeo.com/video/123456" width="640" '
            'height="360" frameborder="0" webkitallowfullscreen mozallowfullscreen allowfullscreen></iframe>'
            "<p>Shares of ACME rose.</p>",
            "CEO interview Shares of ACME rose.",
        ),
        ('<a href="https://ex.com/a"target="_blank">Read more</a> ACME beats', "Read more ACME beats"),
        (  # AMP feeds: custom elements, with a name="value" attribute or closed by their end tag
            '<amp-img src="https://cdn.ex.com/x.jpg" width="800" height="450" layout="responsive">'
            "</amp-img> ACME",
            "ACME",
        ),
        ("<amp-ad>ad</amp-ad>ACME<my-widget/> beats", "ad ACME beats"),
        (
            '<meta charset="utf-8"><link rel="stylesheet" href="https://ex.com/s.css"><p>ACME beats</p>',
            "ACME beats",
        ),
        ("<title>ACME Q3</title><base href=https://ex.com/><p>Revenue up</p>", "ACME Q3 Revenue up"),
        ("<table border><tr><td>Revenue</td><td>$1.2B</td></tr></table>", "Revenue $1.2B"),
        ('<img src="https://ex.com/x.jpg" alt> ACME beats', "ACME beats"),
        ("<img src=x.jpg alt>ACME <td nowrap>beats", "ACME beats"),
        ("<a href=https://ex.com/r?id=42&src=rss>ACME</a> beats", "ACME beats"),
        ('<br / >ACME<img src="x.jpg" / > beats', "ACME beats"),
        ("<div contenteditable>ACME</div> beats", "ACME beats"),
        ("<math><mi>x</mi><mo>+</mo><mn>1</mn></math> ACME beats", "x+1 ACME beats"),
        ("<fieldset><legend>Vote</legend>ACME</fieldset>", "Vote ACME"),
        ("<template><p>row</p></template><p>ACME</p>", "row ACME"),
        ("<P CLASS=x>ACME</P><BR>beats", "ACME beats"),
        ("<b then c='d'>ACME</b> beats", "ACME beats"),  # a quoted value: markup, whatever else it holds
    ],
)
def test_real_world_markup_is_cleaned(value: str, text: str) -> None:
    """Markup as feeds write it, not only as the HTML standard would: attributes with no space between
    them, bare attributes of any name, unquoted URLs with `=` and `&`, `/ >`, metadata and custom
    elements."""
    assert clean_text(value) == text


def test_feed_bodies_are_cleaned_by_their_format() -> None:
    """RSS descriptions and Atom html content are escaped HTML (cleaned); Atom xhtml content arrives as the
    text of its elements and Atom text content as it is: their `<` and `>` are the post's own."""
    rss = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>W</title>
      <item><guid>1</guid><title>Buy if price&lt;target</title>
        <description>&lt;p&gt;Shares of &lt;a href="https://x"&gt;$ACME&lt;/a&gt; fell&lt;/p&gt;</description>
      </item>
      <item><guid>2</guid><title>T</title><description>if a&lt;b then $GME&gt;100</description></item>
      <item><guid>3</guid><title>T</title>
        <description><![CDATA[<p>Revenue <b>up</b></p><script>track()</script>]]></description></item>
    </channel></rss>"""
    bodies = [from_feed_entry(e, OPTS) for e in parse_feed(rss).entries]
    assert bodies[0]["title"] == "Buy if price<target" and bodies[0]["body"] == "Shares of $ACME fell"
    assert [b["body"] for b in bodies[1:]] == ["if a<b then $GME>100", "Revenue up"]
    atom = b"""<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>P</title><id>f</id>
      <entry><id>1</id><title type="text">a&lt;b then $GME&gt;100</title>
        <content type="html">&lt;p&gt;The group &lt;b&gt;raised&lt;/b&gt; its outlook.&lt;/p&gt;</content>
      </entry>
      <entry><id>2</id><title>T</title><content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">
        <p>Buy $AAPL if price&lt;target and volume&gt;avg</p>
        <p><b>lol</b> &lt;script&gt; stays</p></div></content>
      </entry></feed>"""
    first, second = (from_feed_entry(e, OPTS) for e in parse_feed(atom).entries)
    assert first["title"] == "a<b then $GME>100" and first["body"] == "The group raised its outlook."
    assert second["body"] == "Buy $AAPL if price<target and volume>avg lol <script> stays"


@pytest.mark.parametrize(
    "value",
    [
        "<![CDATA[" * 50_000,
        "<!-- " * 50_000,
        "<script>" * 50_000,
        '<a x="' * 50_000,
        "<b " + "then " * 100_000,
        "a<b " * 100_000 + ">",
        ("<script " + "hidden " * 50) * 5_000,
        "<a" + ' x="y"' * 50_000,
        "<amp-img " * 50_000,
        "<link " * 50_000,
        "".join(f"<x-{i}>" for i in range(20_000)),  # custom elements without an end tag, all different
        # tag candidates in each other's quoted values: a quote ends a value in one, starts one in another
        "<a x=\"<a y='\" z='" + (" w=\"<a '" + " v='<a \"") * 20_000 + ">",
        "<a x=\"<a y='\" z='" + (" w=\"'" + " v='\"") * 20_000,
    ],
)
def test_cleaning_takes_linear_time_on_odd_input(value: str) -> None:
    """Each `<` that starts nothing is looked at once: an unclosed comment, CDATA or script is not searched
    for its end again at every later `<` (50 000 unclosed CDATA sections took over 10 s)."""
    start = time.perf_counter()
    assert clean_text(value)
    assert time.perf_counter() - start < 3.0


# -- tickers: as many, and such, as the decoder takes ------------------------------------------------------


def test_tickers_are_capped_at_the_decoders_limit(caplog: pytest.LogCaptureFixture) -> None:
    assert DecodeLimits().max_tickers == MAX_TICKERS
    symbols = [f"T{i:02d}" for i in range(MAX_TICKERS + 11)]
    record = {"id": "9", "text": "Selloff: every name in the basket down 10%", "symbols": symbols}
    opts = ItemOptions(source="market-wire", tickers=("SPY",))
    with caplog.at_level(logging.DEBUG, logger="ingest.sources.normalize"):
        msg = from_record(record, FieldMap(tickers="symbols"), opts)
    assert msg["tickers"] == ["SPY", *symbols[: MAX_TICKERS - 1]]  # the first ones, in order
    assert decoded(msg).tickers == tuple(msg["tickers"])  # published, not dead-lettered
    assert "names 62 tickers, published with the first 50" in caplog.text
    assert "market-wire:9" in caplog.text
    # at the limit nothing is cut, nor logged
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="ingest.sources.normalize"):
        exact = from_record({**record, "symbols": symbols[:MAX_TICKERS]}, FieldMap(tickers="symbols"), OPTS)
    assert exact["tickers"] == symbols[:MAX_TICKERS] and not caplog.text


def test_repeated_tickers_count_once_towards_the_cap() -> None:
    symbols = ["AAPL", "$aapl", "NASDAQ:AAPL"] * 40 + ["MSFT"]
    msg = from_record({"text": "x", "s": symbols}, FieldMap(tickers="s"), OPTS)
    assert msg["tickers"] == ["AAPL", "MSFT"]


def test_feed_categories_are_capped_too() -> None:
    cats = "".join(f"<category>NYSE:C{i:02d}</category>" for i in range(60)).encode()
    rss = b"<rss><channel><title>W</title><item><guid>1</guid><title>Banks fall</title>" + cats + b"</item>"
    entry = parse_feed(rss + b"</channel></rss>").entries[0]
    msg = from_feed_entry(entry, OPTS)
    assert msg["tickers"] == [f"C{i:02d}" for i in range(MAX_TICKERS)]
    decoded(msg)


def test_symbols_the_decoder_refuses_are_left_out() -> None:
    symbols = ["^GSPC", "BTC/USD", "AAPL", "ſpy", "ﬁ", "EUR=X", "", "  ", "TOOLONGSYMBOL", "BRK.B", "BTC-USD"]
    msg = from_record({"text": "Index and crypto move", "syms": symbols}, FieldMap(tickers="syms"), OPTS)
    assert msg["tickers"] == ["AAPL", "BRK.B", "BTC-USD"]
    assert decoded(msg).tickers == ("AAPL", "BRK.B", "BTC-USD")
    assert split_tickers("^GSPC, BTC/USD; ſpy NDX") == ["NDX"]


@given(st.text(alphabet=st.sampled_from("AaBbZz09.-$:^/ _ſﬁ\u0130\u212a\n"), max_size=14))
def test_every_ticker_sources_publish_is_one_the_decoder_takes(value: str) -> None:
    ticker = normalize_ticker(value)
    if ticker is not None:
        assert normalise_ticker(ticker) == ticker
