"""Which failures are worth retrying: an SMTP server's answers, and receiver URLs that cannot work (caught
when the settings are read, and never quoted: they may hold a token)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import yaml

from alerts.config import NotifierSettings
from alerts.notifiers.base import PermanentNotifyError, TransientNotifyError
from alerts.notifiers.dispatch import Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.slack import SlackNotifier
from finsent.settings import SettingsError, load_settings
from tests.test_alerts_notifiers import SmtpSink, make_alert

SECRET = "T0001B0002XXSECRETXX"


class Outcomes(list[tuple[str, str, int]]):
    def __call__(self, channel: str, outcome: str, n: int) -> None:
        self.append((channel, outcome, n))


def sink_answering(data_reply: str = "250 queued", rcpt_reply: str = "250 ok") -> SmtpSink:
    return SmtpSink(lambda raw: data_reply, rcpt_reply)


# ------------------------------------------------------------------------------------------------- SMTP


@pytest.mark.parametrize(
    ("data_reply", "rcpt_reply", "permanent"),
    [
        ("554 5.7.1 Message rejected as spam", "250 ok", True),
        ("552 5.3.4 Message size exceeds fixed limit", "250 ok", True),
        ("451 4.3.0 Try again later", "250 ok", False),
        ("250 queued", "550 5.1.1 No such user", True),
        ("250 queued", "450 4.2.0 Greylisted, try again", False),
    ],
    ids=["spam-554", "too-large-552", "busy-451", "no-user-550", "greylisted-450"],
)
def test_an_smtp_servers_5xx_is_permanent_and_its_4xx_transient(
    sinks: list[SmtpSink], data_reply: str, rcpt_reply: str, permanent: bool
) -> None:
    sinks.append(sink := sink_answering(data_reply, rcpt_reply))
    notifier = EmailNotifier("127.0.0.1", sink.port, sender="a@test", recipients=["b@test"], timeout_s=5)
    expected = PermanentNotifyError if permanent else TransientNotifyError
    with pytest.raises(expected) as exc:
        notifier.send([make_alert()], 0.0)
    assert (data_reply if rcpt_reply.startswith("2") else rcpt_reply)[:3] in str(exc.value)


def test_a_feature_the_smtp_server_lacks_is_permanent(sinks: list[SmtpSink]) -> None:
    sinks.append(sink := sink_answering())  # no STARTTLS offered
    notifier = EmailNotifier(
        "127.0.0.1", sink.port, sender="a@test", recipients=["b@test"], security="starttls", timeout_s=5
    )
    with pytest.raises(PermanentNotifyError, match="SMTPNotSupportedError"):
        notifier.send([make_alert()], 0.0)


def test_a_message_the_server_refuses_no_longer_wedges_the_e_mail_channel(sinks: list[SmtpSink]) -> None:
    """A 554 was retried for ever at the head of the queue; once three alerts were queued, each digest
    held the refused alert, so nothing was delivered again."""
    sink = SmtpSink(lambda raw: "554 5.7.1 rejected as spam" if b"ticker=BAD" in raw else "250 queued")
    sinks.append(sink)
    clock, outcomes = [1000.0], Outcomes()
    notifier = EmailNotifier("127.0.0.1", sink.port, sender="a@test", recipients=["b@test"], timeout_s=5)
    d = Dispatcher(
        [Channel(notifier, TokenBucket(2, 3))],
        retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=10.0),
        clock=lambda: clock[0],
        on_outcome=outcomes,
    )
    d.notify([make_alert("BAD")])
    for i in range(6):
        clock[0] += 120
        d.notify([make_alert(f"N{i}")])
    assert d.pending() == 0 and sink.refused == 1
    assert outcomes.count(("email", "failed", 1)) == 1 and len(sink.messages) == 6


# ------------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        f"https://hooks.example.com:{SECRET}/x",
        f"hooks.example.com/{SECRET}",
        f"ftp://hooks.example.com/{SECRET}",
    ],
    ids=["token-as-port", "no-scheme", "ftp"],
)
def test_a_url_httpx_cannot_use_fails_permanently_without_quoting_it(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """InvalidURL escaped the notifier (a traceback quoting the URL), UnsupportedProtocol was retried for
    ever: both now fail at once, naming the exception type only."""
    caplog.set_level(logging.DEBUG)
    outcomes = Outcomes()
    with httpx.Client(timeout=2) as client:  # a real transport: these fail before any connection
        d = Dispatcher([Channel(SlackNotifier(client, url), TokenBucket(60, 3))], on_outcome=outcomes)
        d.notify([make_alert()])
    assert outcomes == [("slack", "failed", 1)] and d.pending() == 0
    assert "bad URL: InvalidURL" in caplog.text or "bad URL: UnsupportedProtocol" in caplog.text
    assert SECRET not in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        f"https://hooks.example.com:{SECRET}/x",
        f"hooks.example.com/{SECRET}",
        f"ftp://hooks.example.com/{SECRET}",
        f"https://hooks example.com/{SECRET}",
        f"https://hooks.example.com/{SECRET}\nX-Other: 1",
        f"https:///{SECRET}",
    ],
    ids=["token-as-port", "no-scheme", "ftp", "space", "newline", "no-host"],
)
@pytest.mark.parametrize(
    "channel",
    ["slack.webhook_url", "webhook.url", "alertmanager.url"],
    ids=["slack", "webhook", "alertmanager"],
)
def test_a_receiver_url_that_cannot_work_is_refused_when_the_settings_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channel: str, url: str
) -> None:
    section, name = channel.split(".")
    config = tmp_path / "finsent.yaml"
    config.write_text(yaml.safe_dump({"alerts": {"notifiers": {section: {"enabled": True, name: url}}}}))
    monkeypatch.setenv("FINSENT_CONFIG", str(config))  # load_settings sets it: restored afterwards
    with pytest.raises(SettingsError) as exc:
        load_settings(config)
    assert f"alerts.notifiers.{section}: {name} " in str(exc.value) and SECRET not in str(exc.value)


def test_a_secret_files_newline_around_a_receiver_url_is_harmless() -> None:
    settings = NotifierSettings.model_validate(
        {"slack": {"enabled": True, "webhook_url": "https://h.example/x\n"}}
    )
    assert settings.slack.webhook_url is not None
    assert settings.slack.webhook_url.get_secret_value() == "https://h.example/x"


def test_the_url_of_a_channel_that_is_off_is_not_checked() -> None:
    settings = NotifierSettings.model_validate({"webhook": {"url": "to be filled in"}})
    assert settings.webhook.url is not None and not settings.webhook.enabled
