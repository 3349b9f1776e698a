"""One fetch of a source: bytes from the network or a file turned into contract messages.

A fetcher returns the messages it found, the items it could not use (with where and why), and the
checkpoint changes to apply once those messages are safely published."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from ingest.sources import tailing
from ingest.sources.checkpoint import Checkpoint, FileOffset
from ingest.sources.config import (
    FeedSource,
    FilesSource,
    HttpJsonSource,
    HttpSourceBase,
    SourceConfig,
    StdinSource,
)
from ingest.sources.feeds import FeedError, parse_feed
from ingest.sources.http import FetchError, HttpClient, HttpResponse, RetryPolicy
from ingest.sources.links import LinkCleaner, link_cleaner
from ingest.sources.normalize import (
    InvalidItem,
    ItemOptions,
    extract,
    from_feed_entry,
    from_record,
    from_text_line,
    reused_guids,
)
from ingest.sources.ratelimit import TokenBucket

log = logging.getLogger(__name__)

Known = Callable[[Mapping[str, Any]], bool]

_XMLISH = ("xml", "rss", "atom", "text/plain", "octet-stream")


@dataclass
class Fetched:
    """What one fetch produced."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[tuple[str, InvalidItem]] = field(default_factory=list)
    items: int = 0  # items seen, valid or not
    changes: dict[str, Any] = field(default_factory=dict)
    not_modified: bool = False
    partial_error: FetchError | None = None  # later pages failed; earlier pages are still published


def item_options(source: SourceConfig) -> ItemOptions:
    return ItemOptions(
        source=source.name,
        lang=source.lang,
        tickers=source.tickers,
        max_item_bytes=source.max_item_bytes,
        ticker_categories=source.ticker_categories if isinstance(source, FeedSource) else "none",
        dates_zone=ZoneInfo(source.dates_timezone),
        clean_url=source_link_cleaner(source) if isinstance(source, HttpSourceBase) else None,
    )


def source_link_cleaner(source: HttpSourceBase) -> LinkCleaner:
    """What cleans the links of `source`'s items of the values it sends (see ingest.sources.links)."""
    return link_cleaner(
        source.url,
        {k: v.get_secret_value() for k, v in source.params.items()},
        {k: v.get_secret_value() for k, v in source.headers.items()},
    )


class HttpSourceClient:
    """Per-source HTTP settings (secrets, retries, rate limit) over the shared client."""

    def __init__(self, source: HttpSourceBase, client: HttpClient) -> None:
        self.source = source
        self.client = client
        self.limiter = (
            TokenBucket(source.rate_limit.requests, source.rate_limit.per_s) if source.rate_limit else None
        )
        self.policy = RetryPolicy(source.retries, source.backoff_s, source.max_backoff_s)

    def get(self, extra_params: Mapping[str, str], checkpoint: Checkpoint | None) -> HttpResponse:
        s = self.source
        use_validators = s.conditional and checkpoint is not None
        return self.client.get(
            s.url,
            headers={k: v.get_secret_value() for k, v in s.headers.items()},
            params={**{k: v.get_secret_value() for k, v in s.params.items()}, **extra_params},
            timeout_s=s.timeout_s,
            max_bytes=s.max_response_bytes,
            policy=self.policy,
            limiter=self.limiter,
            etag=checkpoint.etag if use_validators and checkpoint else None,
            last_modified=checkpoint.last_modified if use_validators and checkpoint else None,
        )


def fetch_feed(source: FeedSource, http: HttpSourceClient, checkpoint: Checkpoint, known: Known) -> Fetched:
    resp = http.get({}, checkpoint)
    if resp.not_modified:
        return Fetched(not_modified=True)
    try:
        feed = parse_feed(resp.body, resp.charset, base_url=resp.url)
    except FeedError as e:
        if resp.content_type and not any(x in resp.content_type for x in _XMLISH):
            raise FetchError("content_type", f"expected a feed, got {resp.content_type} ({e})") from None
        raise FetchError("parse", str(e)) from None
    out = Fetched(items=len(feed.entries), changes={"etag": resp.etag, "last_modified": resp.last_modified})
    opts = item_options(source)
    reused = reused_guids(feed.entries)
    if reused:
        log.warning(
            "%s: %d GUID(s) shared by different entries (e.g. %r): their ids come from link or content",
            source.name,
            len(reused),
            (opts.own_id(sorted(reused)[0]) or "")[:80],
        )
    for i, entry in enumerate(feed.entries):
        try:
            out.messages.append(from_feed_entry(entry, opts, guid_reused=entry.guid in reused))
        except InvalidItem as e:
            out.invalid.append(
                (f"entry {i} ({opts.own_id(entry.guid) or opts.link(entry.link) or 'no id'})", e)
            )
    return out


def _json_body(resp: HttpResponse) -> Any:
    try:
        return json.loads(resp.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        if resp.content_type and "json" not in resp.content_type:
            raise FetchError("content_type", f"expected JSON, got {resp.content_type}") from None
        raise FetchError("parse", f"invalid JSON: {e}") from None


def fetch_http_json(
    source: HttpJsonSource, http: HttpSourceClient, checkpoint: Checkpoint, known: Known
) -> Fetched:
    """Pages until the last page, `max_pages`, or a page holding only items already published."""
    pg = source.pagination
    out = Fetched()
    opts = item_options(source)
    base: dict[str, str] = {}
    if source.since_param and checkpoint.last_published_at:
        base[source.since_param] = checkpoint.last_published_at
    cursor = checkpoint.cursor if pg.type == "cursor" and pg.resume else None
    page = pg.first_page
    catching_up = checkpoint.paging_incomplete  # the pages after a known one are still owed
    for n in range(pg.max_pages):
        params = dict(base)
        if pg.type == "cursor" and cursor:
            params[pg.cursor_param] = cursor
        elif pg.type == "page":
            params[pg.page_param] = str(page)
        try:
            resp = http.get(params, checkpoint if n == 0 and not catching_up else None)
        except FetchError as e:
            if n == 0:
                raise
            out.partial_error = e
            # page 1's validators would answer 304 next time, and its items are known: both ended the
            # next run before the failed page, which was then never fetched
            out.changes.update(etag=None, last_modified=None, paging_incomplete=True)
            break
        if resp.not_modified:
            out.not_modified = n == 0
            break
        data = _json_body(resp)
        if n == 0:
            out.changes.update(etag=resp.etag, last_modified=resp.last_modified)
        records = extract(source.records, data)
        if records is None:
            records = []
        if not isinstance(records, list):
            raise FetchError(
                "parse", f"`records` ({source.records}) gave a {type(records).__name__}, not a list"
            )
        out.items += len(records)
        page_msgs = []
        for i, rec in enumerate(records):
            try:
                page_msgs.append(from_record(rec, source.fields, opts))
            except InvalidItem as e:
                out.invalid.append((f"page {n + 1} record {i}", e))
        out.messages.extend(page_msgs)
        if not records or (not catching_up and page_msgs and all(known(m) for m in page_msgs)):
            break
        if pg.type == "cursor":
            next_cursor = extract(pg.cursor_path or "", data)
            if next_cursor in (None, ""):
                break
            cursor = str(next_cursor)
            if pg.resume:
                out.changes["cursor"] = cursor
        elif pg.type == "page":
            page += 1
        else:
            break
    if out.partial_error is None:
        out.changes["paging_incomplete"] = False
    return out


def fetch_files(
    source: FilesSource, checkpoint: Checkpoint, known: Known, now: float | None = None
) -> Fetched:
    """New complete lines of every file, within a per-fetch byte budget, oldest file first."""
    out = Fetched()
    opts = item_options(source)
    files: dict[str, FileOffset] = {}
    budget = source.max_bytes_per_fetch
    if not source.path.exists():  # a mistyped path must fail the run (and alert), not succeed empty
        raise FetchError("not_found", f"{source.path} does not exist")
    for path in tailing.list_files(source.path, source.pattern):
        key = str(path.resolve())
        previous = checkpoint.files.get(key)
        try:
            offset, st = tailing.start_offset(path, previous)
            fmt = tailing.file_format(path, source.format)
            header: list[str] = []
            if fmt == "csv":
                header, header_end = tailing.csv_header(path, source.csv_delimiter)
                if not header:
                    files[key] = tailing.file_offset(path, 0, st)
                    continue
                offset = max(offset, header_end)
            if budget <= 0 or offset >= st.st_size:
                files[key] = tailing.file_offset(path, offset, st)
                continue
            # A line longer than the whole budget is skipped; one that only overflows what is left of it
            # waits for the next fetch.
            may_skip = budget == source.max_bytes_per_fetch
            lines, next_offset = tailing.read_lines(path, offset, budget, now, may_skip=may_skip)
        except OSError as e:
            out.invalid.append((f"{path}", InvalidItem("unreadable", str(e))))
            if previous is not None:
                files[key] = previous
            continue
        budget -= next_offset - offset
        files[key] = tailing.file_offset(path, next_offset, st)
        for line in tailing.iter_nonblank(lines):
            out.items += 1
            where = f"{path.name}@{line.start}"
            try:
                if len(line.data) > source.max_item_bytes * 4:
                    raise InvalidItem("oversized", f"line of {len(line.data)} bytes")
                if fmt == "csv":
                    record: Any = tailing.parse_csv_row(line.data, header, source.csv_delimiter)
                else:
                    record = tailing.parse_jsonl(line.data)
                out.messages.append(from_record(record, source.fields, opts))
            except InvalidItem as e:
                out.invalid.append((where, e))
            except (UnicodeDecodeError, ValueError, RecursionError, csv.Error) as e:
                out.invalid.append((where, InvalidItem(_line_error_code(e), str(e)[:200])))
    out.changes["files"] = files
    return out


def _line_error_code(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return "invalid_utf8"
    if isinstance(e, csv.Error):
        return "schema"
    return "invalid_json"  # ValueError from json, RecursionError from JSON nested thousands deep


def decode_stdin_line(raw: bytes) -> str:
    """A stdin line's text; raises InvalidItem for bytes that are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidItem("invalid_utf8", str(e)[:200]) from None


def parse_stdin_line(source: StdinSource, line: str) -> dict[str, Any]:
    """One stdin line as a message; raises InvalidItem."""
    opts = item_options(source)
    if source.format == "text":
        return from_text_line(line, opts)
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise InvalidItem("invalid_json", str(e)[:200]) from None
    return from_record(record, source.fields, opts)


def fetches_over_http(source: SourceConfig) -> bool:
    """Whether `make_fetcher` needs an HTTP client for `source` (file sources read the disk)."""
    return isinstance(source, FeedSource | HttpJsonSource)


def make_fetcher(source: SourceConfig, client: HttpClient | None) -> Callable[[Checkpoint, Known], Fetched]:
    """The fetch function of a scheduled source (stdin sources are not scheduled); `client` is needed
    when `fetches_over_http(source)`."""
    if isinstance(source, FilesSource):
        return lambda cp, known: fetch_files(source, cp, known)
    if isinstance(source, FeedSource | HttpJsonSource):
        if client is None:
            raise ValueError(f"source {source.name} fetches over HTTP: it needs a client")
        http = HttpSourceClient(source, client)
        if isinstance(source, FeedSource):
            return lambda cp, known: fetch_feed(source, http, cp, known)
        return lambda cp, known: fetch_http_json(source, http, cp, known)
    raise TypeError(f"source {source.name} of kind {source.kind} is not fetched on a schedule")
