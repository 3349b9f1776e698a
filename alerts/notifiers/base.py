"""What every notification channel is, and the one exception tree they raise."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from alerts.model import Alert
from ingest.sources.http import parse_retry_after  # the same rules as the sources' HTTP client

TRANSIENT_STATUS = frozenset({408, 429})


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


class Notifier(Protocol):
    """One channel. `send` delivers all `alerts` as one message (a digest when there are several)."""

    name: str

    def send(self, alerts: Sequence[Alert], now: float) -> None: ...


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
    A redirect is not followed (it would re-send the body, maybe a secret, elsewhere) and is permanent."""
    try:
        response = client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
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
