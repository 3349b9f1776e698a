"""RSS 2.0 / RSS 1.0 and Atom documents to feed entries (pure; no network).

Parsed with defusedxml so that a hostile feed cannot expand entities or reach out for DTDs, and with no
internal DTD subset at all (an <!ATTLIST> default copied into every element grew a 0.1 MB feed into hundreds
of megabytes); any broken document raises FeedError with the reason, which the service counts and logs
without stopping."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException, DTDForbidden
from defusedxml.ElementTree import DefusedXMLParser

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


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


def parse_feed(data: bytes, charset: str | None = None, base_url: str | None = None) -> Feed:
    """Parse a feed document; raises FeedError for broken XML or a document that is no feed. `charset`
    (from the HTTP Content-Type) decodes a document that declares no encoding of its own: a Latin-1 feed
    served as `charset=ISO-8859-1` without an XML declaration failed whole as broken UTF-8. Relative links
    are resolved against xml:base and then `base_url` (where the document came from) less its user info
    and query."""
    if not data.strip():
        raise FeedError("empty document")
    data = _as_declared(data.lstrip(), charset)  # blank lines before `<?xml` made it a broken document
    root = _parse_xml(data)
    base = _based(_link_base(base_url), root)
    root_name = _local(root.tag)
    if root_name == "rss":
        channel = next(iter(_children(root, "channel")), None)
        if channel is None:
            raise FeedError("RSS document without <channel>")
        lang = _lang(_text(channel, "language"))
        base = _based(base, channel)
        entries = tuple(_rss_item(i, lang, base) for i in _children(channel, "item"))
        return Feed("rss", _text(channel, "title"), lang, entries)
    if root_name == "RDF":
        channel = next(iter(_children(root, "channel")), None)
        lang = _lang(_text(channel, "language")) if channel is not None else None
        entries = tuple(_rss_item(i, lang, base) for i in _children(root, "item"))
        return Feed("rdf", _text(channel, "title") if channel is not None else None, lang, entries)
    if root_name == "feed":
        lang = _lang(root.get(_XML_LANG))
        entries = tuple(_atom_entry(e, lang, base) for e in _children(root, "entry"))
        return Feed("atom", _text(root, "title"), lang, entries)
    raise FeedError(f"not an RSS or Atom feed (root element <{root_name}>)")


def _refuse_internal_subset(
    name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool
) -> None:
    """A DOCTYPE may name a public DTD (RSS 0.91 does; it is never fetched), but an internal subset is
    refused before any of it is read: an <!ATTLIST> default is copied into every matching element."""
    if has_internal_subset:
        raise DTDForbidden(name, sysid, pubid)


def _parse_xml(data: bytes) -> Element:
    """The document's root; FeedError for broken or refused XML. ValueError and LookupError come from
    encodings expat cannot read (it takes no multi-byte encoding but UTF-8/16 itself)."""
    parser = DefusedXMLParser(
        target=TreeBuilder(), forbid_dtd=False, forbid_entities=True, forbid_external=True
    )
    parser.parser.StartDoctypeDeclHandler = _refuse_internal_subset
    try:
        parser.feed(data)
        return parser.close()
    except ParseError as e:
        raise FeedError(f"broken XML: {e}") from None
    except DefusedXmlException as e:
        raise FeedError(f"refused XML: {type(e).__name__}") from None
    except (ValueError, LookupError) as e:
        raise FeedError(f"unreadable encoding: {e}") from None


_DECLARATION = re.compile(rb"^<\?xml[^>]*?>", re.IGNORECASE)
_ENCODING_ATTR = re.compile(rb"""\bencoding\s*=\s*(["'])([^"']*)\1""", re.IGNORECASE)
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# The names expat reads itself (in any case). It reads no other spelling of them: `UTF8` went to pyexpat,
# which takes only single-byte codecs by other names, and the feed failed as broken XML.
_EXPAT_NAMES = frozenset({"UTF-8", "UTF-16", "UTF-16BE", "UTF-16LE", "ISO-8859-1", "US-ASCII"})


def _text_codec(name: str) -> codecs.CodecInfo | None:
    """Python's codec for an encoding name, if it is a text encoding (not rot13, hex or base64)."""
    try:
        codec = codecs.lookup(name.strip().strip("\"'"))
    except LookupError:
        return None
    return codec if codec._is_text_encoding else None


def _as_declared(data: bytes, charset: str | None) -> bytes:
    """`data` in UTF-8 (its declaration saying so) when it is in an encoding not named as expat names it:
    one declared by its XML declaration, or else by the HTTP charset; otherwise as it is. A document with
    a byte-order mark is left to the parser."""
    if data.startswith(_BOMS):
        return data
    declaration = _DECLARATION.match(data)
    declared = _ENCODING_ATTR.search(declaration.group()) if declaration else None
    if declaration and declared:
        name = declared.group(2).decode("ascii", errors="replace")
        codec = _text_codec(name)
        if codec is None:
            raise FeedError(f"unknown encoding {declared.group(2)[:40]!r} declared")
        if name.upper() in _EXPAT_NAMES:
            return data
        start, end = declared.span(2)
        rest = data[declaration.end() :].decode(codec.name, errors="replace").encode("utf-8")
        return declaration.group()[:start] + b"utf-8" + declaration.group()[end:] + rest
    codec = _text_codec(charset) if charset else None
    if codec is None or codec.name == "utf-8":
        return data  # none, or an unknown one: the parser's default (UTF-8) decides
    return data.decode(codec.name, errors="replace").encode("utf-8")


def _based(base: str | None, el: Element) -> str | None:
    """The base URL inside `el`: its xml:base resolved against the base outside it."""
    own = el.get(_XML_BASE)
    if not own:
        return base
    return urljoin(base, own.strip()) if base else own.strip()


def _link_base(url: str | None) -> str | None:
    """`url` without user info, query or fragment, to resolve links against: `/news/1` or `#q3` resolved
    against `https://user:pw@host/feed?apikey=KEY` published the password or the key in the item's url and
    id. Only a fragment or an empty link would have kept the query. None for a URL that does not parse."""
    if not url:
        return url
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an invalid IPv6 literal and the like
        return None
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _resolved(link: str | None, base: str | None) -> str | None:
    """`link` made absolute against `base` when it is relative and the base is an http(s) URL: a feed's
    `/story/1` was published as it was, and collided with every other feed's `/story/1`."""
    if not link or not base:
        return link
    try:
        if urlsplit(link.strip()).scheme or urlsplit(base).scheme.lower() not in ("http", "https"):
            return link
        return urljoin(base, link.strip())
    except ValueError:  # an invalid IPv6 literal and the like
        return link


def _rss_item(item: Element, lang: str | None, base: str | None = None) -> FeedEntry:
    cats = tuple(
        (t, c.get("domain")) for c in _children(item, "category") if (t := "".join(c.itertext()).strip())
    ) + tuple((t, None) for c in _children(item, "subject") if (t := "".join(c.itertext()).strip()))
    base = _based(base, item)
    link_el = next((c for c in _children(item, "link") if "".join(c.itertext()).strip()), None)
    link = _resolved(_text(item, "link"), _based(base, link_el) if link_el is not None else base)
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


def _atom_link(entry: Element, base: str | None = None) -> str | None:
    """The rel=alternate link (the default rel), else the first link with an href; made absolute."""
    links = [link for link in _children(entry, "link") if link.get("href")]
    chosen = next((link for link in links if link.get("rel", "alternate") == "alternate"), None)
    if chosen is None and links:
        chosen = links[0]
    return _resolved(chosen.get("href"), _based(base, chosen)) if chosen is not None else None


def _atom_entry(entry: Element, lang: str | None, base: str | None = None) -> FeedEntry:
    base = _based(base, entry)
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
        link=_atom_link(entry, base),
        summary=_text(entry, "summary"),
        content=_text(entry, "content"),
        published=_text(entry, "published", "updated", "issued", "modified"),
        author=author,
        categories=cats,
        lang=_lang(entry.get(_XML_LANG)) or lang,
    )
