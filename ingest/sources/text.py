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
# as `<AAPL.O>`: only an element name from this list, written as a tag (attributes of valid syntax), is a
# tag; anything else between `<` and `>` is text.
_ELEMENTS = _words(
    "a abbr acronym address article aside audio b bdi bdo big blockquote body br button caption center "
    "cite code col colgroup dd del details dfn div dl dt em embed figcaption figure font footer form "
    "h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd label li main mark nav nobr "
    "noscript object ol option p param picture pre q rp rt ruby s samp script section select small "
    "source span strike strong style sub summary sup svg table tbody td textarea tfoot th thead time "
    "tr tt u ul var video wbr"
)
# Elements whose content is no text: dropped up to their closing tag (one without a closing tag is text).
_RAW_TEXT = ("script", "style", "svg")
# Elements that separate words (`<td>1</td><td>2</td>` is "1 2", not "12").
_BLOCK = _words(
    "address article aside blockquote br caption dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 "
    "h6 header hr li main nav ol p pre section table tbody td tfoot th thead tr ul"
)
# Microsoft Office's namespaced elements in pasted press releases (`<o:p></o:p>`).
_OFFICE = re.compile(r"(?:o|v|w|m|x|st1):[a-z][a-z0-9]*")
# Attributes that may stand without a value (`<iframe allowfullscreen>`); any other needs one, so that
# `<b then c>` or `<b $GME>` is no tag.
_BARE_ATTRIBUTES = _words(
    "allowfullscreen async autofocus autoplay checked compact controls crossorigin default defer "
    "disabled download formnovalidate hidden inert ismap itemscope loop multiple muted nohref "
    "nomodule noresize noshade novalidate nowrap open playsinline readonly required reversed "
    "selected"
)
_NAME = r"[A-Za-z][A-Za-z0-9]*(?::[A-Za-z][A-Za-z0-9]*)?"
_ATTRIBUTE = r"""([A-Za-z_:][-A-Za-z0-9_:.]*)(\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?"""
_START_TAG = re.compile(rf"<(?P<name>{_NAME})(?P<attributes>(?:\s+{_ATTRIBUTE})*)\s*(?P<empty>/?)>", re.ASCII)
_ATTRIBUTES = re.compile(_ATTRIBUTE, re.ASCII)
_END_TAG = re.compile(rf"</({_NAME})\s*>", re.ASCII)
# What ends a comment, a CDATA section and each _RAW_TEXT element.
_ENDS = {
    "<!--": re.compile("-->"),
    "<![CDATA[": re.compile(r"\]\]>"),
    **{name: re.compile(rf"</{name}\s*>", re.ASCII | re.IGNORECASE) for name in _RAW_TEXT},
}
# `<!DOCTYPE html>`, `<?xml version="1.0"?>`, Word's `<![if !supportLists]>` / `<![endif]>`.
_DECLARATION = re.compile(
    r"<!doctype\s[^<>]*>|<\?[A-Za-z][^<>]*\?>|<!\[[^<>\[\]]*\]>", re.ASCII | re.IGNORECASE
)
# A tag longer than this is text: it bounds the work on a `<` that starts no tag.
_MAX_TAG = 65_536


def _is_element(name: str) -> bool:
    return name in _ELEMENTS or _OFFICE.fullmatch(name) is not None


def _attributes_ok(attributes: str) -> bool:
    return all(
        m.group(2) or m.group(1).lower() in _BARE_ATTRIBUTES or m.group(1).lower().startswith("data-")
        for m in _ATTRIBUTES.finditer(attributes)
    )


class _Markup:
    """The markup of one text: where each tag, comment or declaration at a `<` ends."""

    def __init__(self, value: str) -> None:
        self.value = value
        self._ends: dict[str, tuple[list[int], list[int]]] = {}

    def at(self, i: int) -> tuple[int, bool] | None:
        """(end, separates words) of the markup starting at `value[i] == "<"`; None if it is text."""
        value = self.value
        for opening in ("<!--", "<![CDATA["):
            if value.startswith(opening, i):
                end = self._end_of(opening, i + len(opening))
                return None if end is None else (end, False)  # an unclosed one is text
        if m := _DECLARATION.match(value, i, i + _MAX_TAG):
            return m.end(), False
        if m := _END_TAG.match(value, i, i + _MAX_TAG):
            name = m.group(1).lower()
            return (m.end(), name in _BLOCK) if _is_element(name) else None
        m = _START_TAG.match(value, i, i + _MAX_TAG)
        if m is None:
            return None
        name = m.group("name").lower()
        if not _is_element(name) or not _attributes_ok(m.group("attributes")):
            return None
        if name in _RAW_TEXT and not m.group("empty"):
            end = self._end_of(name, m.end())  # the content goes with the element
            return None if end is None else (end, False)  # one without its closing tag is text
        return m.end(), name in _BLOCK

    def _end_of(self, key: str, after: int) -> int | None:
        """The end of the first _ENDS[key] at or after `after`; the text is searched once per key, so
        that a thousand unclosed `<script>` cost no more than one."""
        if key not in self._ends:
            found = list(_ENDS[key].finditer(self.value))
            self._ends[key] = ([m.start() for m in found], [m.end() for m in found])
        starts, ends = self._ends[key]
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
