"""What every notification channel is, and the one exception tree they raise."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from alerts.model import Alert
from ingest.sources.http import parse_retry_after  # the same rules as the sources' HTTP client

TRANSIENT_STATUS = frozenset({408, 429})
# One request of a channel that must carry every alert as data (webhook, Alertmanager) holds at most this
# many alerts and bytes; a larger batch goes out in several. Under nginx's default 1 MiB body limit: a
# refused body (413) is permanent and would drop every alert in it.
MAX_BATCH_ALERTS = 100
MAX_BODY_BYTES = 512 * 1024

T = TypeVar("T")


class NotifyError(Exception):
    """A notification could not be delivered."""


class TransientNotifyError(NotifyError):
    """Worth retrying: connection failure, timeout, 5xx, 408, 429. `retry_after_s` is the receiver's
    Retry-After, when it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentNotifyError(NotifyError):
    """Retrying will not help: bad URL, 3xx, 4xx, rejected recipient, bad credentials."""


class UnrenderableAlert(PermanentNotifyError):
    """One alert of a batch cannot be rendered (a lone surrogate in its text, a time out of range). Raised
    before anything is sent, so that this alert alone fails for good and the others go out without it."""

    def __init__(self, alert: Alert, reason: str) -> None:
        super().__init__(f"alert cannot be rendered: {reason}")
        self.alert = alert


class Notifier(Protocol):
    """One channel. `send` delivers all `alerts` as one message (a digest when there are several);
    `batch_size` says how many of a queue's first alerts one message may carry (at least 1)."""

    name: str

    def batch_size(self, alerts: Sequence[Alert]) -> int: ...

    def send(self, alerts: Sequence[Alert], now: float) -> None: ...


def render_alert(alert: Alert, render: Callable[[Alert], T]) -> T:
    """`render(alert)`, checked to be text that can be sent (UTF-8: no lone surrogate). Any failure is
    this alert's alone: UnrenderableAlert, so one bad alert never takes a digest down with it."""
    try:
        rendered = render(alert)
        json.dumps(rendered, ensure_ascii=False).encode()  # walks every string the rendering holds
    except (ValueError, TypeError, OverflowError, OSError) as exc:
        raise UnrenderableAlert(alert, type(exc).__name__) from None
    return rendered


def fitting(sizes: Iterable[int], max_bytes: int, max_items: int = MAX_BATCH_ALERTS) -> int:
    """How many items, from the first, fit in `max_bytes` and `max_items`: at least 1, so that an item
    too large on its own is still tried (and fails alone)."""
    count, total = 0, 0
    for size in sizes:
        if count >= max_items or (count and total + size > max_bytes):
            break
        count, total = count + 1, total + size
    return max(count, 1)


def json_size(render: Callable[[], object]) -> int:
    """Bytes what `render` returns takes as an item of a JSON list; 0 when it cannot be rendered (`send`
    then names the alert that fails)."""
    try:
        return len(json.dumps(render())) + 2  # and the ", " before the next item
    except (ValueError, TypeError, OverflowError, OSError):
        return 0


def redirect_host(response: httpx.Response) -> str:
    """Only the host a redirect points to: the full Location may carry the webhook's token."""
    try:
        return urlsplit(response.headers.get("Location", "")).hostname or "?"
    except ValueError:
        return "?"


def post_json(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    now: float | None = None,
) -> None:
    """POST a JSON body; anything but 2xx raises from the NotifyError tree (the URL is never logged).
    A redirect is not followed (it would re-send the body, maybe a secret, elsewhere) and is permanent, and
    so is a URL httpx cannot use: retrying it cannot help, and its message would quote the URL."""
    try:
        response = client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PermanentNotifyError(f"bad URL: {type(exc).__name__}") from None
    except httpx.TimeoutException as exc:
        raise TransientNotifyError(f"timeout: {type(exc).__name__}") from None
    except httpx.TransportError as exc:
        raise TransientNotifyError(f"connection failed: {type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise PermanentNotifyError(f"request failed: {type(exc).__name__}") from None
    status = response.status_code
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        raise PermanentNotifyError(
            f"HTTP {status}: redirected to host {redirect_host(response)}, not followed"
        )
    if status in TRANSIENT_STATUS or status >= 500:
        at = time.time() if now is None else now
        retry_after = parse_retry_after(response.headers.get("Retry-After"), at)
        raise TransientNotifyError(f"HTTP {status}: {response.text[:200]}", retry_after)
    raise PermanentNotifyError(f"HTTP {status}: {response.text[:200]}")
