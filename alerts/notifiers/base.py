"""What every notification channel is, and the one exception tree they raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx

from alerts.model import Alert


class NotifyError(Exception):
    """A notification could not be delivered."""


class TransientNotifyError(NotifyError):
    """Worth retrying: connection failure, timeout, 5xx, 429."""


class PermanentNotifyError(NotifyError):
    """Retrying will not help: bad URL, 4xx, rejected recipient, bad credentials."""


class Notifier(Protocol):
    """One channel. `send` delivers all `alerts` as one message (a digest when there are several)."""

    name: str

    def send(self, alerts: Sequence[Alert], now: float) -> None: ...


def post_json(client: httpx.Client, url: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    """POST a JSON body; map every httpx failure onto the NotifyError tree (the URL is never logged)."""
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
    if status == 429 or status >= 500:
        raise TransientNotifyError(f"HTTP {status}: {response.text[:200]}")
    if status >= 400:
        raise PermanentNotifyError(f"HTTP {status}: {response.text[:200]}")
