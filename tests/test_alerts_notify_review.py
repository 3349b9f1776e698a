"""What a review of the notifiers found: credentials a receiver echoes, SMTP recipients refused one by one
and a QUIT answered oddly, Retry-After values that switched backoff off or outlasted Alertmanager's firing
TTL, re-sends that held the worker's thread and swelled the metrics, and control characters in message
text. Receivers are local HTTP and SMTP servers, or MockTransports on a virtual clock where time matters."""

from __future__ import annotations

import base64
import email.utils
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from alerts.config import AlertmanagerChannel, LogChannel, NotifierSettings, WebhookChannel
from alerts.events import parse_event
from alerts.model import Alert, Example
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import header_secrets, logged_text, one_line, redacted
from alerts.notifiers.dispatch import Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.factory import build_dispatcher
from alerts.notifiers.log import LogNotifier
from alerts.notifiers.render import email_html, email_text, slack_text
from tests.servers import EchoServer
from tests.test_alerts_delivery import Clock, Outcomes
from tests.test_alerts_notifiers import SmtpSink, make_alert

TOKEN = "sk-live-TOPSECRET-TOKEN-123"
AM_TOKEN = "AMTOKEN-SECRET-456"
AM_USER, AM_PASSWORD = "finsent", "hunter2-LONG-PASSWORD"
ESCAPES = "\x1b[1A\x1b[2KINFO finsent: all clear\x08\x08\x9b2J\u202egnp.exe\u202c\u2066x\u2069"


# ------------------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("channel", "secrets"),
    [
        ("webhook", [f"Bearer {TOKEN}", TOKEN]),
        ("bearer", [f"Bearer {AM_TOKEN}", AM_TOKEN]),
        (
            "basic",
            [
                base64.b64encode(f"{AM_USER}:{AM_PASSWORD}".encode()).decode(),
                f"{AM_USER}:{AM_PASSWORD}",
                AM_PASSWORD,
            ],
        ),
    ],
)
def test_credentials_a_receiver_echoes_are_not_logged(
    echo: EchoServer, channel: str, secrets: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The log named the webhook's Authorization, Alertmanager's bearer token or Basic credentials
    whenever the receiver quoted them in its error answer: only the URL was cut out."""
    if channel == "webhook":
        settings = NotifierSettings(
            webhook=WebhookChannel(
                enabled=True,
                url=SecretStr(f"{echo.url}/hook"),
                authorization=SecretStr(f"Bearer {TOKEN}"),
                secret=SecretStr("hmac-key"),
            ),
            log=LogChannel(enabled=False),
        )
    else:
        am = (
            AlertmanagerChannel(enabled=True, url=echo.url, bearer_token=SecretStr(AM_TOKEN))
            if channel == "bearer"
            else AlertmanagerChannel(
                enabled=True, url=echo.url, username=AM_USER, password=SecretStr(AM_PASSWORD)
            )
        )
        settings = NotifierSettings(alertmanager=am, log=LogChannel(enabled=False))
    outcomes = Outcomes()
    d = build_dispatcher(settings, on_outcome=outcomes)
    try:
        with caplog.at_level(logging.WARNING):
            d.notify([make_alert()])
    finally:
        d.close()
    assert outcomes.total(d.channels[0].notifier.name, "failed") == 1
    assert "HTTP 401" in caplog.text and "<redacted>" in caplog.text
    for secret in secrets:
        assert secret not in caplog.text
    assert "sha256=" not in caplog.text  # the webhook's signature is cut out too


def test_a_short_password_is_cut_out_with_its_user_but_not_alone() -> None:
    """Like a short part of the URL: "pw" alone could be any word of the answer."""
    token = base64.b64encode(b"finsent:pw").decode()
    assert header_secrets(f"Basic {token}") >= {f"Basic {token}", token, "finsent:pw"}
    assert "pw" not in header_secrets(f"Basic {token}")
    said = redacted(
        f"user finsent:pw refused (pw wrong), got Basic {token}", "http://am/", [f"Basic {token}"]
    )
    assert "finsent:pw" not in said and token not in said and "(pw wrong)" in said


def test_a_token_quoted_json_escaped_is_cut_out() -> None:
    said = redacted('{"got":"Bearer abc\\/def+ghi=="}', "http://am/", ["Bearer abc/def+ghi=="])
    assert "abc" not in said


# ------------------------------------------------------------------------------------------------ e-mail


def refusing(address: str) -> str:
    if address.startswith("gone"):
        return "550 5.1.1 no such user"
    if address.startswith("busy"):
        return "450 4.2.0 mailbox busy, try later"
    return "250 ok"


def email_dispatcher(sink: SmtpSink, recipients: list[str], outcomes: Outcomes) -> Dispatcher:
    notifier = EmailNotifier("127.0.0.1", sink.port, sender="a@test", recipients=recipients, timeout_s=5)
    return Dispatcher(
        [Channel(notifier, TokenBucket(600, 10))],
        retry=RetryPolicy(initial_s=0.1, max_s=0.2),
        on_outcome=outcomes,
    )


def test_recipients_refused_one_by_one_are_logged_and_counted_failed_and_the_others_not_sent_twice(
    sinks: list[SmtpSink], caplog: pytest.LogCaptureFixture
) -> None:
    """smtplib raises only when every recipient is refused: the others it returns, and they were lost
    without a word, the alert counted `sent`."""
    sinks.append(sink := SmtpSink(rcpt_reply=refusing))
    outcomes = Outcomes()
    d = email_dispatcher(sink, ["oncall@test", "gone@test", "busy@test"], outcomes)
    with caplog.at_level(logging.WARNING):
        d.notify([make_alert()])
        d.flush()
    assert [rcpts for _, rcpts in sink.envelopes] == [["<oncall@test>"]]  # once: not retried
    assert d.pending() == 0
    assert outcomes.total("email", "failed") == 1 and outcomes.total("email", "sent") == 1
    (record,) = [r for r in caplog.records if "delivered in part" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "gone@test: 550 5.1.1 no such user" in record.getMessage()
    assert "busy@test: 450" in record.getMessage()


def test_recipients_refused_only_for_now_are_a_warning(
    sinks: list[SmtpSink], caplog: pytest.LogCaptureFixture
) -> None:
    sinks.append(sink := SmtpSink(rcpt_reply=refusing))
    outcomes = Outcomes()
    d = email_dispatcher(sink, ["oncall@test", "busy@test"], outcomes)
    with caplog.at_level(logging.WARNING):
        d.notify([make_alert()])
    (record,) = [r for r in caplog.records if "delivered in part" in r.getMessage()]
    assert record.levelno == logging.WARNING and "for now (4xx)" in record.getMessage()
    assert len(sink.messages) == 1 and outcomes.total("email", "failed") == 0  # not lost: sent again later
    assert d.follow_ups() == 1


@pytest.mark.parametrize("quit_reply", ["421 4.3.2 shutting down", "521 5.3.2 no", ""])
def test_an_odd_answer_to_quit_after_the_message_was_accepted_is_no_failure(
    sinks: list[SmtpSink], quit_reply: str
) -> None:
    """`with smtp:` raised on a QUIT answered otherwise than 221: a 4xx had the delivered e-mail sent
    again at every backoff, a 5xx counted it failed."""
    sinks.append(sink := SmtpSink(quit_reply=quit_reply))
    outcomes = Outcomes()
    d = email_dispatcher(sink, ["oncall@test"], outcomes)
    d.notify([make_alert()])
    d.flush()
    assert len(sink.messages) == 1 and d.pending() == 0
    assert outcomes.seen == [("email", "sent", 1)]


# ---------------------------------------------------------------------------------------------- backoff


def failing_dispatcher(
    clock: Clock, answer: Callable[[float], httpx.Response], outcomes: Outcomes | None = None
) -> tuple[Dispatcher, Channel]:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: answer(clock.now)))
    channel = Channel(
        AlertmanagerNotifier(client, "http://am:9093", firing_ttl_s=240, resend_interval_s=60),
        TokenBucket(600, 10),
        native_batches=True,
    )
    d = Dispatcher(
        [channel],
        retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=10.0),
        clock=clock,
        wall_clock=clock,
        on_outcome=outcomes,
    )
    return d, channel


@pytest.mark.parametrize("retry_after", ["0", "past-date"])
def test_a_retry_after_of_zero_or_in_the_past_keeps_the_backoff(retry_after: str) -> None:
    """The receiver's 0 was taken as is: the failing channel was tried at every flush (41 requests in
    2 s)."""
    clock = Clock(1_800_000_000.0)
    value = email.utils.formatdate(clock.now - 60, usegmt=True) if retry_after == "past-date" else "0"
    d, channel = failing_dispatcher(clock, lambda now: httpx.Response(503, headers={"Retry-After": value}))
    d.notify([make_alert()])
    assert channel.not_before == clock.now + 0.5
    clock.now = channel.not_before
    d.flush()
    assert channel.not_before == clock.now + 1.0  # doubling, as without a Retry-After


def test_a_retry_after_longer_than_the_backoff_is_still_honoured() -> None:
    clock = Clock(1_800_000_000.0)
    d, channel = failing_dispatcher(clock, lambda now: httpx.Response(429, headers={"Retry-After": "30"}))
    d.notify([make_alert()])
    assert channel.not_before == clock.now + 30.0


@pytest.mark.parametrize("setting", ["backoff_initial_s", "backoff_max_s"])
def test_a_backoff_of_zero_is_refused(setting: str) -> None:
    with pytest.raises(ValidationError, match=setting):
        NotifierSettings.model_validate({setting: 0})
    waits = {"initial_s": 0.5, "max_s": 10.0, setting.removeprefix("backoff_"): 0.0}
    with pytest.raises(ValueError, match="positive"):
        RetryPolicy(initial_s=waits["initial_s"], max_s=waits["max_s"])


def test_alertmanager_waits_at_most_within_the_firing_ttl() -> None:
    """Half of what the last re-send's endsAt leaves once the next is due; a quarter of the TTL when the
    interval is not known."""
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert AlertmanagerNotifier(client, "http://am", firing_ttl_s=240, resend_interval_s=60).max_wait_s == 90
    assert AlertmanagerNotifier(client, "http://am", firing_ttl_s=240).max_wait_s == 60
    # ends_at_factor near 1: little or no time to spare, and still a backoff that grows (to 5 s), not 0.5 s
    assert AlertmanagerNotifier(client, "http://am", firing_ttl_s=60, resend_interval_s=60).max_wait_s == 5
    assert AlertmanagerNotifier(client, "http://am", firing_ttl_s=72, resend_interval_s=60).max_wait_s == 6
    settings = NotifierSettings(
        alertmanager=AlertmanagerChannel(enabled=True, url="http://am:9093"), log=LogChannel(enabled=False)
    )
    d = build_dispatcher(settings, client=client)
    assert getattr(d.channels[0].notifier, "max_wait_s", None) == 90


def test_a_long_retry_after_never_lets_alertmanager_resolve_a_firing_alert() -> None:
    """One 429 with `Retry-After: 600` held the channel, re-sends included, past the endsAt of the last
    re-send: Alertmanager resolved the alert, and the next re-send fired it again. Flushes every 0.5 s and
    re-sends every 60 s, as the worker does."""
    clock = Clock(1_800_000_000.0)
    start, delivered = clock.now, []

    def answer(now: float) -> httpx.Response:
        if start + 60 <= now < start + 61:
            return httpx.Response(429, headers={"Retry-After": "600"})
        delivered.append(now)
        return httpx.Response(200)

    d, _ = failing_dispatcher(clock, answer)
    firing = [make_alert("ACME", starts_at=start - 600)]
    last = -1e9
    while clock.now < start + 900:
        d.flush()
        if clock.now - last >= 60:
            last = clock.now
            d.resend(firing)
        clock.now += 0.5
    gaps = [later - earlier for earlier, later in itertools.pairwise(delivered)]
    assert max(gaps) < 240 - 60  # each re-send lands well before the last one's endsAt
    assert start + 150 in delivered  # tried again once the capped wait (90 s) was over


# --------------------------------------------------------------------------------------------- re-sends


class SlowAlertmanager:
    """A MockTransport Alertmanager whose every answer takes `seconds` of the virtual clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds
        self.keys: list[str] = []
        self.up = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.clock.now += self.seconds
        if not self.up:
            return httpx.Response(503)
        self.keys.extend(item["labels"]["key"] for item in json.loads(request.content))
        return httpx.Response(200)

    def dispatcher(self, outcomes: Outcomes | None = None) -> Dispatcher:
        client = httpx.Client(transport=httpx.MockTransport(self))
        am = AlertmanagerNotifier(client, "http://am:9093", firing_ttl_s=240, resend_interval_s=60)
        return Dispatcher(
            [Channel(am, TokenBucket(120, 3), native_batches=True)],
            retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=60.0),
            clock=self.clock,
            on_outcome=outcomes,
        )


def test_a_re_send_spends_a_bounded_time_per_step_and_goes_on_at_the_next_flushes() -> None:
    """500 firing alerts at 2 s per answer held one step 10 s (3,000 at 10 s passed max.poll.interval.ms
    and had the worker evicted): now each call spends the budget (2 s) and one request at most."""
    clock = Clock()
    am = SlowAlertmanager(clock, 1.5)
    d = am.dispatcher()
    firing = [make_alert(f"K{i:03d}") for i in range(500)]
    spent: list[float] = []
    t0 = clock.now
    d.resend(firing)
    spent.append(clock.now - t0)
    while d.resending():
        t0 = clock.now
        d.flush()
        spent.append(clock.now - t0)
    assert max(spent) <= 2.0 + 1.5 and len(spent) == 3  # 2 requests, 2, then the last 1
    assert sorted(am.keys) == sorted(a.key for a in firing)  # each once


def test_a_new_round_starts_with_the_alerts_the_last_one_did_not_reach() -> None:
    clock = Clock()
    am = SlowAlertmanager(clock, 3.0)  # one request per call
    d = am.dispatcher()
    firing = [make_alert(f"K{i:03d}") for i in range(300)]
    d.resend(firing)  # K000-K099
    d.resend(firing)  # the next interval, before a flush went on: K100-K199 first
    d.flush()
    assert am.keys[100:] == [f"K{i:03d}" for i in range(100, 300)]


def test_a_transition_takes_its_alert_out_of_the_unfinished_round() -> None:
    """A firing copy re-sent after the alert's resolve would fire it again in Alertmanager."""
    clock = Clock()
    am = SlowAlertmanager(clock, 3.0)
    d = am.dispatcher()
    firing = [make_alert(f"K{i:03d}") for i in range(150)]
    d.resend(firing)  # K000-K099; K100-K149 left
    resolve = replace(firing[120], status="resolved", ends_at=firing[120].starts_at + 300)
    d.notify([resolve])
    while d.resending():
        d.flush()
    assert am.keys.count("K120") == 1  # the resolve, not the stale firing copy
    assert len(am.keys) == 150


def test_a_handover_ends_the_round() -> None:
    clock = Clock()
    am = SlowAlertmanager(clock, 3.0)
    d = am.dispatcher()
    d.resend([make_alert(f"K{i:03d}") for i in range(150)])
    d.drop_pending(lambda a: True)
    assert d.resending() == 0


def test_re_sends_are_not_counted_sent_and_a_failing_one_counts_each_alert_once() -> None:
    """Each re-send counted `sent` per firing alert, and each failed one `failed` per alert, every
    interval: an hour down was 600 `failed` for 10 alerts."""
    clock, outcomes = Clock(), Outcomes()
    am = SlowAlertmanager(clock, 0.0)
    d = am.dispatcher(outcomes)
    firing = [make_alert(f"K{i}") for i in range(10)]
    for _ in range(60):
        d.resend(firing)
        clock.now += 60
    assert outcomes.seen == [] and len(am.keys) == 600
    am.up = False
    for _ in range(60):
        d.resend(firing)
        d.flush()
        clock.now += 60
    assert outcomes.seen == [("alertmanager", "failed", 10)]
    am.up = True
    d.resend(firing)
    am.up = False
    for _ in range(5):
        clock.now += 60
        d.resend(firing)
    assert outcomes.total("alertmanager", "failed") == 20  # a new outage counts them again, once


# ------------------------------------------------------------------------------------- control characters


def escaped_alert() -> Alert:
    """An alert whose example text came through parse_event holding terminal escapes and bidi overrides."""
    event = parse_event(
        {
            "id": "m1",
            "key_type": "ticker",
            "key": "ACME",
            "published_at": "2024-01-01T00:00:00Z",
            "sentiment": "negative",
            "text": f"ACME beats estimates{ESCAPES}",
            "url": "https://news.example/a",
        },
        "negative",
    )
    return replace(make_alert(), examples=(Example(event.text, event.url, 0.99),))


def holds_controls(text: str) -> bool:
    return any(c in text for c in "\x1b\x08\x9b\u202e\u202c\u2066\u2069")


def test_one_line_leaves_no_control_character_nor_bidi_override() -> None:
    flat = one_line(f"a\tb\r\nc{ESCAPES}\x00\x7f\x85d")
    assert not holds_controls(flat) and "\x00" not in flat and "\x7f" not in flat
    assert flat.startswith("a b c\ufffd[1A\ufffd[2KINFO") and flat.endswith("\ufffd d")
    assert len(one_line(ESCAPES * 40)) == 280


def test_control_characters_of_a_message_reach_no_channel(caplog: pytest.LogCaptureFixture) -> None:
    """They reached the log line (terminal injection through `kubectl logs`), the e-mail, Slack and
    Alertmanager's annotations."""
    alert = escaped_alert()
    with caplog.at_level(logging.WARNING, logger="finsent.alerts"):
        LogNotifier().send([alert], 0)
    assert "ACME beats estimates\ufffd[1A" in caplog.text and not holds_controls(caplog.text)
    assert not holds_controls(slack_text([alert], 3))
    assert not holds_controls(email_text([alert], 3)) and not holds_controls(email_html([alert], 3))
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    annotations = AlertmanagerNotifier(client, "http://am", firing_ttl_s=240).annotations(alert)
    assert not holds_controls(annotations["examples"])


def test_a_receivers_answer_is_logged_without_terminal_escapes() -> None:
    assert logged_text(f"bad request{ESCAPES}") == one_line(f"bad request{ESCAPES}", 200)
    assert not holds_controls(logged_text(f"bad request{ESCAPES}"))
