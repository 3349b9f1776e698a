"""Alert text for humans, escaped for each channel: message text never becomes markup."""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import urlsplit

from alerts.model import Alert, rfc3339


def safe_url(url: str) -> str:
    """Only absolute http(s) URLs are linked; anything else (javascript:, relative) is dropped."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return url.strip()


def one_line(text: str, limit: int = 280) -> str:
    """Collapse whitespace (no forged lines or headers) and shorten."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def title(alert: Alert) -> str:
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    return f"{state}: {alert.alertname} {alert.key_type}={alert.key}"


def digest_title(alerts: Sequence[Alert]) -> str:
    if len(alerts) == 1:
        return title(alerts[0])
    firing = sum(1 for a in alerts if a.status == "firing")
    return f"{len(alerts)} finsent alerts ({firing} firing, {len(alerts) - firing} resolved)"


def plain_lines(alert: Alert, max_examples: int) -> list[str]:
    """Plain-text description (log, e-mail text part)."""
    lines = [title(alert), one_line(alert.summary, 500)]
    lines.append(
        f"window {rfc3339(alert.window_start)} .. {rfc3339(alert.window_end)}; "
        f"since {rfc3339(alert.starts_at)}"
    )
    if alert.ends_at is not None:
        lines.append(f"resolved at {rfc3339(alert.ends_at)}")
    for ex in alert.examples[:max_examples]:
        link = safe_url(ex.url)
        lines.append(f"  - {one_line(ex.text)}" + (f" <{link}>" if link else ""))
    if safe_url(alert.dashboard_url):
        lines.append(f"dashboard: {alert.dashboard_url}")
    return lines


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters: only &, < and > need escaping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, label: str) -> str:
    link = safe_url(url)
    if not link:
        return slack_escape(label)
    return f"<{slack_escape(link).replace('|', '%7C')}|{slack_escape(label).replace('|', '¦')}>"


# A digest details this many alerts and names the rest in one line: Slack cuts (or refuses) a message
# over 40,000 characters, and a refused digest would lose every alert in it.
DIGEST_DETAILED = 20
DIGEST_REST_CHARS = 3_000


def slack_text(alerts: Sequence[Alert], max_examples: int) -> str:
    out = [f"*{slack_escape(digest_title(alerts))}*"]
    rest = alerts[DIGEST_DETAILED:]
    for a in alerts[:DIGEST_DETAILED]:
        head = f"*{slack_escape(title(a))}*" if len(alerts) > 1 else ""
        if head:
            out.append(head)
        out.append(slack_escape(one_line(a.summary, 500)))
        if a.ends_at is not None:
            out.append(f"resolved at {rfc3339(a.ends_at)}")
        for ex in a.examples[:max_examples]:
            out.append(
                "• "
                + slack_escape(one_line(ex.text))
                + (" " + slack_link(ex.url, "link") if safe_url(ex.url) else "")
            )
        if safe_url(a.dashboard_url):
            out.append(slack_link(a.dashboard_url, "dashboard"))
    if rest:
        names = one_line("; ".join(title(a) for a in rest), DIGEST_REST_CHARS)
        out.append(slack_escape(f"and {len(rest)} more: {names}"))
    return "\n".join(out)


def email_html(alerts: Sequence[Alert], max_examples: int) -> str:
    esc = html.escape
    parts = [f"<h2>{esc(digest_title(alerts))}</h2>"]
    for a in alerts:
        parts.append(f"<h3>{esc(title(a))}</h3><p>{esc(one_line(a.summary, 500))}</p>")
        parts.append(
            f"<p>window {esc(str(rfc3339(a.window_start)))} .. {esc(str(rfc3339(a.window_end)))}"
            + (f"; resolved at {esc(str(rfc3339(a.ends_at)))}" if a.ends_at is not None else "")
            + "</p>"
        )
        if a.examples[:max_examples]:
            parts.append("<ul>")
            for ex in a.examples[:max_examples]:
                link = safe_url(ex.url)
                item = esc(one_line(ex.text))
                if link:
                    item += f' (<a href="{esc(link, quote=True)}">link</a>)'
                parts.append(f"<li>{item}</li>")
            parts.append("</ul>")
        if safe_url(a.dashboard_url):
            parts.append(f'<p><a href="{esc(a.dashboard_url, quote=True)}">dashboard</a></p>')
    return "<html><body>" + "".join(parts) + "</body></html>"
