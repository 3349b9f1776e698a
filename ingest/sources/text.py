"""Text helpers for items: HTML to plain text, ticker hints, and a cheap language guess."""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from collections.abc import Iterable

_WS = re.compile(r"\s+")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What counts as HTML markup in a text (clean_text). Feed descriptions and API summaries hold HTML, but
# plain posts hold `price<target`, `a<b then $GME>100`, or `<script>` as a word, and Reuters writes tickers
# as `<AAPL.O>`: only an element name from these lists, written as a tag (attributes of valid syntax), is a
# tag; anything else between `<` and `>` is text.
_ELEMENTS = _words(
    "a abbr acronym address applet article aside audio b basefont bdi bdo big blockquote body br button "
    "caption center cite code col colgroup datalist dd del details dfn div dl dt em embed fieldset "
    "figcaption figure font footer form frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe "
    "img input ins kbd label li main mark nav nobr noembed noframes noscript object ol optgroup option "
    "p param picture pre q rb rp rt rtc ruby s samp script section select small source span strike "
    "strong style sub summary sup svg table tbody td textarea tfoot th thead time tr tt u ul var video "
    "wbr xmp"
)
# Elements whose names are also words (`check <link> in bio`, `<title>`, `<math>`): a tag only with a
# name=value attribute (`<link rel="stylesheet" href="...">`), written `<name/>`, or when its end tag
# follows (`<title>...</title>`, `<math><mi>x</mi></math>`); so are custom elements (_CUSTOM).
_WORD_ELEMENTS = _words(
    "area base blink canvas data dialog dir frame image legend link map marquee math menu meta meter "
    "output progress search slot template title track xml "
    "annotation maction menclose merror mfrac mi mn mo mover mpadded mphantom mprescripts mroot mrow ms "
    "mspace msqrt mstyle msub msubsup msup mtable mtd mtext mtr munder munderover semantics"
)
# Custom elements (AMP's `<amp-img>`, web components): a lower-case name with a hyphen.
_CUSTOM = re.compile(r"[a-z][-.0-9_a-z]*-[-.0-9_a-z]*", re.ASCII)
# Microsoft Office's namespaced elements in pasted press releases (`<o:p></o:p>`).
_OFFICE = re.compile(r"(?:o|v|w|m|x|st1):[a-z][a-z0-9]*", re.ASCII)
# Elements whose content is no text: dropped up to their closing tag (one without a closing tag is text).
_RAW_TEXT = ("script", "style", "svg")
# Elements that separate words (`<td>1</td><td>2</td>` is "1 2", not "12"); so do custom elements.
_BLOCK = _words(
    "address article aside blockquote br caption center dd details dialog dir div dl dt fieldset "
    "figcaption figure footer frameset h1 h2 h3 h4 h5 h6 header hgroup hr legend li main menu nav ol "
    "optgroup option p pre section summary table tbody td template tfoot th thead title tr ul"
)
# Attributes written without a value in a tag that has no quoted one (`<table border>`, `<td nowrap>`,
# `<div contenteditable>`): only these, so that `<b then c>` stays text. A tag with a quoted value
# (`<img src="x.jpg" alt>`, `<iframe src="..." webkitallowfullscreen>`) may have any.
_BARE_ATTRIBUTES = _words(
    "allowfullscreen allowpaymentrequest allowtransparency alt amp async autocomplete autofocus "
    "autoplay border checked compact contenteditable controls crossorigin declare default defer "
    "disabled disablepictureinpicture disableremoteplayback download draggable fallback "
    "formnovalidate hidden inert ismap itemscope loop mozallowfullscreen msallowfullscreen multiple "
    "muted nohref nomodule noresize noshade novalidate nowrap open placeholder playsinline popover "
    "readonly required reversed scoped seamless selected spellcheck translate truespeed "
    "webkitallowfullscreen webkitdirectory"
)
_NAME = r"[A-Za-z][-.A-Za-z0-9_]*+(?>:[A-Za-z][A-Za-z0-9]*+)?"
# An attribute: a bare name or name=value, the value quoted (the next attribute may follow it directly:
# `href="x"target="_blank"`) or not (anything but whitespace, quotes, `<` and `>`:
# `href=https://x/r?id=42&src=rss`). _START_TAG reads them without backtracking (atomic groups, possessive
# quantifiers; no group captured inside them, which Python 3.11's re gets wrong): a `<` that starts no
# tag is read up to the end of what could be its tag, once. _ATTRIBUTES takes a tag's attributes apart.
_ATTRIBUTE = r"""\s*+[A-Za-z_:][-A-Za-z0-9_:.]*+(?>\s*+=\s*+(?>"[^"]*+"|'[^']*+'|[^\s"'<>]++))?"""
_START_TAG = re.compile(
    rf"<(?P<name>{_NAME})(?=[\s/>])(?P<attributes>(?>(?:{_ATTRIBUTE})*))\s*+(?P<empty>/?+)\s*+>", re.ASCII
)
_ATTRIBUTES = re.compile(
    r"""\s*([A-Za-z_:][-A-Za-z0-9_:.]*)(?:\s*=\s*(?:("[^"]*"|'[^']*')|[^\s"'<>]+))?""", re.ASCII
)
_END_TAG = re.compile(rf"</({_NAME})\s*+>", re.ASCII)
# What ends a comment and a CDATA section.
_ENDS = {"<!--": re.compile("-->"), "<![CDATA[": re.compile(r"\]\]>")}
# `<!DOCTYPE html>`, `<?xml version="1.0"?>`, Word's `<![if !supportLists]>` / `<![endif]>`.
_DECLARATION = re.compile(
    r"<!doctype\s[^<>]*+>|<\?[A-Za-z][^<>]*\?>|<!\[[^<>\[\]]*+\]>", re.ASCII | re.IGNORECASE
)


def _element_kind(name: str) -> str | None:
    """How `name` is written as a tag: "tag", always; "word", only with a name=value attribute, as
    `<name/>` or with its end tag after it (_WORD_ELEMENTS, custom elements); None: never, it is no
    element's name."""
    if name in _ELEMENTS or _OFFICE.fullmatch(name):
        return "tag"
    if name in _WORD_ELEMENTS or _CUSTOM.fullmatch(name):
        return "word"
    return None


def _separates(name: str) -> bool:
    return name in _BLOCK or "-" in name


class _Markup:
    """The markup of one text: where each tag, comment or declaration at a `<` ends.

    Linear time: what could be the tag at a `<` is read once, up to the next `<` outside a quoted value.
    Such reads overlap only where one is in a quoted value and the other outside any (a `<` is no
    attribute), and each quote character ends or starts a value in exactly one of them: at any point of
    the text at most three are under way, one outside values, one in a "-quoted and one in a '-quoted
    value."""

    def __init__(self, value: str) -> None:
        self.value = value
        self._ends: dict[str, tuple[list[int], list[int]]] = {}
        self._end_tags: dict[str, tuple[list[int], list[int]]] | None = None

    def at(self, i: int) -> tuple[int, bool] | None:
        """(end, separates words) of the markup starting at `value[i] == "<"`; None if it is text."""
        value = self.value
        for opening, ends in _ENDS.items():
            if value.startswith(opening, i):
                end = self._first_after(self._search(opening, ends), i + len(opening))
                return None if end is None else (end, False)  # an unclosed one is text
        if m := _DECLARATION.match(value, i):
            return m.end(), False
        if m := _END_TAG.match(value, i):
            name = m.group(1).lower()
            return (m.end(), _separates(name)) if _element_kind(name) else None
        m = _START_TAG.match(value, i)
        if m is None:
            return None
        name = m.group("name").lower()
        kind = _element_kind(name)
        if kind is None:
            return None
        # a bare attribute is any name in a tag with a quoted value, else one of _BARE_ATTRIBUTES
        quoted = valued = False
        bare = []
        for attribute in _ATTRIBUTES.finditer(m.group("attributes")):
            if attribute.end(1) == attribute.end():
                bare.append(attribute.group(1).lower())
            else:
                valued = True
                quoted = quoted or attribute.group(2) is not None
        if not quoted and not all(a in _BARE_ATTRIBUTES or a.startswith(("data-", "aria-")) for a in bare):
            return None  # `<b then c>`
        end, empty = m.end(), m.group("empty") == "/"
        if name in _RAW_TEXT and not empty:
            closing = self._first_after(self._end_tag(name), end)  # the content goes with the element
            return None if closing is None else (closing, False)  # one without its closing tag is text
        if kind == "word" and not (
            valued or empty or self._first_after(self._end_tag(name), end) is not None
        ):
            return None  # `check <link> in bio`
        return end, _separates(name)

    def _end_tag(self, name: str) -> tuple[list[int], list[int]]:
        """(starts, ends) of the end tags of element `name`, found in one pass over the text."""
        if self._end_tags is None:
            self._end_tags = {}
            for m in _END_TAG.finditer(self.value):
                starts, ends = self._end_tags.setdefault(m.group(1).lower(), ([], []))
                starts.append(m.start())
                ends.append(m.end())
        return self._end_tags.get(name, ([], []))

    def _search(self, key: str, pattern: re.Pattern[str]) -> tuple[list[int], list[int]]:
        """(starts, ends) of the matches of `pattern`: the text is searched once per key, so that a
        thousand unclosed comments cost no more than one."""
        if key not in self._ends:
            found = list(pattern.finditer(self.value))
            self._ends[key] = ([m.start() for m in found], [m.end() for m in found])
        return self._ends[key]

    @staticmethod
    def _first_after(found: tuple[list[int], list[int]], after: int) -> int | None:
        """The end of the first match in `found` that starts at or after `after`."""
        starts, ends = found
        k = bisect_left(starts, after)
        return ends[k] if k < len(starts) else None


def _strip_markup(value: str) -> str:
    markup = _Markup(value)
    parts: list[str] = []
    pending = 0  # where the text not yet copied to `parts` starts
    i = value.find("<")
    while i >= 0:
        found = markup.at(i)
        if found is None:
            i = value.find("<", i + 1)
            continue
        end, separates = found
        parts.append(value[pending:i])
        if separates:
            parts.append(" ")
        pending = end
        i = value.find("<", end)
    parts.append(value[pending:])
    return "".join(parts)


def clean_text(value: str | None) -> str:
    """Plain text from a value that may hold HTML (feeds often do): tags dropped, entities decoded,
    whitespace collapsed. Only markup is dropped: a known HTML element's tags (with attributes of valid
    syntax), the content of a script, style or svg element up to its closing tag, comments, CDATA
    sections and declarations. Any other `<`...`>` is text (`price<target and volume>avg`), as is an
    unclosed comment or a script or style element without a closing tag."""
    if not value:
        return ""
    if "<" in value:
        value = _strip_markup(value)
    return _WS.sub(" ", html.unescape(value)).strip()


_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.-][A-Z0-9]{1,3})?$")
_PREFIXED = re.compile(r"^(?:\$|[A-Z]{2,10}:)([A-Za-z][A-Za-z0-9]{0,5}(?:[.-][A-Za-z0-9]{1,3})?)$")
_TICKER_DOMAINS = ("ticker", "symbol", "stock")


def normalize_ticker(value: str) -> str | None:
    """`AAPL`, `$aapl`, `NASDAQ:AAPL` -> `AAPL`; None if it does not look like a ticker (`^GSPC`,
    `BTC/USD`). What it returns, the pipeline's decoder takes as a ticker (ingest.enrich)."""
    v = value.strip()
    if not v.isascii():  # before upper(): "ﬁ".upper() is "FI", "ſpy".upper() is "SPY"
        return None
    m = _PREFIXED.match(v)
    if m:
        v = m.group(1)
    v = v.upper()
    return v if _TICKER.match(v) else None


def split_tickers(value: object) -> list[str]:
    """Tickers from a list or a string separated by commas, semicolons or spaces; invalid ones dropped."""
    if value is None:
        return []
    items: Iterable[object] = value if isinstance(value, list | tuple) else re.split(r"[,;\s]+", str(value))
    out = []
    for item in items:
        # bool is an int subclass: JSON `true` is no ticker ("TRUE")
        if isinstance(item, str | int) and not isinstance(item, bool) and (t := normalize_ticker(str(item))):
            out.append(t)
    return out


def tickers_from_categories(categories: Iterable[tuple[str, str | None]], mode: str) -> list[str]:
    """Ticker hints from feed categories (term, domain/scheme).

    'prefixed' trusts only unambiguous forms (`NYSE:IBM`, `$IBM`, or a domain naming tickers/symbols);
    'all' also takes any upper-case term that looks like a ticker; 'none' takes nothing."""
    if mode == "none":
        return []
    out = []
    for term, domain in categories:
        term = term.strip()
        by_domain = bool(domain) and any(d in (domain or "").lower() for d in _TICKER_DOMAINS)
        if by_domain or _PREFIXED.match(term) or (mode == "all" and term.isupper()):
            t = normalize_ticker(term)
            if t:
                out.append(t)
    return out


def unique(values: Iterable[str]) -> list[str]:
    """Values in first-seen order without repeats."""
    return list(dict.fromkeys(values))


# A handful of very frequent function words per language: enough to tell the languages finance news
# usually comes in apart on a headline plus a paragraph, at no cost and with no model to download.
_STOPWORD_TEXT = {
    "en": "the and of to in is for on that with as by at from are was its has will",
    "de": "der die und das den ist nicht mit von zu im für auf dem des ein eine sich",
    "fr": "le la les et des du un une est pour dans que sur au qui pas avec par",
    "es": "el la los las y de del que en un una por para con es se al",
    "it": "il lo la gli le e di del che in un una per con non è della sono",
    "nl": "de het een en van is dat op te in met voor niet zijn aan",
    "pt": "o a os as e de do da que em um uma para com não por dos das",
}
_STOPWORDS = {lang: frozenset(words.split(" ")) for lang, words in _STOPWORD_TEXT.items()}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(text: str, *, min_hits: int = 2) -> str | None:
    """A cheap guess by counting frequent function words; None when the evidence is too thin (short or
    ambiguous text), never a confident wrong answer on a bare headline."""
    words = [w.lower() for w in _WORD.findall(text[:2000])]
    if not words:
        return None
    scores = {lang: sum(1 for w in words if w in stop) for lang, stop in _STOPWORDS.items()}
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < min_hits or top < 1.5 * second:
        return None
    return best
