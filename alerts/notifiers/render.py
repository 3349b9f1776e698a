"""Alert text for humans, escaped for each channel: message text never becomes markup."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from alerts.model import RULE_VOLUME, SEVERITY_RANK, Alert, rfc3339, transition_counts
from alerts.notifiers.base import one_line, render_alert
from ingest.secret_names import filter_query, is_secret_name

# A digest details this many alerts and names the rest: one message per storm, of bounded size.
DIGEST_DETAILED = 20
# Slack cuts (or refuses) a message over 40,000 characters, and a refused digest would lose every alert in
# it: the escaped text stays within SLACK_BUDGET, of which the "and N more" line may take DIGEST_REST_CHARS.
SLACK_BUDGET = 35_000
DIGEST_REST_CHARS = 3_000
# An e-mail digest names this many alerts beyond the detailed ones, one per line, and counts the rest.
EMAIL_LISTED = 200
# An example's link longer than this is left out (its text stays): tracking URLs of kilobytes would crowd
# the alerts out of a digest, and '&' grows fivefold when escaped for Slack.
MAX_LINK_CHARS = 500
# The note Detector._retire adds to the summary of a resolve it makes: why it resolved.
_RESOLVE_NOTE = re.compile(r"\((resolved: [^()]*)\)$")


def safe_url(url: str) -> str:
    """Only absolute http(s) URLs are linked; anything else (javascript:, relative) is dropped, and so is
    a URL with whitespace or a control character inside: urlsplit skips a newline or a tab, but the URL as
    quoted would forge a line in the log, an e-mail or an Alertmanager annotation. What is linked is
    `shown_url`: no user info, no secret-looking query parameters, but for Grafana's dashboard variables
    (`var-key=ACME`: a dashboard URL's, made of `dashboard_url_template`, names no credential)."""
    checked = _linkable(url)
    return shown_url(checked, keep=_GRAFANA_VARIABLE) if checked else ""


def link(url: str) -> str:
    """An example's URL (`shown_url`) if it is safe and at most MAX_LINK_CHARS long, else "" (no link)."""
    checked = _linkable(url)
    safe = shown_url(checked) if checked else ""
    return safe if len(safe) <= MAX_LINK_CHARS else ""


def _linkable(url: str) -> str:
    """`url` stripped if it is an absolute http(s) URL on one line, else "" (see `safe_url`)."""
    candidate = url.strip()
    if any(c.isspace() or not c.isprintable() for c in candidate):
        return ""
    try:
        parts = urlsplit(candidate)
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return candidate


_GRAFANA_VARIABLE = re.compile(r"var-", re.I)


def shown_url(url: str, keep: re.Pattern[str] | None = None) -> str:
    """`url` as a notification may show it: without its user info (`user:password@`) and without the
    query parameters whose names look like secrets (`?apikey=`, `&auth_token=`: ingest.secret_names;
    but those whose names `keep` matches at their start), in the query or in a fragment that reads like
    one (`#access_token=`); the rest is kept as it was. A link from a paid feed, or a dashboard URL,
    reaches Slack channels, e-mail, webhooks and Alertmanager's annotations."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if not parts.netloc:
        return url

    def drop(name: str, _value: str) -> bool:
        return is_secret_name(name) and not (keep is not None and keep.match(name))

    out = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    query = filter_query(parts.query, drop)
    if query:
        out += f"?{query}"
    fragment = filter_query(parts.fragment, drop) if "=" in parts.fragment else parts.fragment
    if fragment:
        out += f"#{fragment}"
    return out


def title(alert: Alert) -> str:
    """State, alert name and key; the key (labeler data) on one line."""
    state = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    return f"{state}: {alert.alertname} {alert.key_type}={one_line(alert.key, 200)}"


def worst_first(alerts: Sequence[Alert]) -> list[Alert]:
    """`alerts` in the order a digest details them, so that those it only names or counts are the least
    pressing: firing before resolved, critical before warning, then the least likely under the baseline
    (p-value) and the furthest above it (negative share over baseline). Stable: ties keep their order."""
    return sorted(alerts, key=_urgency)


def _urgency(alert: Alert) -> tuple[bool, int, float, float]:
    """Sort key, smallest first: firing before resolved, then by severity (one this version does not know
    last), p-value (a non-finite one as 1: NaN would leave the order undefined), excess over baseline."""
    severity = -SEVERITY_RANK.get(alert.severity, -1)
    p = alert.p_value if math.isfinite(alert.p_value) else 1.0
    return alert.status == "resolved", severity, p, alert.baseline_share - alert.negative_share


def digest_title(alerts: Sequence[Alert]) -> str:
    """The message's title: a single alert's own (checked like the rest of its rendering), else counts."""
    if len(alerts) == 1:
        return render_alert(alerts[0], title)
    firing, escalated, resolved = transition_counts(alerts)
    rose = f", {escalated} escalated" if escalated else ""
    return f"{len(alerts)} finsent alerts ({firing} firing{rose}, {resolved} resolved)"


def summary_text(alert: Alert) -> str:
    """The summary on one line. A resolve says that the spike is over and gives the evidence in the past
    tense: the firing's summary ("is 50% vs baseline 10%") would read as if it still fired. An escalation
    says so first: the same episode, notified again at a higher severity."""
    if alert.status == "resolved":
        text = resolve_summary(alert)
    elif alert.escalation:
        text = f"Escalated from {alert.escalated_from} to {alert.severity}: {alert.summary}"
    else:
        text = alert.summary
    return one_line(text, 500)


def resolve_summary(alert: Alert) -> str:
    """What a resolve says, from the evidence of the alert's last anomalous window. An alert the detector
    retired (its rule switched off, its key type no longer watched: a note in its summary) is not said to
    be back to normal, since nothing was measured: the note says why it ended."""
    key = f"{alert.key_type} {alert.key}"
    p = f"p={alert.p_value:.2g}"
    note = _RESOLVE_NOTE.search(alert.summary)
    if alert.rule == RULE_VOLUME:
        what, verb = f"Negative messages for {key}", "are"
        evidence = (  # the total and the share as the firing gave them: more coverage is not more negativity
            f"{alert.negative_count:g} vs usual {alert.expected_negative:.1f}, in {alert.count} messages: "
            f"share {alert.negative_share:.0%} vs baseline {alert.baseline_share:.0%} ({p})"
        )
    else:
        what, verb = f"Negative share for {key}", "is"
        evidence = (
            f"{alert.negative_share:.0%} vs baseline {alert.baseline_share:.0%} "
            f"({alert.negative_count:g} of {alert.count} messages, {p})"
        )
    if note:
        reason = note.group(1).removeprefix("resolved: ")
        return f"{what}: alert ended, {reason}; the last anomalous window had {evidence}"
    return f"{what} {verb} back to normal; the last anomalous window had {evidence}"


def window_line(alert: Alert) -> str:
    """When: the window of the evidence and since when the alert fires."""
    return (
        f"window {rfc3339(alert.window_start)} .. {rfc3339(alert.window_end)}; "
        f"since {rfc3339(alert.starts_at)}"
    )


def plain_lines(alert: Alert, max_examples: int) -> list[str]:
    """Plain-text description (log, e-mail text part)."""
    lines = [title(alert), summary_text(alert), window_line(alert)]
    if alert.ends_at is not None:
        lines.append(f"resolved at {rfc3339(alert.ends_at)}")
    for ex in alert.examples[:max_examples]:
        url = link(ex.url)
        lines.append(f"  - {one_line(ex.text)}" + (f" <{url}>" if url else ""))
    dashboard = safe_url(alert.dashboard_url)
    if dashboard:
        lines.append(f"dashboard: {dashboard}")
    return lines


def slack_escape(text: str) -> str:
    """Slack mrkdwn control characters: only &, < and > need escaping."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: str, label: str) -> str:
    """A link to a URL already checked by safe_url or link."""
    return f"<{slack_escape(url).replace('|', '%7C')}|{slack_escape(label).replace('|', '¦')}>"


def slack_lines(alert: Alert, max_examples: int, *, digest: bool) -> tuple[list[str], list[str]]:
    """An alert in mrkdwn: the lines it needs, and those it shows when the message has room."""
    needed = [f"*{slack_escape(title(alert))}*"] if digest else []
    needed += [slack_escape(summary_text(alert)), window_line(alert)]
    if alert.ends_at is not None:
        needed.append(f"resolved at {rfc3339(alert.ends_at)}")
    extra = []
    for ex in alert.examples[:max_examples]:
        url = link(ex.url)
        extra.append("• " + slack_escape(one_line(ex.text)) + (" " + slack_link(url, "link") if url else ""))
    dashboard = safe_url(alert.dashboard_url)
    if dashboard:
        extra.append(slack_link(dashboard, "dashboard"))
    return needed, extra


def slack_text(alerts: Sequence[Alert], max_examples: int) -> str:
    """The message: the first alerts in detail (up to DIGEST_DETAILED, as far as SLACK_BUDGET allows; an
    alert's examples only while they fit), then one line that counts and names the rest. The count is
    always there, whatever the alerts hold. Worst first (`worst_first`), in the detail and in the rest."""
    alerts = worst_first(alerts)
    out = [f"*{slack_escape(digest_title(alerts))}*"]
    room = SLACK_BUDGET - DIGEST_REST_CHARS - len(out[0])
    detailed = 0
    for a in alerts[:DIGEST_DETAILED]:
        needed, extra = render_alert(a, lambda x: slack_lines(x, max_examples, digest=len(alerts) > 1))
        cost = sum(len(line) + 1 for line in needed)
        if cost > room:
            break
        out += needed
        room -= cost
        for line in extra:
            if len(line) + 1 > room:
                break
            out.append(line)
            room -= len(line) + 1
        detailed += 1
    if detailed < len(alerts):
        out.append(slack_rest(alerts[detailed:]))
    return "\n".join(out)


def slack_rest(rest: Sequence[Alert]) -> str:
    """The line "and N more: " with their titles, escaped, as many as fit in DIGEST_REST_CHARS."""
    head = f"and {len(rest)} more: "
    names: list[str] = []
    room = DIGEST_REST_CHARS - len(head) - len("; …")
    for a in rest:
        name = slack_escape(render_alert(a, title))
        if len(name) + 2 > room:
            names.append("…")
            break
        names.append(name)
        room -= len(name) + 2
    return head + "; ".join(names)


def email_split(alerts: Sequence[Alert]) -> tuple[Sequence[Alert], Sequence[Alert], int]:
    """An e-mail digest's alerts, worst first: those it details, those it lists by title, and how many it
    only counts."""
    alerts = worst_first(alerts)
    detailed = alerts[:DIGEST_DETAILED]
    listed = alerts[DIGEST_DETAILED : DIGEST_DETAILED + EMAIL_LISTED]
    return detailed, listed, len(alerts) - len(detailed) - len(listed)


def email_text(alerts: Sequence[Alert], max_examples: int) -> str:
    """The text part: the first DIGEST_DETAILED alerts in detail, EMAIL_LISTED more by title, a count of
    the rest (a storm makes one e-mail of bounded size)."""
    detailed, listed, unlisted = email_split(alerts)
    parts = ["\n".join(render_alert(a, lambda x: plain_lines(x, max_examples))) for a in detailed]
    if listed:
        parts.append("\n".join(["Also due:", *(render_alert(a, title) for a in listed)]))
    if unlisted:
        parts.append(f"and {unlisted} more")
    return "\n\n".join(parts)


def email_html(alerts: Sequence[Alert], max_examples: int) -> str:
    """The HTML part: as email_text, with all message text escaped."""
    parts = [f"<h2>{html.escape(digest_title(alerts))}</h2>"]
    detailed, listed, unlisted = email_split(alerts)
    heading = len(alerts) > 1  # a single alert's title is the message's
    parts += [render_alert(a, lambda x: html_alert(x, max_examples, heading=heading)) for a in detailed]
    if listed:
        items = "".join(f"<li>{html.escape(render_alert(a, title))}</li>" for a in listed)
        parts.append(f"<h3>Also due</h3><ul>{items}</ul>")
    if unlisted:
        parts.append(f"<p>and {unlisted} more</p>")
    return "<html><body>" + "".join(parts) + "</body></html>"


def html_alert(alert: Alert, max_examples: int, *, heading: bool = True) -> str:
    """One alert in detail, in HTML; under its own title in a digest (`heading`), not when it is the
    message's only alert, whose title is the message's already."""
    esc = html.escape
    parts = [f"<h3>{esc(title(alert))}</h3>"] if heading else []
    parts.append(f"<p>{esc(summary_text(alert))}</p><p>{esc(window_line(alert))}")
    if alert.ends_at is not None:
        parts.append(f"; resolved at {esc(str(rfc3339(alert.ends_at)))}")
    parts.append("</p>")
    items = []
    for ex in alert.examples[:max_examples]:
        url = link(ex.url)
        item = esc(one_line(ex.text))
        if url:
            item += f' (<a href="{esc(url, quote=True)}">link</a>)'
        items.append(f"<li>{item}</li>")
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    dashboard = safe_url(alert.dashboard_url)
    if dashboard:
        parts.append(f'<p><a href="{esc(dashboard, quote=True)}">dashboard</a></p>')
    return "".join(parts)
