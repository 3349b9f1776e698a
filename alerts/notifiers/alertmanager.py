"""Prometheus Alertmanager API v2: `POST /api/v2/alerts` with labels, annotations, startsAt, endsAt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from alerts.model import Alert, rfc3339
from alerts.notifiers.base import post_json
from alerts.notifiers.render import one_line, safe_url


class AlertmanagerNotifier:
    """Firing alerts carry endsAt in the near future and are re-sent while they fire (so Alertmanager
    resolves them by itself if finsent dies); resolved alerts carry their real endsAt."""

    name = "alertmanager"

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        firing_ttl_s: float,
        generator_url: str = "",
        headers: dict[str, str] | None = None,
        max_examples: int = 3,
    ) -> None:
        self.client = client
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.firing_ttl_s = firing_ttl_s
        self.generator_url = generator_url
        self.headers = headers or {}
        self.max_examples = max_examples

    def payload(self, alerts: Sequence[Alert], now: float) -> list[dict[str, Any]]:
        out = []
        for a in alerts:
            if a.status == "resolved":
                ends = min(a.ends_at if a.ends_at is not None else now, now)
            else:
                ends = now + self.firing_ttl_s
            annotations = {
                "summary": one_line(a.summary, 500),
                "p_value": f"{a.p_value:.3g}",
                "negative_share": f"{a.negative_share:.4f}",
                "baseline_share": f"{a.baseline_share:.4f}",
                "count": str(a.count),
                "negative_count": f"{a.negative_count:g}",
                "window": f"{rfc3339(a.window_start)}/{rfc3339(a.window_end)}",
            }
            if a.examples:
                annotations["examples"] = "\n".join(
                    one_line(e.text) + (f" {safe_url(e.url)}" if safe_url(e.url) else "")
                    for e in a.examples[: self.max_examples]
                )
            if safe_url(a.dashboard_url):
                annotations["dashboard"] = a.dashboard_url
            item: dict[str, Any] = {
                "labels": {
                    "alertname": a.alertname,
                    "service": "finsent",
                    "rule": a.rule,
                    "key_type": a.key_type,
                    "key": a.key,
                    "severity": a.severity,
                    "finsent_fingerprint": a.fingerprint,
                },
                "annotations": annotations,
                "startsAt": rfc3339(min(a.starts_at, now)),
                "endsAt": rfc3339(ends),
            }
            generator = safe_url(self.generator_url) or safe_url(a.dashboard_url)
            if generator:
                item["generatorURL"] = generator
            out.append(item)
        return out

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        body = json.dumps(self.payload(alerts, now)).encode()
        post_json(self.client, self.endpoint, body, self.headers, now=now)

    def close(self) -> None:
        """Close the HTTP client it sends with: the one build_dispatcher made for its HTTP channels, which
        close it each (closing twice is harmless)."""
        self.client.close()
