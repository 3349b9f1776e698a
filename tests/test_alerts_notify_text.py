"""What notifications say, built partly from news text a third-party labeler sent: text that is not valid
Unicode, links that would forge lines, and resolves that must read as resolves."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.events import InvalidEvent, parse_event
from alerts.model import RULE_VOLUME, Alert, Example
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.dispatch import Channel, Dispatcher, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.log import LogNotifier
from alerts.notifiers.render import plain_lines, safe_url, slack_text
from alerts.notifiers.webhook import WebhookNotifier
from tests import deploy_support as ds
from tests import servers
from tests.servers import Recorder
from tests.test_alerts_notifiers import SmtpSink, make_alert

HALF_EMOJI = "\ud83d"  # what json.loads makes of "\ud83d": half of a surrogate pair, cut by a labeler
FORGED = "\n2026-11-30 19:00:00,000 ERROR finsent.alerts: RESOLVED: FinsentNegativeSentimentSpike"


class Outcomes(list[tuple[str, str, int]]):
    def __call__(self, channel: str, outcome: str, n: int) -> None:
        self.append((channel, outcome, n))


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    try:
        yield sink
    finally:
        sink.close()


def labeled(**fields: Any) -> dict[str, Any]:
    """A labeled event as the topic carries it, decoded by json.loads like the worker does."""
    event = {
        "id": "m1",
        "key_type": "ticker",
        "key": "ACME",
        "published_at": "2026-11-30T12:00:00Z",
        "sentiment": "negative",
        "text": "ACME plunges",
        "url": "https://news.example/a",
        **fields,
    }
    decoded = json.loads(json.dumps(event))  # "\ud83d" survives the round trip, as from a labeler
    assert isinstance(decoded, dict)
    return decoded


# ------------------------------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize("field", ["key", "event_id", "id"])
def test_an_event_whose_identity_is_not_valid_unicode_is_invalid(field: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(labeled(**{field: f"ACME{HALF_EMOJI}"}), "negative")
    assert exc.value.code == "schema" and "surrogate" in str(exc.value)


def test_half_a_character_in_an_events_text_becomes_a_replacement_mark() -> None:
    event = parse_event(
        labeled(text=f"ACME {HALF_EMOJI} plunges 😀", url=f"https://n.example/{HALF_EMOJI}"), "negative"
    )
    assert event.text == "ACME \ufffd plunges 😀" and event.url == ""
    event.text.encode()  # valid UTF-8 now


def stored_alert_with_half_an_emoji(key: str = "BAD") -> Alert:
    """An alert as a state saved before parse_event checked the text may still hold."""
    return replace(
        make_alert(key), examples=(Example(f"headline {HALF_EMOJI} cut", "https://n.example/", 0.9),)
    )


def test_an_alert_that_cannot_be_rendered_fails_alone_and_the_rest_is_e_mailed(smtp_sink: SmtpSink) -> None:
    outcomes = Outcomes()
    notifier = EmailNotifier("127.0.0.1", smtp_sink.port, sender="a@test", recipients=["b@test"])
    d = Dispatcher([Channel(notifier, TokenBucket(60, 5))], on_outcome=outcomes)
    d.notify([make_alert("A"), make_alert("B"), stored_alert_with_half_an_emoji()])
    assert d.pending() == 0
    assert outcomes.count(("email", "failed", 1)) == 1 and sum(n for _, o, n in outcomes if o == "sent") == 2
    delivered = "".join(m.as_string() for m in smtp_sink.messages)
    assert "ticker=A" in delivered and "ticker=B" in delivered and "ticker=BAD" not in delivered


def test_an_alert_that_cannot_be_rendered_never_reaches_the_webhook(recorder: Recorder) -> None:
    outcomes = Outcomes()
    with httpx.Client(timeout=5) as client:
        d = Dispatcher(
            [Channel(WebhookNotifier(client, recorder.url), TokenBucket(60, 5))], on_outcome=outcomes
        )
        d.notify([make_alert("A"), stored_alert_with_half_an_emoji(), make_alert("B")])
    bodies = recorder.json()
    assert [a["key"] for body in bodies for a in body["alerts"]] == ["A", "B"]  # type: ignore[index]
    assert ("webhook", "failed", 1) in outcomes and d.pending() == 0


def test_a_key_that_cannot_be_hashed_fails_alone_on_alertmanager(
    alertmanager: servers.Alertmanager, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = Outcomes()
    a, c = make_alert(f"A{unique}"), make_alert(f"C{unique}")
    with httpx.Client(timeout=5) as client:
        am = AlertmanagerNotifier(client, alertmanager.url, firing_ttl_s=240)
        d = Dispatcher([Channel(am, TokenBucket(60, 5), native_batches=True)], on_outcome=outcomes)
        with caplog.at_level(logging.ERROR):
            d.notify([a, make_alert(f"X{unique}{HALF_EMOJI}")])
            d.resend([c, make_alert(f"Y{unique}{HALF_EMOJI}")])
        held = httpx.get(f"{alertmanager.url}/api/v2/alerts", timeout=5).json()
        am.send([a.resolved(time.time() - 1), c.resolved(time.time() - 1)], time.time())  # leave it clean
    keys = sorted(k for alert in held if unique in (k := alert["labels"]["key"]))
    assert keys == [a.key, c.key] and outcomes.count(("alertmanager", "failed", 1)) == 2
    assert "cannot be rendered" in caplog.text


# ------------------------------------------------------------------------------------ links and lines


@pytest.mark.parametrize(
    "url",
    [
        "https://n.example/a\nforged",
        "https://n.example/a\tb",
        "https://n.example/a b",
        "https://n.example/\x85x",
    ],
)
def test_a_url_with_whitespace_or_a_control_character_is_no_link(url: str) -> None:
    assert safe_url(url) == ""
    assert safe_url(" https://n.example/a\n") == "https://n.example/a"  # around it is harmless


def test_a_link_cannot_forge_a_log_line_or_an_annotation_line(caplog: pytest.LogCaptureFixture) -> None:
    alert = replace(make_alert(), examples=(Example("bad news", "https://news.example/a" + FORGED, 0.9),))
    with caplog.at_level(logging.WARNING, logger="finsent.alerts"):
        LogNotifier().send([alert], time.time())
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    am = AlertmanagerNotifier(httpx.Client(), "http://am", firing_ttl_s=240)
    annotations = am.payload([alert], time.time())[0]["annotations"]
    assert annotations["examples"] == "bad news"
    assert "FinsentNegativeSentimentSpike" not in slack_text([alert], 3).split("\n", 1)[1]


# ------------------------------------------------------------------------------------------- resolves


def test_a_resolve_reads_as_a_resolve_on_every_channel() -> None:
    firing = make_alert()
    resolved = firing.resolved(firing.window_end + 2700)
    said = (
        "Negative share for ticker ACME is back to normal; the last anomalous window had 50% vs baseline 10%"
    )
    am = AlertmanagerNotifier(httpx.Client(), "http://am", firing_ttl_s=240)
    texts = [
        slack_text([resolved], 3),
        "\n".join(plain_lines(resolved, 3)),
        am.payload([resolved], time.time())[0]["annotations"]["summary"],
    ]
    for text in texts:
        assert said in text and "is 50%" not in text
    assert "is 50% vs baseline 10%" in slack_text([firing], 3)  # the firing says it as it is


def test_a_volume_resolve_and_the_detectors_reason_are_said() -> None:
    volume = replace(make_alert(), rule=RULE_VOLUME, negative_count=40.0, expected_negative=8.0)
    retired = replace(volume, summary=volume.summary + " (resolved: rule negative_volume is switched off)")
    text = "\n".join(plain_lines(retired.resolved(retired.window_end + 60), 3))
    assert (
        "Negative messages for ticker ACME: alert ended, rule negative_volume is switched off; the last "
        "anomalous window had 40 vs usual 8.0" in text
    )
    assert "back to normal" not in text  # nothing was measured
    volume_resolve = "\n".join(plain_lines(volume.resolved(volume.window_end + 60), 3))
    assert (
        "Negative messages for ticker ACME are back to normal; the last anomalous window had 40 vs usual 8.0"
        f", in {volume.count} messages: share {volume.negative_share:.0%} vs baseline "
        f"{volume.baseline_share:.0%}" in volume_resolve
    ), "the total and the share, as the firing gave them: more coverage is not more negativity"


# ------------------------------------------------------------- the analysts' Alertmanager templates


def render_analysts(tmp_path: Path, template: str, status: str, annotations: dict[str, str]) -> str:
    """The analysts receiver's template `template` as Alertmanager renders it (amtool)."""
    alert = {
        "status": status,
        "labels": {"alertname": "FinsentNegativeSentimentSpike"},
        "annotations": annotations,
    }
    data = {
        "receiver": "analysts",
        "status": status,
        "alerts": [alert],
        "commonLabels": alert["labels"],
        "commonAnnotations": annotations,
    }
    return ds.render_analysts_template(tmp_path, template, data)


@pytest.mark.prometheus
def test_the_analysts_hear_of_a_resolve_as_a_resolve_with_its_window(tmp_path: Path) -> None:
    firing = make_alert()
    resolved = firing.resolved(firing.window_end + 60)
    am = AlertmanagerNotifier(httpx.Client(), "http://am", firing_ttl_s=240)
    annotations = am.payload([resolved], time.time())[0]["annotations"]
    annotations["summary"] += " <b> & more"
    title = render_analysts(tmp_path, "title", "resolved", annotations)
    assert title.startswith(
        "[RESOLVED] FinsentNegativeSentimentSpike: Negative share for ticker ACME is back"
    )
    assert title.rstrip().endswith("&lt;b&gt; &amp; more")
    text = render_analysts(tmp_path, "text", "resolved", annotations)
    assert text.startswith("[RESOLVED] Negative share") and f"window {annotations['window']}\n" in text
    config = ds.load_yaml_docs(ds.DEPLOY / "alertmanager" / "alertmanager.yml")[0]
    (receiver,) = [r for r in config["receivers"] if r["name"] == "analysts"]
    assert all(c["send_resolved"] for c in receiver["email_configs"] + receiver["slack_configs"])
