"""Text helpers for items: HTML to plain text, ticker hints, and a cheap language guess."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from html.parser import HTMLParser

_WS = re.compile(r"\s+")
_BLOCK_TAGS = frozenset({"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def clean_text(value: str | None) -> str:
    """Plain text from a value that may hold HTML (feeds often do): tags dropped, entities decoded,
    whitespace collapsed."""
    if not value:
        return ""
    if "<" in value and ">" in value:
        parser = _TextExtractor()
        try:
            parser.feed(value)
            parser.close()
            value = "".join(parser.parts)
        except Exception:  # HTMLParser is lenient; this is a last resort for odd input
            value = re.sub(r"<[^>]*>", " ", value)
    else:
        value = html.unescape(value)
    return _WS.sub(" ", value).strip()


_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.-][A-Z0-9]{1,3})?$")
_PREFIXED = re.compile(r"^(?:\$|[A-Z]{2,10}:)([A-Za-z][A-Za-z0-9]{0,5}(?:[.-][A-Za-z0-9]{1,3})?)$")
_TICKER_DOMAINS = ("ticker", "symbol", "stock")


def normalize_ticker(value: str) -> str | None:
    """`AAPL`, `$aapl`, `NASDAQ:AAPL` -> `AAPL`; None if it does not look like a ticker."""
    v = value.strip()
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
