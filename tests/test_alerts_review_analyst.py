"""The analyst review of the alert stage: a spike right after a resolve, what summaries say (volume, a key
gone silent, the baseline floor and its rounding) and a dashboard link filtered to the alert's key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from alerts.backtest import run_events
from alerts.config import AlertSettings, dashboard_template_problem
from alerts.detector import Detector
from alerts.model import RULE_SHARE, RULE_VOLUME, Alert
from alerts.notifiers.render import summary_text
from alerts.synthetic import Plan, make_events
from tests.alert_helpers import BASE, W, cfg, feed
from tests.test_cli_errors import run_main

ROOT = Path(__file__).resolve().parents[1]


def opened(alerts: list[Alert], rule: str | None = None) -> list[Alert]:
    """The alerts that opened an episode (not escalations), of `rule` when given."""
    return [a for a in alerts if a.opens_episode and (rule is None or a.rule == rule)]


def window_of(ts: float, t0: float) -> int:
    return int((ts - t0) // W)


# ---- 1. the cooldown ------------------------------------------------------------------------------------
NORMAL: Plan = {"ticker:ACME": (60, 0.10)}
SPIKE: Plan = {"ticker:ACME": (60, 0.60)}


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_sustained_spike_right_after_a_resolve_fires_a_new_episode(seed: int) -> None:
    # the review's scenario: 2 windows at 60%, 5 normal, then 10 at ~60%. The cooldown counted down
    # only on normal windows, so it lasted as long as the spike and neither rule ever notified it.
    plans = [NORMAL] * 20 + [SPIKE] * 2 + [NORMAL] * 5 + [SPIKE] * 10 + [NORMAL] * 8
    result = run_events(BASE, make_events(plans, seed=seed, window_s=W))
    t0 = result.stats[0].window_start
    share = [a for a in result.alerts if a.rule == RULE_SHARE and not a.escalation]
    assert [a.status for a in share] == ["firing", "resolved", "firing", "resolved"], seed
    first, _, second, _ = share
    assert window_of(first.starts_at, t0) == 20
    # the new episode starts at the first high window, and is notified by its fourth (cooldown_windows)
    assert window_of(second.starts_at, t0) == 27
    assert window_of(second.window_end, t0) <= 27 + BASE.cooldown_windows
    assert opened(result.alerts) == [first, second]  # one alert per episode: no volume alert besides


@pytest.mark.parametrize("seed", [0, 1])  # seeds whose first episode resolves right before the high windows
def test_a_cooldown_of_one_window_still_holds_back_one_high_window(seed: int) -> None:
    """With `cooldown_windows: 1` a single high window right after a resolve fired again (a streak of 1
    met the threshold; and one high window makes two anomalous ones, itself and the two-window look that
    holds it), as with no cooldown at all; three in a row are a new episode."""
    one = cfg(cooldown_windows=1)
    for high, episodes in ((1, 1), (3, 2)):
        plans = [NORMAL] * 20 + [SPIKE] * 2 + [NORMAL] * 4 + [SPIKE] * high + [NORMAL] * 8
        result = run_events(one, make_events(plans, seed=seed, window_s=W))
        assert len(opened(result.alerts, RULE_SHARE)) == episodes, (seed, high)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_strong_second_leg_after_a_resolve_is_notified_at_its_second_window(seed: int) -> None:
    """A second review: three windows at 78-90 % after a resolve (baseline 10 %) were never notified,
    and the default cooldown held any re-spike back to its fourth window."""
    second_leg: Plan = {"ticker:ACME": (60, 0.85)}
    plans = [NORMAL] * 20 + [SPIKE] * 2 + [NORMAL] * 4 + [second_leg] * 3 + [NORMAL] * 8
    result = run_events(BASE, make_events(plans, seed=seed, window_s=W))
    t0 = result.stats[0].window_start
    _, second = opened(result.alerts, RULE_SHARE)
    assert second.severity == "critical"
    assert window_of(second.starts_at, t0) == 26 and window_of(second.window_end, t0) == 28  # end of 27


FLAP_SHARES = [0.10] * 20 + [0.40, 0.15, 0.40, 0.12, 0.40, 0.15, 0.10, 0.40, 0.10, 0.10, 0.40]
FLAP_SHARES += [0.10] * 5 + [0.45, 0.10, 0.45] + [0.10] * 10


@pytest.mark.parametrize("seed", range(5))
def test_a_level_hovering_at_the_threshold_after_a_resolve_still_gives_one_episode(seed: int) -> None:
    # /tmp/rA/flap.jsonl's shares: high windows after the resolve, but never cooldown_windows in a row
    plans: list[Plan] = [{"ticker:FLAP": (40, share)} for share in FLAP_SHARES]
    result = run_events(BASE, make_events(plans, seed=seed, window_s=W))
    statuses = [(a.rule, a.status) for a in result.alerts if not a.escalation]
    assert statuses == [(RULE_SHARE, "firing"), (RULE_SHARE, "resolved")], seed


@pytest.mark.parametrize("seed", [0, 1])
def test_a_share_hit_that_the_cooldown_holds_back_does_not_hide_a_volume_spike(seed: int) -> None:
    # after the resolve, small windows at 25% keep the share rule's cooldown from counting down (no
    # evidence either way) while the volume rule's does (few negatives). A spike then hits both rules:
    # the share rule may not fire, so it explains nothing, and the volume rule notifies it.
    moderate: Plan = {"ticker:ACME": (20, 0.25)}
    plans = [NORMAL] * 20 + [SPIKE] * 2 + [NORMAL] * 4 + [moderate] * 4 + [SPIKE] + [NORMAL] * 6
    result = run_events(BASE, make_events(plans, seed=seed, window_s=W))
    t0 = result.stats[0].window_start
    volume = opened(result.alerts, RULE_VOLUME)
    assert [window_of(a.starts_at, t0) for a in volume] == [30], seed
    assert [window_of(a.starts_at, t0) for a in opened(result.alerts, RULE_SHARE)] == [20]


# ---- 2. what a volume alert says ------------------------------------------------------------------------
def test_a_volume_summary_says_that_the_messages_rose_and_the_share_did_not() -> None:
    plans: list[Plan] = [{"ticker:ACME": (40, 0.10)}] * 20 + [{"ticker:ACME": (200, 0.10)}] * 2
    plans += [{"ticker:ACME": (40, 0.10)}] * 6
    result = run_events(BASE, make_events(plans, seed=5, window_s=W))
    (alert,) = opened(result.alerts)
    assert alert.rule == RULE_VOLUME
    pattern = (
        r"^\d+ negative messages for ticker ACME vs usual [\d.]+ per window, in 200 messages vs usual "
        r"(3[5-9]|4[0-5])\.\d: share (\d+)% vs baseline (\d+)% \(p=[\d.e+-]+\)$"
    )
    match = re.match(pattern, alert.summary)
    assert match, alert.summary
    assert f"{match[2]}%" == f"{alert.negative_share:.0%}" and f"{match[3]}%" == f"{alert.baseline_share:.0%}"
    assert int(match[2]) <= int(match[3]) + 2  # the share stayed where it was
    assert "\n" not in alert.summary


def test_more_coverage_at_the_usual_share_is_no_critical_volume_alert() -> None:
    """An earnings day, 400 messages instead of 40 at the usual share, paged as critical; a rise in
    negatives with the share up too still is."""
    busy: list[Plan] = (
        [{"ticker:COV": (40, 0.10)}] * 20 + [{"ticker:COV": (400, 0.11)}] + [{"ticker:COV": (40, 0.1)}]
    )
    (alert,) = opened(run_events(BASE, make_events(busy, seed=5, window_s=W)).alerts)
    assert (alert.rule, alert.severity) == (RULE_VOLUME, "warning")
    volume_only = cfg(alpha=1e-12)  # the share rule kept quiet: the volume rule's own severity
    worse: list[Plan] = (
        [{"ticker:COV": (40, 0.10)}] * 20 + [{"ticker:COV": (300, 0.25)}] + [{"ticker:COV": (40, 0.1)}]
    )
    alerts = opened(run_events(volume_only, make_events(worse, seed=5, window_s=W)).alerts, RULE_VOLUME)
    assert [a.severity for a in alerts] == ["critical"]


# ---- 3. a key gone silent ---------------------------------------------------------------------------------
def _silent_after_spike(normal_after: int) -> list[Alert]:
    both: Plan = {"ticker:ACME": (40, 0.10), "ticker:OTHER": (40, 0.1)}
    spike: Plan = {"ticker:ACME": (40, 0.70), "ticker:OTHER": (40, 0.1)}
    calm: Plan = {"ticker:ACME": (40, 0.0), "ticker:OTHER": (40, 0.1)}  # clearly normal at once
    quiet: Plan = {"ticker:OTHER": (40, 0.1)}  # ACME: no messages at all
    plans = [both] * 20 + [spike] + [calm] * normal_after + [quiet] * 5
    return feed(Detector(BASE), make_events(plans, seed=2, window_s=W))


def test_a_key_that_goes_silent_resolves_saying_so_not_back_to_normal() -> None:
    fire, done = [a for a in _silent_after_spike(0) if a.key == "ACME"]
    assert fire.status == "firing" and done.status == "resolved"
    assert done.summary == f"{fire.summary} (resolved: no messages for 3 windows)"
    text = summary_text(done)
    assert "back to normal" not in text
    assert "alert ended, no messages for 3 windows" in text


def test_a_resolve_of_normal_windows_then_silence_says_both() -> None:
    _, done = [a for a in _silent_after_spike(1) if a.key == "ACME"]
    assert done.summary.endswith("(resolved: 1 normal window and no messages for 2 windows)")


def test_empty_windows_before_a_normal_one_are_not_called_normal() -> None:
    """Empty, calm, empty after a spike said "2 normal windows, then no messages for 1 window": only
    one of the three had messages."""
    spike: Plan = {"ticker:ACME": (40, 0.70), "ticker:OTHER": (40, 0.1)}
    calm: Plan = {"ticker:ACME": (40, 0.0), "ticker:OTHER": (40, 0.1)}
    quiet: Plan = {"ticker:OTHER": (40, 0.1)}
    both: Plan = {"ticker:ACME": (40, 0.10), "ticker:OTHER": (40, 0.1)}
    plans = [both] * 20 + [spike] + [quiet, calm, quiet] + [quiet] * 3
    _, done = [a for a in feed(Detector(BASE), make_events(plans, seed=2, window_s=W)) if a.key == "ACME"]
    assert done.summary.endswith("(resolved: 1 normal window and no messages for 2 windows)")


def test_a_key_with_messages_resolves_back_to_normal_as_before() -> None:
    _, done = [a for a in _silent_after_spike(4) if a.key == "ACME"]
    assert "resolved:" not in done.summary and "back to normal" in summary_text(done)


# ---- 4. the baseline's floor and rounding -----------------------------------------------------------------
def test_firing_and_resolve_give_the_baseline_rounded_alike() -> None:
    # the review's case: the firing said 9%, the resolve (worded from baseline_share) 10%
    fire, done = [a for a in _silent_after_spike(0) if a.key == "ACME"]
    shown = re.search(r"vs baseline (\d+)%", fire.summary)
    assert shown and shown[1] == f"{fire.baseline_share:.0%}".rstrip("%")
    assert f"vs baseline {shown[1]}%" in summary_text(done)


def test_a_baseline_at_the_floor_is_said_to_be_the_floor() -> None:
    plans: list[Plan] = [{"ticker:TINY": (40, 0.0)}] * 20 + [{"ticker:TINY": (40, 0.5)}] * 2
    plans += [{"ticker:TINY": (40, 0.0)}] * 5
    result = run_events(cfg(volume_rule=False), make_events(plans, seed=1, window_s=W))
    (alert,) = opened(result.alerts)
    assert alert.baseline_share == BASE.min_baseline_share
    assert re.search(r"vs baseline 2% \(floor; \d+ of \d+ messages, p=", alert.summary), alert.summary
    # a baseline above the floor is not marked
    normal = [a for a in _silent_after_spike(0) if a.key == "ACME"]
    assert all("floor" not in a.summary for a in normal)


# ---- 5. a dashboard link filtered to the key ------------------------------------------------------------
DASHBOARD = "https://grafana/d/finsent-sentiment?from={start_ms}&to={end_ms}"
TEMPLATE = DASHBOARD + "&var-ticker={ticker}&var-topic={topic}"
LINK = r"https://grafana/d/finsent-sentiment\?from=\d+&to=\d+"


def test_the_dashboard_link_names_the_ticker_or_topic_of_the_alert() -> None:
    keys = ("ticker:ACME", "topic:rate cuts", "source:wire")
    normal: Plan = {key: (60, 0.1) for key in keys}
    spike: Plan = {key: (60, 0.7) for key in keys}
    events = make_events([normal] * 12 + [spike], window_s=W)
    result = run_events(cfg(dashboard_url_template=TEMPLATE), events)
    links = {a.key_type: a.dashboard_url for a in opened(result.alerts, RULE_SHARE)}
    assert set(links) == {"ticker", "topic", "source"}
    assert re.fullmatch(LINK + "&var-ticker=ACME", links["ticker"]), links
    assert re.fullmatch(LINK + "&var-topic=rate%20cuts", links["topic"]), links
    # a key of another type: its variables are left out, so the dashboard keeps their defaults (All)
    assert re.fullmatch(LINK, links["source"]), links


def test_key_placeholders_are_url_encoded() -> None:
    template = "https://g/d/x?type={key_type}&key={key}&t={ticker}#{rule}"
    plans: list[Plan] = [{"ticker:A&B": (60, 0.1)}] * 12 + [{"ticker:A&B": (60, 0.7)}]
    result = run_events(cfg(dashboard_url_template=template), make_events(plans, window_s=W))
    (alert,) = opened(result.alerts)
    assert alert.dashboard_url == "https://g/d/x?type=ticker&key=A%26B&t=A%26B#negative_share"


@pytest.mark.parametrize(
    "template", ["https://g/d/x?var-key={keys}", "https://g/d/x?{}", "https://g/d/x?var-key={key", "{key!r}"]
)
def test_a_template_with_an_unknown_or_broken_placeholder_is_reported_not_refused(
    template: str,
    clean_finsent_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused with the settings, it stopped every command, the labeler too, on a template an earlier
    release sent as it was (a Grafana Explore link holds JSON braces)."""
    assert AlertSettings(dashboard_url_template=template).dashboard_url_template == template
    assert dashboard_template_problem(template) is not None
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("FINSENT_ALERTS__DASHBOARD_URL_TEMPLATE", template)
    code, _, err = run_main(["check-config"], capsys)
    assert code == 0
    assert (
        "note: alerts.dashboard_url_template " in err and "alert links are sent as written, unfilled" in err
    )


def test_the_shipped_template_opens_the_sentiment_dashboard_filtered_by_its_variables() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/finsent-sentiment.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    configmap = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text())
    template = yaml.safe_load(configmap["data"]["config.yaml"])["alerts"]["dashboard_url_template"]
    AlertSettings(dashboard_url_template=template)  # valid
    assert f"/d/{dashboard['uid']}?" in template
    filters = dict(re.findall(r"var-(\w+)=\{(\w+)\}", template))
    assert filters == {"ticker": "ticker", "topic": "topic"}
    assert set(filters) <= variables
