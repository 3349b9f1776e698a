"""Feed entries, API records and file rows to finsent's raw message contract (pure).

A message is a plain dict with `id`, `source`, `title` + `body` or `text`, and where known `url`,
`published_at` (RFC 3339 UTC), `tickers`, `lang`, `author` (docs/CONTRACTS.md). Anything that cannot
become a message raises InvalidItem with a bounded reason, so that the caller counts and logs it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jmespath

from ingest.decode import (
    MAX_ID_BYTES,
    MAX_YEAR,
    MIN_YEAR,
    DecodeLimits,
    Invalid,
    check_one_line,
    url_problem,
)
from ingest.sources.config import FieldMap
from ingest.sources.dedup import ID_KEY_PREFIX
from ingest.sources.feeds import FeedEntry
from ingest.sources.links import LinkCleaner
from ingest.sources.text import clean_text, detect_language, split_tickers, tickers_from_categories, unique
from ingest.sources.timeparse import format_time, parse_time

# How far ahead of now the pipeline's decoder takes a publication time (finsent.runner.decode_limits).
MAX_AHEAD = timedelta(days=1)
# How many tickers the decoder takes in a message's `tickers` field: it dead-letters a message naming more
# (a sector or basket story), so an item keeps its first MAX_TICKERS and the rest are left out.
MAX_TICKERS = DecodeLimits().max_tickers
_TRACKING_PARAMS = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")

log = logging.getLogger(__name__)


class InvalidItem(ValueError):
    """An item that cannot become a message; `reason` is a bounded code (empty_text, oversized, schema)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ItemOptions:
    """Per-source normalisation knobs."""

    source: str
    lang: str | None = None
    tickers: tuple[str, ...] = ()
    max_item_bytes: int = 100_000
    ticker_categories: str = "prefixed"
    # The zone of dates the source writes without one (`dates_timezone`).
    dates_zone: tzinfo = UTC
    # An item's link as published: without what the source sent to get it (ingest.sources.links); it
    # also masks those values in the item's own id and texts.
    clean_url: LinkCleaner | None = field(default=None, repr=False, compare=False)

    def link(self, url: str | None) -> str | None:
        return self.clean_url(url) if url and self.clean_url is not None else url

    def masked(self, text: str) -> str:
        """`text` with the secret values the source sends replaced by `***` (LinkCleaner.mask)."""
        return self.clean_url.mask(text) if text and self.clean_url is not None else text

    def own_id(self, value: str | None) -> str | None:
        """An item's own id (GUID, Atom id, mapped `id`) as it may be published: cleaned as a link is
        (a GUID is often the link, with the feed's `?apikey=` in it), then any secret value the source
        sends still in it (in a path, in an id that is no URL) masked. The same at every fetch, so it
        stays a stable dedup key; and it does not change when the key is rotated."""
        if not value:
            return value
        return self.masked(self.link(value) or value)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def message_id(source: str, native_id: str | None, url: str | None, content: str) -> str:
    """Stable id: the source's own id when it has one, else a hash of the URL or the content. A native id
    the decoder would refuse (over MAX_ID_BYTES as `source:id`, or not one clean line) is hashed: it was
    published, dead-lettered downstream and remembered as published, so never sent again."""
    if native_id:
        whole = f"{source}:{native_id}"
        return whole if _decodable_id(whole) else f"{source}:{_sha(native_id)[:32]}"
    basis = canonical_url(url) if url else content
    return f"{source}:{_sha(basis)[:32]}"


def _decodable_id(value: str) -> bool:
    """Whether the pipeline's decoder takes `value` as a message id (ingest.decode)."""
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        return False
    try:
        check_one_line("id", value)
    except Invalid:
        return False
    return True


def publishable_time(when: datetime | None, now: datetime) -> datetime | None:
    """`when` if the decoder takes it as published_at, else None (left out, like an unparsable date): a
    time over MAX_AHEAD ahead or outside MIN_YEAR-MAX_YEAR was dead-lettered, yet counted as published."""
    if when is None or not MIN_YEAR <= when.year <= MAX_YEAR or when - now > MAX_AHEAD:
        return None
    return when


def canonical_url(url: str) -> str:
    """The URL used for dedup: lower-case scheme and host, no fragment, no tracking parameters."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.startswith(_TRACKING_PARAMS)
    ]
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, urlencode(query), ""))


def content_hash(message: Mapping[str, Any]) -> str:
    """Hash of the normalised text, the same whichever source carried it."""
    text = " ".join(str(message.get(k) or "") for k in ("title", "body", "text"))
    return _sha(" ".join(text.lower().split()))


def dedup_keys(message: Mapping[str, Any]) -> tuple[str, ...]:
    """Keys under which a message is remembered: its id, its URL and its content."""
    keys = [f"{ID_KEY_PREFIX}{message['id']}"]
    if message.get("url") and _absolute(str(message["url"])):  # `/story/1` of one feed is not another's
        keys.append(f"url:{_sha(canonical_url(str(message['url'])))[:32]}")
    keys.append(f"content:{content_hash(message)[:32]}")
    return tuple(keys)


def _absolute(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc)


def _as_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InvalidItem("schema", f"field {field} must be a string, got {type(value).__name__}")


def _finish(
    opts: ItemOptions,
    *,
    native_id: str | None,
    title: str,
    body: str,
    text: str,
    url: str | None,
    published: Any,
    tickers: list[str],
    author: str | None,
    lang: str | None,
) -> dict[str, Any]:
    # the source's secret values go before anything is derived from the texts (hash, language, cut)
    title, body, text = opts.masked(title), opts.masked(body), opts.masked(text)
    if not (title or body or text):
        raise InvalidItem("empty_text", "no title, body or text")
    native_id = opts.own_id(native_id)
    author = opts.masked(author) if author else author
    content = "\n".join(p for p in (title, body, text) if p)
    url = opts.link(url)
    msg: dict[str, Any] = {"id": message_id(opts.source, native_id, url, content), "source": opts.source}
    if title or body:
        msg["title"] = title
        msg["body"] = body if body else text
    else:
        msg["text"] = text
    if url:
        problem = url_problem(url.strip())
        if problem is not None:  # the labeler would dead-letter the message for it
            raise InvalidItem("schema", f"url {problem}")
        msg["url"] = url.strip()
    when = publishable_time(parse_time(published, opts.dates_zone), datetime.now(UTC))
    if when is not None:
        msg["published_at"] = format_time(when)
    all_tickers = unique([*split_tickers(list(opts.tickers)), *tickers])
    if len(all_tickers) > MAX_TICKERS:
        log.debug(
            "source %s: item %s names %d tickers, published with the first %d (the pipeline's limit)",
            opts.source,
            msg["id"],
            len(all_tickers),
            MAX_TICKERS,
        )
        all_tickers = all_tickers[:MAX_TICKERS]
    if all_tickers:
        msg["tickers"] = all_tickers
    if author:
        msg["author"] = author.strip()
    chosen = opts.lang or lang or detect_language(content)
    if chosen:
        msg["lang"] = chosen.lower()
    return fit_size(msg, opts.max_item_bytes)


def encoded_size(message: Mapping[str, Any]) -> int:
    return len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def fit_size(message: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Truncate the body/text so the encoded message fits; InvalidItem(oversized) if it cannot, or if
    nothing would be left of the text. The room is measured in encoded bytes, so text that JSON
    escaping inflates (quotes, backslashes, control characters) is cut no more than needed."""
    if encoded_size(message) <= max_bytes:
        return message
    field = max(("body", "text"), key=lambda k: len(str(message.get(k) or "")))
    value = str(message.get(field) or "")
    if value:
        room = max_bytes - encoded_size({**message, field: ""})
        keep = _longest_prefix_within(value, room - len("…".encode()))
        cut = value[:keep].rstrip()
        message[field] = cut + "…" if cut else ""
    size = encoded_size(message)
    if size > max_bytes:
        raise InvalidItem("oversized", f"{size} bytes > max_item_bytes {max_bytes}")
    if not any(message.get(k) for k in ("title", "body", "text")):
        raise InvalidItem("oversized", f"no room for any text within max_item_bytes {max_bytes}")
    return message


def _longest_prefix_within(value: str, room: int) -> int:
    """How many leading characters of `value` fit in `room` bytes once JSON-escaped (binary search)."""

    def cost(n: int) -> int:
        return len(json.dumps(value[:n], ensure_ascii=False).encode("utf-8")) - 2  # without the quotes

    lo, hi = 0, len(value)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def reused_guids(entries: Sequence[FeedEntry]) -> frozenset[str]:
    """GUIDs that one document gives to entries differing in link or text: under the shared id only the
    first was ever published, and every later one dropped as a duplicate of it."""
    seen: dict[str, set[tuple[str | None, ...]]] = {}
    for e in entries:
        if e.guid:
            seen.setdefault(e.guid, set()).add((e.link, e.title, e.summary, e.content))
    return frozenset(guid for guid, variants in seen.items() if len(variants) > 1)


def from_feed_entry(entry: FeedEntry, opts: ItemOptions, *, guid_reused: bool = False) -> dict[str, Any]:
    """A feed entry as a message; categories give ticker hints per `opts.ticker_categories`. An entry
    whose GUID the feed reuses (`reused_guids`) takes its id from its link or content instead."""
    title = clean_text(entry.title)
    body = clean_text(entry.content) or clean_text(entry.summary)
    if body == title:
        body = ""
    return _finish(
        opts,
        native_id=None if guid_reused else entry.guid or entry.link,
        title=title,
        body=body,
        text="",
        url=entry.link,
        published=entry.published,
        tickers=tickers_from_categories(entry.categories, opts.ticker_categories),
        author=clean_text(entry.author) or None,
        lang=entry.lang,
    )


@lru_cache(maxsize=512)
def _compiled(expr: str) -> Any:
    return jmespath.compile(expr)


def extract(expr: str, data: Any) -> Any:
    """The value at a JMESPath expression (None when absent)."""
    return _compiled(expr).search(data)


def from_record(record: Mapping[str, Any], fields: FieldMap, opts: ItemOptions) -> dict[str, Any]:
    """An API record, JSON line or CSV row as a message, fields found through `fields`."""
    if not isinstance(record, Mapping):
        raise InvalidItem("not_object", f"record is a {type(record).__name__}, not an object")

    def get(name: str) -> Any:
        expr = getattr(fields, name)
        return None if expr is None else extract(expr, record)

    text_fields = {name: clean_text(_as_text(get(name), name)) for name in ("title", "body", "text")}
    url = _as_text(get("url"), "url")
    native = _as_text(get("id"), "id")
    author = _as_text(get("author"), "author")
    lang = _as_text(get("lang"), "lang")
    return _finish(
        opts,
        native_id=_native_id(native),
        title=text_fields["title"],
        body=text_fields["body"],
        text=text_fields["text"],
        url=url or None,
        published=get("published_at"),
        tickers=split_tickers(get("tickers")),
        author=author or None,
        lang=(lang or "").strip() or None,
    )


def _native_id(native: str | None) -> str | None:
    """A record's own id, stripped (cleaned of the source's secrets in `_finish`, like a GUID)."""
    return native.strip() if native else None


def from_text_line(line: str, opts: ItemOptions) -> dict[str, Any]:
    """A plain text line (stdin `format: text`) as a message."""
    return _finish(
        opts,
        native_id=None,
        title="",
        body="",
        text=clean_text(line),
        url=None,
        published=None,
        tickers=[],
        author=None,
        lang=None,
    )
