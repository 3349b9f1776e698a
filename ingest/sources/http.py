"""The thin HTTP adapter of sources: one GET with timeouts, retries with backoff (honouring Retry-After),
conditional requests, a response size cap and a per-source rate limit. Everything else is pure."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from ingest.sources.ratelimit import TokenBucket

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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
    content_type: str
    etag: str | None
    last_modified: str | None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
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
    ) -> None:
        self._client = httpx.Client(
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": user_agent},
            transport=transport,
        )
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._client.close()

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
        req_headers = dict(headers)
        if etag:
            req_headers["If-None-Match"] = etag
        if last_modified:
            req_headers["If-Modified-Since"] = last_modified
        attempt = 0
        while True:
            if limiter is not None:
                wait = limiter.reserve(self._clock())
                if wait > 0 and self._sleep(wait):
                    raise FetchError("cancelled", "the service is stopping")
            retry_after: float | None = None
            try:
                return self._once(url, req_headers, params, timeout_s, max_bytes)
            except _Retryable as e:
                error, retry_after = e.error, e.retry_after
            except httpx.TimeoutException as e:
                error = FetchError("timeout", f"{type(e).__name__} after {timeout_s}s")
            except httpx.TooManyRedirects as e:
                raise FetchError("redirects", str(e)) from None
            except (httpx.TransportError, httpx.DecodingError) as e:
                error = FetchError("connect", f"{type(e).__name__}: {e}")
            except httpx.InvalidURL as e:
                raise FetchError("connect", f"invalid URL: {e}") from None
            attempt += 1
            if attempt > policy.retries:
                raise error
            delay = retry_delay(attempt, policy, retry_after)
            log.info("%s: %s; retry %d/%d in %.1fs", url, error, attempt, policy.retries, delay)
            if self._sleep(delay):  # an Event.wait that returns True: the service is stopping
                raise FetchError("cancelled", f"the service is stopping ({error})")

    def _once(
        self,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str],
        timeout_s: float,
        max_bytes: int,
    ) -> HttpResponse:
        with self._client.stream("GET", url, headers=headers, params=params, timeout=timeout_s) as r:
            if r.status_code in RETRYABLE_STATUS:
                kind = "rate_limited" if r.status_code == 429 else "http_status"
                raise _Retryable(
                    FetchError(kind, f"HTTP {r.status_code} from {r.url}"),
                    parse_retry_after(r.headers.get("Retry-After"), time.time()),
                )
            if r.status_code != 304 and not 200 <= r.status_code < 300:
                raise FetchError("http_status", f"HTTP {r.status_code} from {r.url}")
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", f"Content-Length {declared} > max_response_bytes {max_bytes}")
            chunks: list[bytes] = []
            total = 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError("too_large", f"response exceeds max_response_bytes {max_bytes}")
                chunks.append(chunk)
            if r.history:
                log.debug("%s redirected to %s", url, r.url)
            return HttpResponse(
                status=r.status_code,
                body=b"".join(chunks),
                url=str(r.url),
                content_type=r.headers.get("Content-Type", "").split(";")[0].strip().lower(),
                etag=r.headers.get("ETag"),
                last_modified=r.headers.get("Last-Modified"),
            )


class _Retryable(Exception):
    def __init__(self, error: FetchError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def http_date(ts: float) -> str:
    """An HTTP date, for tests and If-Modified-Since."""
    return email.utils.format_datetime(datetime.fromtimestamp(ts, tz=UTC), usegmt=True)
