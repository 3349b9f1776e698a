"""The words and links of an alert: summaries, the resolve note, the dashboard link. Pure functions of
the numbers the detector decided on (alerts/detector.py)."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

from alerts.model import Alert


def noted(done: Alert, reason: str) -> Alert:
    """A resolve whose summary ends with why it resolved, "(resolved: <reason>)": notifications show the
    reason instead of "back to normal" (alerts/notifiers/render.py, `_RESOLVE_NOTE`)."""
    note = f"resolved: {reason}"
    return replace(done, summary=f"{done.summary} ({note})" if done.summary else note)


def model_change_note(version: str) -> str:
    """Why the detector resolved a firing alert at a model change (the reason `noted` adds). Parentheses
    in the version become brackets: the note is read back up to its closing one (`_RESOLVE_NOTE`)."""
    shown = version[:100].replace("(", "[").replace(")", "]")
    return f"model changed to {shown}: baseline re-learning"


def without_empty_filters(template: str, values: dict[str, str]) -> str:
    """`template` without the query parameters that are one placeholder filled with nothing
    (`var-topic={topic}` in a ticker alert's link): Grafana would filter by an empty value and show no
    data, while a variable the link does not name keeps its default (All)."""
    head, sep, rest = template.partition("?")
    query, hashmark, fragment = rest.partition("#")
    kept = [param for param in query.split("&") if not _empty_filter(param, values)]
    if not sep or len(kept) == len(query.split("&")):
        return template
    return f"{head}{'?' if kept else ''}{'&'.join(kept)}{hashmark}{fragment}"


def _empty_filter(param: str, values: dict[str, str]) -> bool:
    value = param.partition("=")[2]
    return value.startswith("{") and value.endswith("}") and values.get(value[1:-1]) == ""


def versus(count: float, n: int, baseline: float) -> str:
    """The share vs the baseline ("58% vs baseline 10%") as the alert's fields hold them (4 places):
    notifications word a resolve from those fields, so it gives the same numbers as the firing."""
    share = round(count / n, 4) if n else 0.0
    return f"{share:.0%} vs baseline {round(baseline, 4):.0%}"


def windows_phrase(n: int, kind: str = "") -> str:
    return f"{n} {kind}window" if n == 1 else f"{n} {kind}windows"


def lag_words(seconds: float) -> str:
    """How long after its time an event was labeled, in the unit a reader takes in at once: seconds up to
    90, minutes up to 90, then hours (the late-event log line and the backtest's late warning)."""
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{max(seconds, 0.0):.0f} s"


def floor_mark(baseline: float, floor: float) -> str:
    """The mark of a baseline that is the floor (`min_baseline_share`), not the key's own (lower) share."""
    return "floor; " if baseline <= floor else ""


def dashboard_url(
    template: str, window_s: int, rule: str, key_type: str, key: str, start: float, end: float
) -> str:
    """`template` filled for one alert (docs/alerting.md, Evidence): the key URL-encoded, `{ticker}` or
    `{topic}` only for a key of that type (a parameter left empty is dropped), and a time range from four
    windows before `start` to one after `end`. A template that cannot be filled is returned as it is."""
    if not template:
        return ""
    span = window_s * 1000
    values = {
        "rule": quote(rule, safe=""),
        "key_type": quote(key_type, safe=""),
        "key": quote(key, safe=""),
        "ticker": quote(key, safe="") if key_type == "ticker" else "",
        "topic": quote(key, safe="") if key_type == "topic" else "",
        "start_ms": str(int(start * 1000) - 4 * span),
        "end_ms": str(int(end * 1000) + span),
    }
    try:
        return without_empty_filters(template, values).format(**values)
    except (KeyError, IndexError, ValueError):
        return template
