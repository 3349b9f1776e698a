"""An analyst's review of the notifications: a market-wide storm through the example Alertmanager
configuration, the order of a digest, example texts cut short, and the single alert's e-mail."""

from __future__ import annotations

import html
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.model import RULE_VOLUME, Alert
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import one_line
from alerts.notifiers.render import DIGEST_DETAILED, email_html, email_text, slack_text, title, worst_first
from tests import deploy_support as ds
from tests.test_alerts_notifiers import make_alert

ALERTMANAGER_FILE = ds.ALERTMANAGER_FILE


# ------------------------------------------------------------------------- a storm through Alertmanager


def selloff(n: int) -> list[Alert]:
    """`n` ticker alerts of one window, as a market-wide selloff fires them, and the `all` key's."""
    tickers = [
        replace(make_alert(f"T{i:02d}"), severity="critical" if i % 3 else "warning") for i in range(n)
    ]
    return [*tickers, replace(make_alert("all"), key_type="all")]


def finsent_route() -> dict[str, Any]:
    config = ds.load_yaml_docs(ALERTMANAGER_FILE)[0]
    (route,) = [r for r in config["route"]["routes"] if r["matchers"] == ['service="finsent"']]
    assert isinstance(route, dict)
    return route


def test_finsent_alerts_are_grouped_by_rule_and_key_type_not_by_key() -> None:
    assert finsent_route()["group_by"] == ["alertname", "key_type"]


@pytest.mark.prometheus
def test_a_selloff_is_one_alertmanager_group_per_rule_and_key_type(tmp_path: Path) -> None:
    """60 tickers firing in one window reach the analysts as one notification (per group), not 60 Slack
    posts and 60 e-mails: a real Alertmanager, loaded with the example config, fed by finsent's notifier."""
    am = ds.start_example_alertmanager(tmp_path)
    try:
        with httpx.Client(timeout=5) as client:
            AlertmanagerNotifier(client, am.url, firing_ttl_s=240).send(selloff(60), time.time())
        groups = _wait_for_groups(am.url, alerts=61)
    finally:
        am.server.stop()
    assert groups == {
        ("analysts", "FinsentNegativeSentimentSpike", "ticker"): [60],
        ("analysts", "FinsentNegativeSentimentSpike", "all"): [1],
    }


def _groups(url: str) -> dict[tuple[str, str, str], list[int]]:
    """Alertmanager's aggregation groups (one notification each): (receiver, alertname, key_type) -> the
    number of alerts of each such group."""
    found: dict[tuple[str, str, str], list[int]] = {}
    for group in httpx.get(f"{url}/api/v2/alerts/groups", timeout=5).json():
        labels = group["labels"]
        name = (group["receiver"]["name"], labels.get("alertname", ""), labels.get("key_type", ""))
        found.setdefault(name, []).append(len(group["alerts"]))
    return found


def _wait_for_groups(url: str, alerts: int) -> dict[tuple[str, str, str], list[int]]:
    deadline = time.monotonic() + 10
    groups = _groups(url)
    while time.monotonic() < deadline and sum(map(sum, groups.values())) < alerts:
        time.sleep(0.2)
        groups = _groups(url)
    return groups


def render_title(tmp_path: Path, alerts: list[dict[str, Any]]) -> str:
    """The analysts' Slack title as Alertmanager renders it for a group of `alerts` (amtool)."""
    common = {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)}
    data = {"receiver": "analysts", "status": "firing", "alerts": alerts, "commonLabels": common}
    return ds.render_analysts_template(tmp_path, "title", data).strip()


@pytest.mark.prometheus
def test_a_grouped_notification_counts_its_alerts_in_the_title(tmp_path: Path) -> None:
    """A group's alerts share no summary: the title counts them rather than end in an empty summary."""
    payload = AlertmanagerNotifier(httpx.Client(), "http://am", firing_ttl_s=240).payload(
        selloff(3)[:3], time.time()
    )
    alerts = [{**item, "status": "firing"} for item in payload]
    alerts[2]["status"] = "resolved"
    assert render_title(tmp_path, alerts) == (
        "[FIRING] FinsentNegativeSentimentSpike: 2 firing, 1 resolved, key type ticker"
    )
    # Prometheus' sentiment alerts share the receiver and have no key type: none is named
    sentiment = [
        {"status": "firing", "labels": {"alertname": "FinsentTickerSentimentDrop", "ticker": t}}
        for t in ("AAPL", "MSFT")
    ]
    assert render_title(tmp_path, sentiment) == "[FIRING] FinsentTickerSentimentDrop: 2 firing, 0 resolved"


# ------------------------------------------------------------------------------------- a digest's order


def ranked(key: str, severity: str, p_value: float, share: float = 0.5, status: str = "firing") -> Alert:
    return replace(make_alert(key, status=status), severity=severity, p_value=p_value, negative_share=share)


def storm_in_queue_order() -> tuple[list[Alert], list[str]]:
    """Alerts as the queue holds them, and their keys worst first."""
    alerts = [
        ranked("WARN_WEAK", "warning", 1e-3),
        ranked("CRIT_RESOLVED", "critical", 1e-20, status="resolved"),
        ranked("CRIT_WEAK", "critical", 1e-4),
        ranked("WARN_STRONG", "warning", 1e-9),
        ranked("CRIT_LESS_EXCESS", "critical", 1e-12, share=0.4),
        ranked("CRIT_STRONG", "critical", 1e-12, share=0.9),
    ]
    worst = ["CRIT_STRONG", "CRIT_LESS_EXCESS", "CRIT_WEAK", "WARN_STRONG", "WARN_WEAK", "CRIT_RESOLVED"]
    return alerts, worst


def keys_in(text: str) -> list[str]:
    return re.findall(r"ticker=([A-Z_]+\d*)", text)


def test_a_slack_digest_details_the_worst_alerts_first() -> None:
    alerts, worst = storm_in_queue_order()
    assert keys_in(slack_text(alerts, 1)) == worst


def test_an_email_digest_details_the_worst_alerts_first() -> None:
    alerts, worst = storm_in_queue_order()
    assert keys_in(email_text(alerts, 1)) == worst
    assert keys_in(email_html(alerts, 1)) == worst


def test_the_alerts_a_digest_only_names_are_the_least_pressing_in_the_same_order() -> None:
    """Past the detailed ones, "and N more" (Slack) and "Also due" (e-mail) name the rest, worst first."""
    filler = [ranked(f"MID{i:02d}", "critical", 1e-3) for i in range(DIGEST_DETAILED - 3)]
    alerts, worst = storm_in_queue_order()
    queue = alerts[:3] + filler + alerts[3:]
    expected = worst[:3] + [a.key for a in filler] + worst[3:]
    text = slack_text(queue, 1)
    rest = text.rsplit("\n", 1)[1]
    assert rest.startswith("and 3 more: ") and keys_in(rest) == expected[-3:]
    assert keys_in(text) == expected
    mail = email_text(queue, 1)
    assert keys_in(mail.split("Also due:")[1]) == expected[-3:]


def test_volume_alerts_rank_by_p_value_beside_share_alerts() -> None:
    share = ranked("SHARE", "warning", 1e-5)
    volume = replace(ranked("VOLUME", "warning", 1e-8), rule=RULE_VOLUME)
    assert keys_in(slack_text([share, volume], 1)) == ["VOLUME", "SHARE"]


# -------------------------------------------------------------------------------- example texts cut short


FLAG_US, FLAG_DE = "\U0001f1fa\U0001f1f8", "\U0001f1e9\U0001f1ea"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
THUMB_DARK = "\U0001f44d\U0001f3fd"
HEART = "\u2764\ufe0f"
E_ACUTE = "e\u0301"
KEYCAP = "1\ufe0f\u20e3"
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
# what reads as one character each
CLUSTERS = [
    "x",
    "x",
    FLAG_US,
    FLAG_DE,
    FAMILY,
    THUMB_DARK,
    HEART,
    E_ACUTE,
    KEYCAP,
    ENGLAND,
    *"caf",
    E_ACUTE,
    FLAG_US,
    FAMILY,
]


def test_a_cut_example_keeps_flags_and_zwj_sequences_whole() -> None:
    assert one_line("xx" + FLAG_US + FLAG_DE, 4) == "xx…"  # the reviewer's 'xx🇺…'
    assert one_line(FAMILY + " and more", 3) == "…"  # the reviewer's '👨\u200d…'
    assert one_line("news " + THUMB_DARK + "!", 7) == "news…"


def test_a_cut_never_splits_what_reads_as_one_character_nor_passes_its_bound() -> None:
    text = "".join(CLUSTERS)
    wholes = {"".join(CLUSTERS[:k]) for k in range(len(CLUSTERS) + 1)}
    for limit in range(1, len(text)):
        cut = one_line(text, limit)
        assert len(cut) <= limit and cut.endswith("…"), limit
        assert cut[:-1] in wholes, (limit, cut)


def test_a_cut_prefers_a_space_among_the_last_characters() -> None:
    assert one_line("ACME fraud probe widens", 20) == "ACME fraud probe…"
    assert one_line("x" * 30 + " tail", 20) == "x" * 19 + "…"  # no space near: cut where asked
    long_marks = "a" + "\u0301" * 100  # no real character: cut where asked, still within the bound
    assert len(one_line(long_marks, 60)) == 60


# ------------------------------------------------------------------------------ the single alert's e-mail


def test_a_single_alerts_html_email_shows_its_title_once() -> None:
    alert = make_alert()
    page = email_html([alert], 3)
    assert page.count(html.escape(title(alert))) == 1
    assert "<h2>" in page and "<h3>" not in page
    two = email_html([alert, make_alert("OTHER")], 3)
    assert two.count("<h3>") == 2 and two.count(html.escape(title(alert))) == 1


def test_a_p_value_that_is_no_number_sorts_as_the_least_pressing() -> None:
    """NaN compares false with everything, and a digest's order around it was left undefined."""
    ps = {"P05": 0.05, "NAN": float("nan"), "P01": 0.01, "P001": 0.001}
    alerts = [replace(make_alert(key), p_value=p) for key, p in ps.items()]
    assert [a.key for a in worst_first(alerts)] == ["P001", "P01", "P05", "NAN"]
