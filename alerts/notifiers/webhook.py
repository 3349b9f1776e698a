"""Generic JSON webhook: the alerts as data, optionally HMAC-signed."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

import httpx

from alerts.model import Alert, rfc3339
from alerts.notifiers.base import MAX_BODY_BYTES, fitting, json_size, post_json, render_alert
from alerts.notifiers.render import link, safe_url, summary_text

ENVELOPE_BYTES = 1024  # what the body holds besides its alerts, with room to spare


def webhook_item(alert: Alert, max_examples: int) -> dict[str, Any]:
    """One alert as data: `max_examples` examples, links only when safe and not over MAX_LINK_CHARS (as
    on every channel), and the summary as people read it (a resolve says that it is over)."""
    data = alert.to_dict()
    data.update(
        fingerprint=alert.fingerprint,
        alert_id=alert.alert_id,
        alertname=alert.alertname,
        summary=summary_text(alert),
        starts_at=rfc3339(alert.starts_at),
        ends_at=rfc3339(alert.ends_at),
        window_start=rfc3339(alert.window_start),
        window_end=rfc3339(alert.window_end),
        dashboard_url=safe_url(alert.dashboard_url),
        examples=[
            {"text": e.text, "url": link(e.url), "negative_prob": e.negative_prob}
            for e in alert.examples[:max_examples]
        ],
    )
    return data


def webhook_body(alerts: Sequence[Alert], max_examples: int = 3) -> dict[str, Any]:
    statuses = {a.status for a in alerts}
    return {
        "version": "1",
        "source": "finsent",
        "status": statuses.pop() if len(statuses) == 1 else "mixed",
        "alerts": [render_alert(a, lambda x: webhook_item(x, max_examples)) for a in alerts],
    }


class WebhookNotifier:
    name = "webhook"

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        secret: str | None = None,
        authorization: str | None = None,
        max_examples: int = 3,
    ) -> None:
        self.client = client
        self.url = url
        self.secret = secret
        self.authorization = authorization
        self.max_examples = max_examples

    def batch_size(self, alerts: Sequence[Alert]) -> int:
        """As many as fit in one body of at most MAX_BODY_BYTES and MAX_BATCH_ALERTS alerts."""
        return fitting((self._size(a) for a in alerts), MAX_BODY_BYTES - ENVELOPE_BYTES)

    def _size(self, alert: Alert) -> int:
        return json_size(lambda: webhook_item(alert, self.max_examples))

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        body = json.dumps(webhook_body(alerts, self.max_examples)).encode()
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
