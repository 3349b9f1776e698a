"""Enrichment of a message's text: tickers from cashtags, content hash, derived id. Pure functions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

# `$AAPL`, `$brk.b`, `$RDS-A`; not `$100`, `$5.20`, nor the `$` inside `US$AAPL`.
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,9}(?:[.\-][A-Za-z]{1,2})?)(?![A-Za-z0-9])")
# A `tickers` entry: US symbols (`AAPL`, `BRK.B`) and exchange codes that start with a digit (`7203.T`,
# `0700.HK`): the producer says it is a ticker, unlike a `$100` in running text.
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9]{0,9}(?:[.\-][A-Z0-9]{1,4})?$")


def cashtags(text: str) -> list[str]:
    """Tickers written as cashtags in `text`, upper-cased, in order of appearance (may repeat). Most texts
    hold no `$`: the check spares them the regex scan, most of this function's cost (bench/decode.py)."""
    if "$" not in text:
        return []
    return [m.group(1).upper() for m in _CASHTAG.finditer(text)]


def normalise_ticker(raw: str) -> str | None:
    """`" $aapl "` -> `"AAPL"`; None when the string does not look like a ticker symbol."""
    symbol = raw.strip().lstrip("$")
    if not symbol.isascii():  # checked before upper(): "ﬁ".upper() is "FI", "ß".upper() is "SS"
        return None
    symbol = symbol.upper()
    return symbol if _TICKER.match(symbol) else None


def merge_tickers(*groups: Iterable[str]) -> tuple[str, ...]:
    """Concatenate already-normalised ticker lists, keeping the first occurrence of each."""
    seen: dict[str, None] = {}
    for group in groups:
        for t in group:
            seen.setdefault(t, None)
    return tuple(seen)


def content_hash(text: str) -> str:
    """Hash of the text ignoring case and whitespace, for spotting the same story posted twice."""
    # split() and the regex `\s+` know the same whitespace (str.isspace); the regex took twice as long
    # (bench/decode.py)
    canonical = " ".join(text.split()).lower()
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def derived_id(source: str, text: str, published_at: str | None) -> str:
    """Id for a message that has none: stable across replays because it depends on content only."""
    material = "\x00".join((source, published_at or "", text))
    return "h-" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]
