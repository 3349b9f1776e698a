"""Notifiers against real servers: Alertmanager (Debian package), and HTTP / SMTP servers started here."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import socketserver
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import Message
from typing import Any

import httpx
import pytest

from alerts.config import NotifierSettings, SlackChannel
from alerts.model import Alert, Example, rfc3339
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import PermanentNotifyError, TransientNotifyError
from alerts.notifiers.dispatch import Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.factory import build_dispatcher
from alerts.notifiers.render import digest_title, slack_escape, slack_text
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier
from tests.servers import Alertmanager, InThread, Recorder

EVIL = "<script>alert(1)</script> & <!channel> <https://evil.example|click> *bold*\r\nBcc: x@evil"


def make_alert(key: str = "ACME", status: str = "firing", starts_at: float | None = None) -> Alert:
    start = starts_at if starts_at is not None else time.time() - 600
    return Alert(
        rule="negative_share",
        key_type="ticker",
        key=key,
        status=status,
        severity="critical",
        starts_at=start,
        ends_at=start + 300 if status == "resolved" else None,
        window_start=start,
        window_end=start + 60,
        count=80,
        negative_count=40.0,
        negative_share=0.5,
        baseline_share=0.1,
        expected_negative=8.0,
        p_value=1e-12,
        summary=f"Negative share for ticker {key} is 50% vs baseline 10% (40 of 80 messages, p=1e-12)",
        dashboard_url="https://grafana.example/d/finsent?var-key=" + key,
        examples=(
            Example(EVIL, "https://news.example/a?x=1&y=2", 0.97),
            Example("plain bad news", "javascript:alert(1)", 0.9),
        ),
    )


class SmtpSink(InThread):
    """A minimal SMTP server (enough of RFC 5321 for smtplib) that keeps every message it accepts.
    `data_reply` answers each message (its raw bytes), `rcpt_reply` each recipient (or, called with its
    address, each one its own): a refusing server; `quit_reply` QUIT ("" closes without a word)."""

    def __init__(
        self,
        data_reply: Callable[[bytes], str] = lambda raw: "250 queued",
        rcpt_reply: str | Callable[[str], str] = "250 ok",
        starttls: ssl.SSLContext | None = None,
        quit_reply: str = "221 bye",
    ) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refused = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 sink ESMTP")
                sender, rcpts = "", list[str]()
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    cmd = raw.decode("utf-8", "replace").strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        offer = b"250-STARTTLS\r\n" if starttls is not None else b""
                        self.wfile.write(b"250-sink\r\n" + offer + b"250 8BITMIME\r\n")
                    elif verb == "STARTTLS" and starttls is not None:
                        self.reply("220 go ahead")
                        self.wfile.flush()
                        self.connection = starttls.wrap_socket(self.connection, server_side=True)
                        self.rfile = self.connection.makefile("rb")
                        self.wfile = self.connection.makefile("wb", buffering=0)
                    elif verb == "HELO":
                        self.reply("250 sink")
                    elif verb == "MAIL":
                        sender, rcpts = cmd.split(":", 1)[1].strip(), []
                        self.reply("250 ok")
                    elif verb == "RCPT":
                        rcpt = cmd.split(":", 1)[1].strip()
                        answer = rcpt_reply(rcpt.strip("<>")) if callable(rcpt_reply) else rcpt_reply
                        if answer.startswith("2"):
                            rcpts.append(rcpt)
                        self.reply(answer)
                    elif verb == "DATA":
                        self.reply("354 end with .")
                        lines = []
                        while True:
                            line = self.rfile.readline()
                            if line in (b".\r\n", b".\n", b""):
                                break
                            lines.append(line[1:] if line.startswith(b"..") else line)
                        answer = data_reply(b"".join(lines))
                        if answer.startswith("2"):
                            outer.messages.append(email.message_from_bytes(b"".join(lines)))
                            outer.envelopes.append((sender, rcpts))
                        else:
                            outer.refused += 1
                        self.reply(answer)
                    elif verb == "QUIT":
                        if quit_reply:
                            self.reply(quit_reply)
                        return
                    else:
                        self.reply("250 ok")

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        super().__init__(server)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    s = SmtpSink()
    try:
        yield s
    finally:
        s.close()


def am_alerts(url: str, key: str) -> list[dict[str, object]]:
    got = httpx.get(f"{url}/api/v2/alerts", params={"filter": f'key="{key}"'}, timeout=5).json()
    assert isinstance(got, list)
    return got


def test_alertmanager_receives_firing_resend_and_resolved(alertmanager: Alertmanager, unique: str) -> None:
    key = f"T{unique}"
    with httpx.Client(timeout=5) as client:
        notifier = AlertmanagerNotifier(
            client, alertmanager.url, firing_ttl_s=240, generator_url="http://finsent.example/alerts"
        )
        firing = make_alert(key)
        notifier.send([firing], time.time())
        got = am_alerts(alertmanager.url, key)
        assert len(got) == 1
        labels = got[0]["labels"]
        assert isinstance(labels, dict)
        assert labels["alertname"] == "FinsentNegativeSentimentSpike"
        assert labels["severity"] == "critical" and labels["key_type"] == "ticker"
        assert labels["finsent_fingerprint"] == firing.fingerprint
        annotations = got[0]["annotations"]
        assert isinstance(annotations, dict)
        assert "50%" in str(annotations["summary"]) and "dashboard" in annotations
        assert got[0]["generatorURL"] == "http://finsent.example/alerts"
        assert got[0]["status"] == {"inhibitedBy": [], "silencedBy": [], "state": "active"}
        notifier.send([firing], time.time())  # re-sent while firing: still one alert
        assert len(am_alerts(alertmanager.url, key)) == 1
        notifier.send([firing.resolved(time.time() - 1)], time.time())
        assert am_alerts(alertmanager.url, key) == []


def test_an_escalation_replaces_the_alert_of_its_former_severity_in_alertmanager(
    alertmanager: Alertmanager, unique: str
) -> None:
    key = f"E{unique}"
    with httpx.Client(timeout=5) as client:
        notifier = AlertmanagerNotifier(client, alertmanager.url, firing_ttl_s=240)
        warning = replace(make_alert(key), severity="warning")
        notifier.send([warning], time.time())
        assert [a["labels"]["severity"] for a in am_alerts(alertmanager.url, key)] == ["warning"]  # type: ignore[index]
        escalation = replace(
            warning, severity="critical", escalated_from="warning", window_end=warning.window_end + 60
        )
        assert notifier.batch_size([escalation] * 3) == 3
        notifier.send([escalation], time.time())
        (active,) = am_alerts(alertmanager.url, key)  # not the warning beside it until its endsAt
        labels, annotations = active["labels"], active["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels["severity"] == "critical"
        assert str(annotations["summary"]).startswith("Escalated from warning to critical: Negative share")
        notifier.send([escalation.resolved(time.time() - 1)], time.time())
        assert am_alerts(alertmanager.url, key) == []
        _, superseded = notifier.items(escalation, 1_800_000_000.0)
        assert superseded["labels"] == {**notifier.item(warning, 0.0)["labels"], "severity": "warning"}
        assert superseded["endsAt"] == "2027-01-15T08:00:00Z"
        assert superseded["annotations"]["summary"].startswith("Superseded by the critical alert of the same")


def test_only_a_rise_to_another_severity_is_an_escalation() -> None:
    stored = {**make_alert().to_dict(), "escalated_from": None}  # garbled by another writer
    assert Alert.from_dict(stored).escalated_from == "" and Alert.from_dict(stored).opens_episode
    same = replace(make_alert(), escalated_from="critical")  # severity critical already
    assert not same.escalation and same.opens_episode
    assert (
        len(AlertmanagerNotifier(httpx.Client(), "http://am.example", firing_ttl_s=60).items(same, 0.0)) == 1
    )
    rose = replace(make_alert(), escalated_from="warning")
    assert rose.escalation and not rose.resolved(1.0).escalation
    title = digest_title([rose, make_alert("B"), make_alert("C", status="resolved")])
    assert title == "3 finsent alerts (1 firing, 1 escalated, 1 resolved)"


def test_slack_webhook_payload_is_escaped(recorder: Recorder) -> None:
    with httpx.Client(timeout=5) as client:
        SlackNotifier(client, recorder.url).send([make_alert()], time.time())
    (body,) = recorder.json()
    assert isinstance(body, dict)
    text = body["text"]
    assert "<script>" not in text and "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;script&gt;" in text and "&amp;" in text
    assert "<https://news.example/a?x=1&amp;y=2|link>" in text  # links we make are still links
    assert "javascript:" not in text
    assert "\r" not in text and "\nBcc" not in text
    assert slack_escape("a<b>&") == "a&lt;b&gt;&amp;"
    # an example's link is a stranger's: Slack must not fetch it nor show its image in the channel
    assert body["unfurl_links"] is False and body["unfurl_media"] is False


def test_generic_webhook_is_signed_json(recorder: Recorder) -> None:
    with httpx.Client(timeout=5) as client:
        WebhookNotifier(client, recorder.url, secret="s3cret", authorization="Bearer t").send(
            [make_alert(), make_alert("B", "resolved")], time.time()
        )
    (raw,) = recorder.bodies
    headers = recorder.headers[0]
    expected = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert headers["X-Finsent-Signature"] == f"sha256={expected}"
    assert headers["Authorization"] == "Bearer t"
    body = json.loads(raw)
    assert body["status"] == "mixed"
    assert [a["key"] for a in body["alerts"]] == ["ACME", "B"]
    assert body["alerts"][0]["examples"][0]["text"] == EVIL  # data stays data in JSON
    assert body["alerts"][0]["starts_at"].endswith("Z")


def test_email_over_smtp_escapes_html_and_headers(smtp_sink: SmtpSink) -> None:
    notifier = EmailNotifier(
        "127.0.0.1", smtp_sink.port, sender="finsent@test", recipients=["ops@test"], subject_prefix="[fs]"
    )
    evil_key = make_alert(key="X\r\nBcc: victim@evil")
    notifier.send([make_alert(), evil_key], time.time())
    (msg,) = smtp_sink.messages
    assert smtp_sink.envelopes[0][1] == ["<ops@test>"]
    assert msg["Bcc"] is None
    assert msg["Subject"].startswith("[fs] 2 finsent alerts")
    parts = {
        p.get_content_type(): bytes(p.get_payload(decode=True)).decode()  # type: ignore[arg-type]
        for p in msg.walk()
        if not p.is_multipart()
    }
    html_part = parts["text/html"]
    assert "<script>" not in html_part and "&lt;script&gt;" in html_part
    assert 'href="https://news.example/a?x=1&amp;y=2"' in html_part
    assert "javascript:" not in html_part
    assert "plain bad news" in parts["text/plain"]


def test_email_failure_is_transient_when_server_is_down() -> None:
    notifier = EmailNotifier("127.0.0.1", 1, sender="a@b", recipients=["c@d"], timeout_s=2)
    with pytest.raises(TransientNotifyError):
        notifier.send([make_alert()], time.time())


def test_http_errors_map_onto_the_exception_tree() -> None:
    transient, permanent, redirects = (500, 503, 429, 408), (400, 401, 404), (301, 302, 307, 308)
    moved = {"Location": "https://moved.example/services/T/B/TOKEN"}
    r = Recorder(
        statuses=[
            *((s, {"Retry-After": "30"} if s in (429, 503) else {}) for s in transient),
            *permanent,
            *((s, moved) for s in redirects),
            204,
        ]
    )
    try:
        with httpx.Client(timeout=5, follow_redirects=False) as client:
            slack = SlackNotifier(client, r.url)
            for status in transient:
                with pytest.raises(TransientNotifyError) as error:
                    slack.send([make_alert()], 0)
                assert str(error.value).startswith(f"HTTP {status}:")
                assert error.value.retry_after_s == (30.0 if status in (429, 503) else None), status
            for status in permanent:
                with pytest.raises(PermanentNotifyError) as refused:
                    slack.send([make_alert()], 0)
                assert str(refused.value).startswith(f"HTTP {status}:")
            for status in redirects:  # not followed, not retried, and only the host is told
                with pytest.raises(PermanentNotifyError) as redirect:
                    slack.send([make_alert()], 0)
                assert str(redirect.value).startswith(f"HTTP {status}:")
                assert "moved.example" in str(redirect.value) and "TOKEN" not in str(redirect.value)
            slack.send([make_alert()], 0)  # any 2xx is delivered
    finally:
        r.close()
    assert r.statuses == [] and len(r.bodies) == 1  # one request per send: every answer was used


def test_dispatcher_retries_with_backoff_from_later_flushes_then_succeeds() -> None:
    r = Recorder(statuses=[500, 503])
    clock = [1000.0]
    outcomes: list[tuple[str, str, int]] = []
    try:
        with httpx.Client(timeout=5) as client:
            channel = Channel(WebhookNotifier(client, r.url), TokenBucket(60, 5))
            d = Dispatcher(
                [channel],
                retry=RetryPolicy(max_retries=3, initial_s=0.5, max_s=0.8),
                clock=lambda: clock[0],
                on_outcome=lambda c, o, n: outcomes.append((c, o, n)),
            )
            d.notify([make_alert()])  # 500: back in the queue, not before +0.5 s; nothing slept
            assert d.pending() == 1 and channel.not_before == 1000.5 and r.statuses == [503]
            clock[0] = 1000.4
            d.flush()
            assert r.statuses == [503]  # still backing off: no request
            clock[0] = 1000.5
            d.flush()  # 503: the next wait is capped at 0.8 s
            assert d.pending() == 1 and channel.not_before == 1001.3
            clock[0] = 1001.3
            d.flush()
    finally:
        r.close()
    assert len(r.bodies) == 1 and d.pending() == 0
    assert outcomes == [("webhook", "sent", 1)]


def test_dispatcher_keeps_retrying_after_max_retries_and_reports_the_failure_once() -> None:
    r = Recorder(statuses=[500] * 6)
    clock = [1000.0]
    outcomes: list[tuple[str, str, int]] = []
    try:
        with httpx.Client(timeout=5) as client:
            d = Dispatcher(
                [Channel(WebhookNotifier(client, r.url), TokenBucket(60, 5))],
                retry=RetryPolicy(max_retries=2, initial_s=1.0, max_s=4.0),
                clock=lambda: clock[0],
                on_outcome=lambda c, o, n: outcomes.append((c, o, n)),
            )
            d.notify([make_alert()])
            for _ in range(7):
                clock[0] += 4.0
                d.flush()
    finally:
        r.close()
    assert r.statuses == [] and len(r.bodies) == 1  # six failures, then delivered: nothing lost
    assert outcomes == [("webhook", "failed", 1), ("webhook", "sent", 1)]  # failed once, at try 3


def test_rate_limit_defers_and_storms_become_one_digest(recorder: Recorder) -> None:
    clock = [1000.0]
    outcomes: list[tuple[str, str, int]] = []
    with httpx.Client(timeout=5) as client:
        d = Dispatcher(
            [Channel(SlackNotifier(client, recorder.url), TokenBucket(rate_per_minute=1, burst=1))],
            digest_min=3,
            clock=lambda: clock[0],
            on_outcome=lambda c, o, n: outcomes.append((c, o, n)),
        )
        d.notify([make_alert("A")])  # uses the one token
        d.notify([make_alert(f"S{i}") for i in range(50)])  # a storm: rate-limited, queued
        assert len(recorder.bodies) == 1 and d.pending() == 50
        clock[0] += 61
        d.flush()
    assert len(recorder.bodies) == 2 and d.pending() == 0
    digest = recorder.json()[1]
    assert isinstance(digest, dict)
    assert digest["text"].startswith("*50 finsent alerts (50 firing, 0 resolved)*")
    assert ("slack", "rate_limited", 50) in outcomes
    assert ("slack", "sent", 50) in outcomes


def test_queued_notifications_can_be_saved_handed_over_and_restored(recorder: Recorder) -> None:
    clock = [1000.0]
    with httpx.Client(timeout=5) as client:

        def dispatcher() -> Dispatcher:
            bucket = TokenBucket(rate_per_minute=1, burst=1)
            return Dispatcher([Channel(SlackNotifier(client, recorder.url), bucket)], clock=lambda: clock[0])

        first = dispatcher()
        first.notify([make_alert("A")])  # uses the one token
        first.notify([make_alert("B")])
        first.notify([make_alert("C")])
        saved = {ch: [a.to_dict() for a in alerts] for ch, alerts in first.pending_alerts().items()}
        assert {ch: [a["key"] for a in alerts] for ch, alerts in saved.items()} == {"slack": ["B", "C"]}
        # the partition of C moves away: this dispatcher forgets it, the next owner restores it
        assert first.drop_pending(lambda a: a.key == "C") == 1 and first.pending() == 1
        second = dispatcher()
        assert second.restore_pending("slack", [Alert.from_dict(saved["slack"][1])]) == 1
        assert second.restore_pending("email", [make_alert("X")]) == 0  # channel no longer configured
        second.flush()
    sent = [body["text"] for body in recorder.json() if isinstance(body, dict)]
    assert len(sent) == 2 and "A" in sent[0] and "ticker C" in sent[1].replace("*", "")
    assert first.pending() == 1  # B still waits for a token in the first dispatcher


def test_build_dispatcher_from_settings_uses_secrets(recorder: Recorder) -> None:
    settings = NotifierSettings.model_validate(
        {
            "slack": {"enabled": True, "webhook_url": recorder.url},
            "webhook": {"enabled": True, "url": recorder.url, "secret": "k"},
            "log": {"enabled": True},
        }
    )
    assert "127.0.0.1" not in repr(settings.slack)  # SecretStr hides the URL
    d = build_dispatcher(settings)
    try:
        assert [c.notifier.name for c in d.channels] == ["slack", "webhook", "log"]
        d.notify([make_alert()])
        assert len(recorder.bodies) == 2
    finally:
        d.close()


class MadeClients:
    """Every httpx.Client made while it is installed (the factory's own), to see which are closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[httpx.Client] = []
        real = httpx.Client

        def make(*args: Any, **kwargs: Any) -> httpx.Client:
            client = real(*args, **kwargs)
            self.made.append(client)
            return client

        monkeypatch.setattr(httpx, "Client", make)


def test_a_built_dispatcher_closes_the_http_client_it_made(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = MadeClients(monkeypatch)
    settings = NotifierSettings.model_validate(
        {
            "alertmanager": {"enabled": True, "url": recorder.url},
            "slack": {"enabled": True, "webhook_url": recorder.url},
            "webhook": {"enabled": True, "url": recorder.url},
        }
    )
    d = build_dispatcher(settings)
    assert len(clients.made) == 1  # one client shared by the three HTTP channels
    assert all(getattr(c.notifier, "client", None) is clients.made[0] for c in d.channels[:3])
    d.close()
    assert clients.made[0].is_closed


@pytest.mark.parametrize(
    "channels",
    [
        {"log": {"enabled": True}},
        {"email": {"enabled": True, "recipients": ["ops@example.com"]}, "log": {"enabled": False}},
    ],
    ids=["log", "email"],
)
def test_a_dispatcher_without_http_channels_opens_no_http_client(
    channels: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = MadeClients(monkeypatch)
    d = build_dispatcher(NotifierSettings.model_validate(channels))
    d.close()
    assert clients.made == [] and len(d.channels) == 1


def test_a_configuration_that_fails_closes_the_http_client_made_for_it(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients = MadeClients(monkeypatch)
    # the settings refuse this (a channel on without its URL); built anyway, the factory refuses it too
    settings = NotifierSettings.model_validate(
        {"alertmanager": {"enabled": True, "url": recorder.url}}
    ).model_copy(update={"slack": SlackChannel.model_construct(enabled=True, webhook_url=None)})
    with pytest.raises(ValueError, match=r"slack\.webhook_url is empty"):
        build_dispatcher(settings)
    assert len(clients.made) == 1 and clients.made[0].is_closed


def test_slack_digest_text_lists_each_alert() -> None:
    a, b = make_alert("A"), make_alert("B", "resolved")
    text = slack_text([a, b], max_examples=1)
    assert "RESOLVED: FinsentNegativeSentimentSpike ticker=B" in text
    assert text.count("• ") == 2
    for alert in (a, b):  # when, as the e-mail and the log say it
        window = f"window {rfc3339(alert.window_start)} .. {rfc3339(alert.window_end)}"
        assert f"{window}; since {rfc3339(alert.starts_at)}" in text


def test_a_storm_digest_stays_within_slacks_message_size() -> None:
    storm = [make_alert(f"T{i:04d}") for i in range(2_000)]
    text = slack_text(storm, max_examples=3)
    assert len(text) < 40_000 and text.count("*CRITICAL: ") == 20  # detailed, the rest named
    assert "and 1980 more: CRITICAL: FinsentNegativeSentimentSpike ticker=T0020" in text


TRACKING_URL = (
    "https://finance.example.com/news/"
    + "acme-shares-fall-after-guidance-cut-" * 5
    + "?"
    + "&".join(f"utm_p{i}=v{i}" for i in range(10))
)


@pytest.mark.parametrize(
    "url",
    [TRACKING_URL, "https://news.example/a?" + "&" * 8000, "https://news.example/" + "a" * 8100],
    ids=["tracking-313", "ampersands-8k", "plain-8k"],
)
def test_a_storm_digest_with_long_links_stays_within_slacks_message_size(url: str) -> None:
    """Ordinary tracking links ('&' grows fivefold escaped) and links as long as ingest lets through
    (8,192 characters): the digest stays under Slack's 40,000 and still counts the alerts not detailed."""
    examples = tuple(Example("e" * 300, url, 0.9) for _ in range(3))
    storm = [replace(make_alert(f"T{i:04d}"), examples=examples) for i in range(60)]
    text = slack_text(storm, max_examples=3)
    detailed = text.count("*CRITICAL: ")
    assert len(text) <= 35_000 and detailed >= 10
    assert f"and {60 - detailed} more: CRITICAL: FinsentNegativeSentimentSpike ticker=T{detailed:04d}" in text
    if len(url) > 500:  # too long to link: the text stays, the link goes
        assert "news.example/a" not in text
        assert text.count("• " + "e" * 279 + "…\n") == 3 * detailed
    single = slack_text(storm[:1], max_examples=3)
    assert len(single) < 3_000 and single.count("• ") == 3


def test_an_smtp_password_is_never_configured_for_a_plain_connection() -> None:
    from pydantic import ValidationError

    from alerts.config import EmailChannel

    to = ("desk@example.com",)
    with pytest.raises(ValidationError, match="clear text"):
        EmailChannel(enabled=True, username="u", password="p", security="none", recipients=to)
    assert (
        EmailChannel(enabled=True, username="u", password="p", security="starttls", recipients=to).password
        is not None
    )
    assert EmailChannel(enabled=True, security="none", recipients=to).password is None  # a relay, no login
    with pytest.raises(ValidationError, match="recipients are needed"):  # not a traceback at start
        EmailChannel(enabled=True)


def test_the_log_channel_leaves_example_texts_out_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    """Strangers' posts (and their links) went to the process log at WARNING by default, where the log
    store keeps them outside finsent's retention and erasure."""
    for examples, shown in ((False, False), (True, True)):
        settings = NotifierSettings.model_validate({"log": {"examples": examples}})
        dispatcher = build_dispatcher(settings)
        caplog.clear()
        with caplog.at_level("WARNING", logger="finsent.alerts"):
            dispatcher.notify([make_alert()])
            dispatcher.flush()
        dispatcher.close()
        (line,) = [r.getMessage() for r in caplog.records if r.name == "finsent.alerts"]
        assert "ACME" in line
        assert ("plain bad news" in line) is shown, line
