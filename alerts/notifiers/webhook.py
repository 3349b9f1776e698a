"""Generic JSON webhook: the alerts as data, optionally HMAC-signed."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

import httpx

from alerts.model import Alert, rfc3339
from alerts.notifiers.base import post_json


def webhook_body(alerts: Sequence[Alert]) -> dict[str, Any]:
    statuses = {a.status for a in alerts}
    items = []
    for a in alerts:
        data = a.to_dict()
        data.update(
            fingerprint=a.fingerprint,
            alert_id=a.alert_id,
            alertname=a.alertname,
            starts_at=rfc3339(a.starts_at),
            ends_at=rfc3339(a.ends_at),
            window_start=rfc3339(a.window_start),
            window_end=rfc3339(a.window_end),
        )
        items.append(data)
    return {
        "version": "1",
        "source": "finsent",
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "alerts": items,
    }


class WebhookNotifier:
    name = "webhook"

    def __init__(
        self, client: httpx.Client, url: str, *, secret: str | None = None, authorization: str | None = None
    ) -> None:
        self.client = client
        self.url = url
        self.secret = secret
        self.authorization = authorization

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        body = json.dumps(webhook_body(alerts)).encode()
        headers: dict[str, str] = {}
        if self.secret:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Finsent-Signature"] = f"sha256={digest}"
        if self.authorization:
            headers["Authorization"] = self.authorization
        post_json(self.client, self.url, body, headers, now=now)

    def close(self) -> None:
        """Close the HTTP client it sends with: the one build_dispatcher made for its HTTP channels, which
        close it each (closing twice is harmless)."""
        self.client.close()
