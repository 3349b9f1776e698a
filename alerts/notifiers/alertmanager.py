"""Prometheus Alertmanager API v2: `POST /api/v2/alerts` with labels, annotations, startsAt, endsAt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from alerts.model import Alert, rfc3339
from alerts.notifiers.base import MAX_BODY_BYTES, fitting, json_size, one_line, post_json, render_alert
from alerts.notifiers.render import link, safe_url, summary_text

MIN_MAX_WAIT_S = 5.0
"""The least `max_wait_s`: an Alertmanager that refuses is tried at most every 5 s once backing off."""


class AlertmanagerNotifier:
    """Firing alerts carry endsAt in the near future and are re-sent while they fire (so Alertmanager
    resolves them by itself if finsent dies); resolved alerts carry their real endsAt. Many alerts go out
    in requests of bounded size (`batch_size`).

    Severity is a label, so an escalated episode is another alert in Alertmanager: an escalation goes out
    with the alert of its former severity resolved, which would otherwise stay active beside it until
    its endsAt."""

    name = "alertmanager"

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        firing_ttl_s: float,
        resend_interval_s: float | None = None,
        generator_url: str = "",
        headers: dict[str, str] | None = None,
        max_examples: int = 3,
    ) -> None:
        self.client = client
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.firing_ttl_s = firing_ttl_s
        self.resend_interval_s = resend_interval_s
        self.generator_url = generator_url
        self.headers = headers or {}
        self.max_examples = max_examples

    @property
    def max_wait_s(self) -> float:
        """The longest the dispatcher waits after a failure, whatever Retry-After says: half the time the
        last re-send's endsAt leaves once the next re-send is due (90 s of 180 s by default; without the
        interval, a quarter of the TTL), so a re-send that fails is tried again with time to spare before
        the firing alerts expire. One 429 with
        `Retry-After: 600` held the channel past their endsAt: Alertmanager resolved every finsent alert,
        and the next re-send fired them all again. At least MIN_MAX_WAIT_S: with `ends_at_factor` near 1
        there is next to no time to spare, and a cap of zero pinned every wait to the backoff's first,
        trying a 429-ing Alertmanager twice a second for ever; there a longer outage lets endsAt pass."""
        if self.resend_interval_s is None:
            return max(self.firing_ttl_s / 4, MIN_MAX_WAIT_S)
        spare = max(self.firing_ttl_s - self.resend_interval_s, 0.0)
        return max(spare / 2, MIN_MAX_WAIT_S)

    def payload(self, alerts: Sequence[Alert], now: float) -> list[dict[str, Any]]:
        return [item for a in alerts for item in render_alert(a, lambda x: self.items(x, now))]

    def items(self, a: Alert, now: float) -> list[dict[str, Any]]:
        """What one transition sends: the alert, and for an escalation its former severity's resolve."""
        item = self.item(a, now)
        if not a.escalation:
            return [item]
        labels = {**item["labels"], "severity": a.escalated_from}
        summary = one_line(f"Superseded by the {a.severity} alert of the same episode: {a.summary}", 500)
        annotations = {**item["annotations"], "summary": summary}
        return [item, {**item, "labels": labels, "annotations": annotations, "endsAt": rfc3339(now)}]

    def item(self, a: Alert, now: float) -> dict[str, Any]:
        """One alert as Alertmanager takes it; every link safe (no whitespace that would forge a line in
        an annotation) and an example's link only when not over MAX_LINK_CHARS."""
        if a.status == "resolved":
            ends = min(a.ends_at if a.ends_at is not None else now, now)
        else:
            ends = now + self.firing_ttl_s
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
            "annotations": self.annotations(a),
            "startsAt": rfc3339(min(a.starts_at, now)),
            "endsAt": rfc3339(ends),
        }
        generator = safe_url(self.generator_url) or safe_url(a.dashboard_url)
        if generator:
            item["generatorURL"] = generator
        return item

    def annotations(self, a: Alert) -> dict[str, str]:
        """Summary (a resolve's says it is over), evidence, window, examples and dashboard link."""
        annotations = {
            "summary": summary_text(a),
            "p_value": f"{a.p_value:.3g}",
            "negative_share": f"{a.negative_share:.4f}",
            "baseline_share": f"{a.baseline_share:.4f}",
            "count": str(a.count),
            "negative_count": f"{a.negative_count:g}",
            "window": f"{rfc3339(a.window_start)}/{rfc3339(a.window_end)}",
        }
        if a.examples:
            annotations["examples"] = "\n".join(
                one_line(e.text) + (f" {link(e.url)}" if link(e.url) else "")
                for e in a.examples[: self.max_examples]
            )
        dashboard = safe_url(a.dashboard_url)
        if dashboard:
            annotations["dashboard"] = dashboard
        return annotations

    def batch_size(self, alerts: Sequence[Alert]) -> int:
        """As many as fit in one request of at most MAX_BODY_BYTES and MAX_BATCH_ALERTS alerts."""
        return fitting((self._size(a) for a in alerts), MAX_BODY_BYTES)

    def _size(self, alert: Alert) -> int:
        return json_size(lambda: self.items(alert, 0.0))

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        body = json.dumps(self.payload(alerts, now)).encode()
        post_json(self.client, self.endpoint, body, self.headers, now=now)

    def close(self) -> None:
        """Close the HTTP client it sends with: the one build_dispatcher made for its HTTP channels, which
        close it each (closing twice is harmless)."""
        self.client.close()
