"""RSS 2.0 / RSS 1.0 and Atom documents to feed entries (pure; no network).

Parsed with defusedxml so that a hostile feed cannot expand entities or reach out for DTDs; any broken
document raises FeedError with the reason, which the service counts and logs without stopping."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class FeedError(ValueError):
    """The document is not a feed we can read."""


@dataclass(frozen=True)
class FeedEntry:
    """One item of a feed, fields as found (text may still hold HTML)."""

    guid: str | None
    title: str | None
    link: str | None
    summary: str | None
    content: str | None
    published: str | None
    author: str | None
    categories: tuple[tuple[str, str | None], ...] = field(default=())
    lang: str | None = None


@dataclass(frozen=True)
class Feed:
    format: str  # "rss" | "atom" | "rdf"
    title: str | None
    lang: str | None
    entries: tuple[FeedEntry, ...]


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: Element, *names: str) -> str | None:
    """Text of the first child with one of the local names (in order of preference)."""
    for name in names:
        for c in _children(el, name):
            value = "".join(c.itertext()).strip()
            if value:
                return value
    return None


def _lang(value: str | None) -> str | None:
    if not value:
        return None
    primary = value.strip().split("-")[0].split("_")[0].lower()
    return primary if primary.isalpha() and 2 <= len(primary) <= 3 else None


def parse_feed(data: bytes, charset: str | None = None) -> Feed:
    """Parse a feed document; raises FeedError for broken XML or a document that is no feed. `charset`
    (from the HTTP Content-Type) decodes a document that declares no encoding of its own: a Latin-1 feed
    served as `charset=ISO-8859-1` without an XML declaration failed whole as broken UTF-8."""
    if not data.strip():
        raise FeedError("empty document")
    data = _as_declared(data.lstrip(), charset)  # blank lines before `<?xml` made it a broken document
    try:
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except ParseError as e:
        raise FeedError(f"broken XML: {e}") from None
    except DefusedXmlException as e:
        raise FeedError(f"refused XML: {type(e).__name__}") from None
    root_name = _local(root.tag)
    if root_name == "rss":
        channel = next(iter(_children(root, "channel")), None)
        if channel is None:
            raise FeedError("RSS document without <channel>")
        lang = _lang(_text(channel, "language"))
        entries = tuple(_rss_item(i, lang) for i in _children(channel, "item"))
        return Feed("rss", _text(channel, "title"), lang, entries)
    if root_name == "RDF":
        channel = next(iter(_children(root, "channel")), None)
        lang = _lang(_text(channel, "language")) if channel is not None else None
        entries = tuple(_rss_item(i, lang) for i in _children(root, "item"))
        return Feed("rdf", _text(channel, "title") if channel is not None else None, lang, entries)
    if root_name == "feed":
        lang = _lang(root.get(_XML_LANG))
        entries = tuple(_atom_entry(e, lang) for e in _children(root, "entry"))
        return Feed("atom", _text(root, "title"), lang, entries)
    raise FeedError(f"not an RSS or Atom feed (root element <{root_name}>)")


_DECLARED_ENCODING = re.compile(rb"^<\?xml[^>]*\bencoding\s*=", re.IGNORECASE)
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _as_declared(data: bytes, charset: str | None) -> bytes:
    """`data` in UTF-8 when the HTTP charset names another encoding and the document names none (no
    byte-order mark, no encoding in its XML declaration); otherwise as it is."""
    if not charset or data.startswith(_BOMS) or _DECLARED_ENCODING.match(data):
        return data
    try:
        codec = codecs.lookup(charset.strip().strip('"'))
    except LookupError:
        return data  # an unknown charset: the parser's default (UTF-8) decides
    if codec.name == "utf-8":
        return data
    return data.decode(codec.name, errors="replace").encode("utf-8")


def _rss_item(item: Element, lang: str | None) -> FeedEntry:
    cats = tuple(
        (t, c.get("domain")) for c in _children(item, "category") if (t := "".join(c.itertext()).strip())
    ) + tuple((t, None) for c in _children(item, "subject") if (t := "".join(c.itertext()).strip()))
    link = _text(item, "link")
    guid_el = next(iter(_children(item, "guid")), None)
    guid = "".join(guid_el.itertext()).strip() if guid_el is not None else None
    if not guid:
        guid = item.get("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}about")
    return FeedEntry(
        guid=guid or None,
        title=_text(item, "title"),
        link=link,
        summary=_text(item, "description"),
        content=_text(item, "encoded"),
        published=_text(item, "pubDate", "date", "published", "updated"),
        author=_text(item, "creator", "author"),
        categories=cats,
        lang=_lang(_text(item, "language")) or lang,
    )


def _atom_link(entry: Element) -> str | None:
    """The rel=alternate link (the default rel), else the first link with an href."""
    links = [link for link in _children(entry, "link") if link.get("href")]
    for link in links:
        if link.get("rel", "alternate") == "alternate":
            return link.get("href")
    return links[0].get("href") if links else None


def _atom_entry(entry: Element, lang: str | None) -> FeedEntry:
    author = None
    for a in _children(entry, "author"):
        author = _text(a, "name", "email")
        if author:
            break
    cats = tuple(
        (c.get("term") or c.get("label") or "", c.get("scheme"))
        for c in _children(entry, "category")
        if c.get("term") or c.get("label")
    )
    return FeedEntry(
        guid=_text(entry, "id"),
        title=_text(entry, "title"),
        link=_atom_link(entry),
        summary=_text(entry, "summary"),
        content=_text(entry, "content"),
        published=_text(entry, "published", "updated", "issued", "modified"),
        author=author,
        categories=cats,
        lang=_lang(entry.get(_XML_LANG)) or lang,
    )
