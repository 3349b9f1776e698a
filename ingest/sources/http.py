"""The thin HTTP adapter of sources: one GET with timeouts, retries with backoff (honouring Retry-After),
conditional requests, a response size cap and a per-source rate limit. Everything else is pure."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpcore
import httpx

from ingest.secret_names import filter_query
from ingest.sources import addresses, connect
from ingest.sources.ratelimit import TokenBucket

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# A whole fetch, headers to last byte, may take this many times the per-read timeout.
FETCH_DEADLINE_FACTOR = 3

# One fetch's answers, host to addresses: the guard's lookups, replaced by each connection's own.
_Known = dict[str, Sequence[addresses.IPAddress]]


class FetchError(Exception):
    """A fetch failed; `kind` is a bounded code used as the metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    url: str
    content_type: str  # the media type alone, lower case
    etag: str | None
    last_modified: str | None
    charset: str | None = None  # the Content-Type's charset parameter, if any

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def usable_validator(value: str | None) -> str | None:
    """An ETag or Last-Modified worth keeping: printable ASCII only. A non-ASCII one, saved in the
    checkpoint, could not be sent back (httpx encodes header values as ASCII), and stopped the source."""
    if value and value.isascii() and value.isprintable():
        return value
    return None


def conditional_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    """If-None-Match / If-Modified-Since for the validators that can be sent (see `usable_validator`)."""
    out: dict[str, str] = {}
    if usable_validator(etag):
        out["If-None-Match"] = str(etag)
    if usable_validator(last_modified):
        out["If-Modified-Since"] = str(last_modified)
    return out


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True too
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_delay(attempt: int, policy: RetryPolicy, retry_after: float | None) -> float:
    """Delay before retry number `attempt` (1-based): Retry-After if given, else exponential; capped."""
    base = retry_after if retry_after is not None else policy.backoff_s * (2 ** (attempt - 1))
    return min(base, policy.max_backoff_s)


def quiet_http_logging() -> None:
    """httpx logs every request URL at INFO, and URLs carry secrets (API keys in query strings, webhook
    tokens in paths): keep its warnings only, at `--log-level DEBUG` too (a debug log is still a log that
    gets shared; finsent's own lines name sources and channels, not their URLs)."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


class HttpClient:
    """GETs for sources over one pooled httpx client. `sleep` is where back-off and rate-limit waits
    happen; the service passes its stop event's `wait`, so a truthy return ends the fetch at once."""

    def __init__(
        self,
        *,
        user_agent: str,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        resolve: addresses.Resolver = addresses.system_resolve,
        network: httpcore.NetworkBackend | None = None,
    ) -> None:
        """`resolve` answers every lookup, the guard's and the connections' (see `_pin`); `network` opens
        the connections to the addresses it gave (tests stand a public address in for a local server).
        A `transport` of the caller's own is used as it is: where it connects is its business."""
        quiet_http_logging()
        # Redirects are followed here, not by httpx (see `_once`); only encodings decoded with a bound.
        self._client = httpx.Client(
            follow_redirects=False,
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"},
            transport=transport,
        )
        if transport is None:
            connect.install(self._client, connect.PinnedBackend(network))
        self._sleep = sleep
        self._clock = clock
        self._resolve = resolve

    def close(self) -> None:
        self._client.close()

    def _proxied(self, url: httpx.URL) -> bool:
        return uses_proxy(self._client, url)

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str],
        timeout_s: float,
        max_bytes: int,
        policy: RetryPolicy,
        limiter: TokenBucket | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> HttpResponse:
        """One GET with retries; raises FetchError(kind) after the last attempt fails."""
        validators = conditional_headers(etag, last_modified)
        attempt = 0
        while True:
            if limiter is not None:
                wait = limiter.reserve(self._clock())
                if wait > 0 and self._sleep(wait):
                    raise FetchError("cancelled", "the service is stopping")
            retry_after: float | None = None
            try:
                return self._once(url, headers, validators, params, timeout_s, max_bytes)
            except _Retryable as e:
                error, retry_after = e.error, e.retry_after
            except httpx.TimeoutException as e:
                error = FetchError("timeout", _timeout_text(e, url, timeout_s))
            except httpx.TransportError as e:
                error = FetchError("connect", f"{type(e).__name__}: {e}")
            except httpx.InvalidURL as e:
                raise FetchError("connect", f"invalid URL: {e}") from None
            attempt += 1
            if attempt > policy.retries:
                raise error
            delay = retry_delay(attempt, policy, retry_after)
            log.info(
                "%s: %s; retry %d/%d in %.1fs", without_query(url), error, attempt, policy.retries, delay
            )
            if self._sleep(delay):  # an Event.wait that returns True: the service is stopping
                raise FetchError("cancelled", f"the service is stopping ({error})")

    def _once(
        self,
        url: str,
        headers: Mapping[str, str],
        validators: Mapping[str, str],
        params: Mapping[str, str],
        timeout_s: float,
        max_bytes: int,
    ) -> HttpResponse:
        """One request, following up to MAX_REDIRECTS redirects: never to another scheme than http(s),
        never from https down to http, never to a non-public address from a public source (see
        `_check_destination`), and without the source's headers and parameters (which may hold
        keys) once the redirect leaves the origin; the conditional `validators` (which name the final
        resource, not the origin) go with every hop. The whole fetch, body included, is bounded in time
        (FETCH_DEADLINE_FACTOR x timeout_s: a server can drip a byte per read for ever) and in size after
        decoding (a compressed body can expand a thousandfold). Every direct connection goes to an
        address checked when it is made (`_pin`)."""
        deadline = time.monotonic() + FETCH_DEADLINE_FACTOR * timeout_s
        configured = httpx.URL(url)
        known: _Known = {}
        resolve = self._resolver(deadline, known)
        with connect.pinned(self._pin(configured, resolve, known, deadline), deadline):
            return self._follow(
                configured, headers, validators, params, timeout_s, max_bytes, deadline, resolve
            )

    def _follow(
        self,
        configured: httpx.URL,
        headers: Mapping[str, str],
        validators: Mapping[str, str],
        params: Mapping[str, str],
        timeout_s: float,
        max_bytes: int,
        deadline: float,
        resolve: addresses.Resolver,
    ) -> HttpResponse:
        request_url = request_target(configured, params, headers)
        origin = _origin(request_url)
        send_headers: Mapping[str, str] = headers
        for _ in range(MAX_REDIRECTS + 1):
            request = self._request(request_url, {**send_headers, **validators}, timeout_s)
            with contextlib.closing(self._client.send(request, stream=True)) as r:
                if r.status_code in REDIRECT_STATUS and "Location" in r.headers:
                    target = r.url.join(r.headers["Location"])
                    _check_redirect(r.url, target)
                    _check_destination(configured, target, resolve, self._proxied)
                    log.debug("%s redirected to %s", without_query(str(r.url)), target.host)
                    if _origin(target) != origin:
                        send_headers = {}
                    request_url = target  # the Location carries the query it wants
                    continue
                return self._read(r, max_bytes, deadline, timeout_s)
        where = without_query(str(configured))
        raise FetchError("redirects", f"more than {MAX_REDIRECTS} redirects from {where}")

    def _request(self, url: httpx.URL, headers: Mapping[str, str], timeout_s: float) -> httpx.Request:
        """The request, or FetchError: a header value that is not ASCII (a configured key, a validator
        from an old checkpoint) raised UnicodeEncodeError here, outside every handler, on every run. No
        `params=` ever: httpx replaces the URL's whole query with them (see `request_target`)."""
        try:
            return self._client.build_request("GET", url, headers=headers, timeout=timeout_s)
        except (UnicodeEncodeError, ValueError) as e:
            raise FetchError("connect", f"cannot build the request: {type(e).__name__}: {e}") from None

    def _resolver(self, deadline: float, known: _Known) -> addresses.Resolver:
        """The guard's resolver for one fetch: bounded by the fetch's deadline, each host asked once
        (unless a connection asked since: `known` holds the latest answer), and its failures reported
        like the connection's own (a name that does not resolve is `connect`, retried; running past the
        deadline is `timeout`)."""

        def resolve(host: str) -> Sequence[addresses.IPAddress]:
            if host not in known:
                known[host] = self._resolve_by(host, deadline)
            return known[host]

        return resolve

    def _pin(
        self, configured: httpx.URL, resolve: addresses.Resolver, known: _Known, deadline: float
    ) -> connect.Pin:
        """Where a direct connection of this fetch to `host` may go: the name is looked up afresh (the
        redirect check's answer may be stale, or a rebinding DNS server's bait), the guard's rule is
        applied to exactly those addresses, and only they are dialled. The answer is kept in `known` (which
        `resolve` reads), so that the source's own host counts as public or not by where its connection
        went."""
        source = _host(configured)
        source_proxied = self._proxied(configured)

        def pin(host: str) -> Sequence[addresses.IPAddress]:
            found = addresses.addresses_of(host, lambda name: self._resolve_by(name, deadline))
            known[host] = found
            if not addresses.may_follow(source, host, resolve, configured_proxied=source_proxied):
                raise FetchError(
                    "redirects", f"redirect to a non-public address ({host}) refused on connecting"
                )
            return found

        return pin

    def _resolve_by(self, host: str, deadline: float) -> Sequence[addresses.IPAddress]:
        try:
            return addresses.resolve_within(self._resolve, host, deadline - time.monotonic())
        except TimeoutError:  # before OSError: TimeoutError is one
            raise FetchError("timeout", f"resolving {host} did not end within the fetch deadline") from None
        except OSError as e:
            raise _Retryable(FetchError("connect", f"cannot resolve {host}: {e}"), None) from None

    def _read(self, r: httpx.Response, max_bytes: int, deadline: float, timeout_s: float) -> HttpResponse:
        where = without_query(str(r.url))
        if r.status_code in RETRYABLE_STATUS:
            kind = "rate_limited" if r.status_code == 429 else "http_status"
            raise _Retryable(
                FetchError(kind, f"HTTP {r.status_code} from {where}"),
                parse_retry_after(r.headers.get("Retry-After"), time.time()),
            )
        if r.status_code != 304 and not 200 <= r.status_code < 300:
            raise FetchError("http_status", f"HTTP {r.status_code} from {where}")
        declared = r.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError("too_large", f"Content-Length {declared} > max_response_bytes {max_bytes}")
        decoder = _decoder(r.headers.get("Content-Encoding", ""), where)
        body = _BoundedBody(decoder, max_bytes, where)
        for raw in r.iter_raw():
            if time.monotonic() > deadline:
                raise FetchError(
                    "timeout", f"{where}: body not complete after {FETCH_DEADLINE_FACTOR * timeout_s:g}s"
                )
            if self._sleep(0):  # the service is stopping (an Event.wait(0) that returns True)
                raise FetchError("cancelled", "the service is stopping")
            body.add(raw)
        return HttpResponse(
            status=r.status_code,
            body=body.finish(),
            url=str(r.url),
            content_type=r.headers.get("Content-Type", "").split(";")[0].strip().lower(),
            etag=usable_validator(r.headers.get("ETag")),
            last_modified=usable_validator(r.headers.get("Last-Modified")),
            charset=r.charset_encoding,
        )


class _BoundedBody:
    """The body as it arrives, decoded (if encoded) and never more than `max_bytes` after decoding. A
    `deflate` body without the zlib header (raw deflate, as some servers send it) is read as such, and a
    gzip body of several members is read to its last member (only the first one was kept), up to
    `_MAX_GZIP_MEMBERS` of them."""

    def __init__(self, decoder: zlib._Decompress | None, max_bytes: int, where: str) -> None:
        self.decoder, self.max_bytes, self.where = decoder, max_bytes, where
        self.chunks: list[bytes] = []
        self.total = 0
        self.members = 1
        self.head: bytes | None = b""  # the raw bytes until the first decoded byte: to retry as raw deflate

    def add(self, raw: bytes) -> None:
        if self.head is not None:
            self.head = self.head + raw if len(self.head) < 1024 else None  # a zlib header is 2 bytes
        if self.decoder is None:
            self._count(raw)
        else:
            self._decode(self.decoder, raw)

    def finish(self) -> bytes:
        if self.decoder is not None:
            self._decode(self.decoder, None)
        return b"".join(self.chunks)

    def _room(self) -> int:
        return self.max_bytes - self.total + 1

    def _decode(self, decoder: zlib._Decompress, raw: bytes | None) -> None:
        """Decodes `raw` (None: what the decoder still holds), then each gzip member that follows, one
        after the other: a call per member overflowed the stack on a body of thousands of empty ones."""
        while True:
            decoder, chunk = self._step(decoder, raw)
            if chunk:
                self.head = None
            self._count(chunk)
            raw = decoder.unused_data
            if not (decoder.eof and raw.startswith(_GZIP_MAGIC) and self.total <= self.max_bytes):
                return
            self.members += 1
            if self.members > _MAX_GZIP_MEMBERS:
                raise FetchError("parse", f"{self.where}: gzip body of more than {_MAX_GZIP_MEMBERS} members")
            decoder = self.decoder = zlib.decompressobj(wbits=47)  # the next member
            self.head = None

    def _step(self, decoder: zlib._Decompress, raw: bytes | None) -> tuple[zlib._Decompress, bytes]:
        """The decoder and what it gives for `raw`: a body that fails in its first bytes is read again as
        raw deflate, by a new decoder."""
        try:
            return decoder, decoder.flush() if raw is None else decoder.decompress(raw, self._room())
        except zlib.error as e:
            if not self.head or self.total:
                raise FetchError("parse", f"{self.where}: body does not decode ({e})") from None
        self.decoder, head, self.head = zlib.decompressobj(wbits=-15), self.head, None
        return self._step(self.decoder, head)  # once: `head` is None now, so a failure is final

    def _count(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.max_bytes:
            raise FetchError("too_large", f"response exceeds max_response_bytes {self.max_bytes}")
        self.chunks.append(chunk)


_GZIP_MAGIC = b"\x1f\x8b"
# Past this many members a gzip body is refused: each next member copies what is left of the chunk.
_MAX_GZIP_MEMBERS = 10_000


def _timeout_text(error: httpx.TimeoutException, url: str, timeout_s: float) -> str:
    if str(error) == connect.DEADLINE_PASSED:  # each read came in time, the whole fetch did not
        return f"{without_query(url)}: not complete after {FETCH_DEADLINE_FACTOR * timeout_s:g}s"
    return f"{type(error).__name__} after {timeout_s}s"


def without_query(url: str) -> str:
    """The URL for logs and errors: its query string may carry an API key, its user info a password."""
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None, userinfo=b""))
    except (httpx.InvalidURL, TypeError, ValueError):
        rest = url.split("?", 1)[0]
        scheme, sep, tail = rest.partition("://")
        return f"{scheme}{sep}{tail.rpartition('@')[2]}" if sep else rest


def request_target(configured: httpx.URL, params: Mapping[str, str], headers: Mapping[str, str]) -> httpx.URL:
    """The URL first asked for a source: the configured URL's own query (`?token=...`), kept as written,
    then `params` (a parameter of the same name replacing the URL's; httpx, given `params=`, even `{}`,
    dropped the URL's query whole). Without the URL's user info when an Authorization header is
    configured: the configured header wins (httpx would replace it with a `Basic` one made of the user
    info); the user info is used for Basic authentication only when no Authorization header is set."""
    url = configured
    if params:
        kept = filter_query(url.query.decode("ascii"), lambda name, _value: name in params)
        added = str(httpx.QueryParams(dict(params)))
        url = url.copy_with(query="&".join(q for q in (kept, added) if q).encode("ascii"))
    if url.userinfo and any(name.lower() == "authorization" for name in headers):
        url = url.copy_with(userinfo=b"")
    return url


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _check_redirect(source: httpx.URL, target: httpx.URL) -> None:
    if target.scheme not in ("http", "https"):
        raise FetchError("redirects", f"redirect to a {target.scheme or 'relative'} URL refused")
    if source.scheme == "https" and target.scheme == "http":
        raise FetchError("redirects", f"redirect from https down to http ({target.host}) refused")


def _check_destination(
    configured: httpx.URL,
    target: httpx.URL,
    resolve: addresses.Resolver,
    proxied: Callable[[httpx.URL], bool] = lambda url: False,
) -> None:
    """A public source's redirect must not reach internal services (loopback, link-local and cloud
    metadata, private networks): the body would be published. Hosts as the connection sends them (IDNA).
    A URL that `proxied` says goes through a proxy has its name resolved by the proxy, not here."""
    allowed = addresses.may_follow(
        _host(configured),
        _host(target),
        resolve,
        configured_proxied=proxied(configured),
        target_proxied=proxied(target),
    )
    if not allowed:
        raise FetchError("redirects", f"redirect to a non-public address ({target.host}) refused")


def uses_proxy(client: httpx.Client, url: httpx.URL) -> bool:
    """Whether `client` sends a request for `url` through a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and
    NO_PROXY, read when the client was made; none when it was given a transport). httpx has no public way
    to ask, and urllib's `proxy_bypass` reads NO_PROXY differently (`.example.com`, `http://host`
    entries), which could take a direct connection for a proxied one and skip its lookup: the client's
    own choice is asked. Should a later httpx drop it, every URL counts as direct: looked up as before."""
    transport_for = getattr(client, "_transport_for_url", None)
    direct = getattr(client, "_transport", None)
    if transport_for is None or direct is None:
        return False
    return bool(transport_for(url) is not direct)


def _host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii", errors="replace")


def _decoder(content_encoding: str, where: str) -> zlib._Decompress | None:
    """A bounded decoder for the body (None: identity). Only what we ask for (gzip, deflate), one layer:
    a stack of encodings, or zstd/br that the server chose itself, could expand without a bound here."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or a zlib header, detected
    raise FetchError("content_type", f"{where}: Content-Encoding {content_encoding!r} refused")


class _Retryable(Exception):
    def __init__(self, error: FetchError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def http_date(ts: float) -> str:
    """An HTTP date, for tests and If-Modified-Since."""
    return email.utils.format_datetime(datetime.fromtimestamp(ts, tz=UTC), usegmt=True)
