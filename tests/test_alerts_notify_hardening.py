"""Receivers and settings that hurt: answers dripped a byte at a time (HTTP and SMTP), credentials read
from a secret file with its newline, error pages that echo the secret webhook path, and a wall clock
stepped back while a channel waits for its retry."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from alerts.config import NotifierSettings
from alerts.notifiers import deadline
from alerts.notifiers.base import PermanentNotifyError, TransientNotifyError
from alerts.notifiers.dispatch import Channel, Dispatcher, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.factory import build_dispatcher
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier
from finsent.settings import SettingsError, load_settings
from ingest.sources.http import quiet_http_logging
from tests.certs import self_signed
from tests.servers import Recorder
from tests.test_alerts_notifiers import SmtpSink, make_alert

SECRET = "T0001B0002XXSECRETXX"
SECRET_URL = f"https://hooks.example.com/services/T0001/B0002/{SECRET}"


class Outcomes(list[tuple[str, str, int]]):
    def __call__(self, channel: str, outcome: str, n: int) -> None:
        self.append((channel, outcome, n))


class Dripper:
    """A TCP server that answers each connection with `answer`, one byte every `gap_s` (each gap well
    within the client's timeout), after reading the request's first bytes when `read_first`."""

    def __init__(self, answer: bytes, gap_s: float, *, read_first: bool = True) -> None:
        self.answer, self.gap_s, self.read_first = answer, gap_s, read_first
        self.stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                self._drip(conn)

    def _drip(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            if self.read_first:
                conn.recv(65536)
            for byte in self.answer:
                if self.stop.wait(self.gap_s):
                    return
                conn.sendall(bytes([byte]))
        except OSError:  # the client gave up and closed
            return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.server.close()


# ------------------------------------------------------------------ a whole request within its timeout


def test_a_receiver_dripping_its_answer_costs_one_timeout_not_more(
    sinks: list[Dripper], caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's timeout bounds each read: an answer dripped a byte per 0.1 s (the timeout is 0.5 s) took
    one send 6 s, and the reviewer's 29 s with timeout_s 2; unbounded, it can outlast Kafka's
    max.poll.interval and get the alert worker evicted. Now it is a timeout (transient: retried). The
    answer here takes 60 s to drip; the dripper stops at the end of the test."""
    caplog.set_level(logging.WARNING)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: " + b"a" * 560 + b"\r\n\r\n"
    sinks.append(dripper := Dripper(answer, 0.1))
    settings = NotifierSettings.model_validate(
        {
            "log": {"enabled": False},
            "timeout_s": 0.5,
            "webhook": {"enabled": True, "url": f"http://127.0.0.1:{dripper.port}/hook"},
        }
    )
    outcomes = Outcomes()
    d = build_dispatcher(settings, on_outcome=outcomes)
    try:
        started = time.monotonic()
        d.notify([make_alert()])
        took = time.monotonic() - started
    finally:
        d.close()
    assert took < 10.0, f"one send took {took:.1f}s with timeout_s 0.5"
    assert outcomes == [] and d.pending() == 1  # transient: still queued for a retry
    assert "timeout: not complete after 0.5s" in caplog.text


def test_a_body_dripped_after_a_2xx_is_not_waited_for_and_the_alert_counts_as_sent() -> None:
    """Whatever the transport (here a MockTransport, no socket): reading the answer's body stops at the
    request's deadline. The status said it was delivered, so it is not sent again."""

    def slow_body() -> Iterator[bytes]:  # 60 s in all, unless the send stops reading
        for _ in range(1200):
            time.sleep(0.05)
            yield b"."

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Stream(slow_body()))

    with httpx.Client(transport=httpx.MockTransport(answer), timeout=0.3) as client:
        started = time.monotonic()
        SlackNotifier(client, "http://x/hook").send([make_alert()], 0.0)
        took = time.monotonic() - started
    assert took < 10.0, f"the body held the send {took:.1f}s with a 0.3 s timeout"


def test_a_resolver_that_does_not_answer_costs_one_timeout_not_more() -> None:
    """getaddrinfo has no timeout: a DNS server that never answered held a send (and the alert worker's
    loop) for as long as the system's resolver retried. Now the look-up ends with the request's deadline
    (a timeout: transient, retried)."""
    answered = threading.Event()

    def resolver_that_hangs(host: str) -> list[ipaddress.IPv4Address]:
        answered.wait(60)  # released at the end of the test
        return [ipaddress.IPv4Address("127.0.0.1")]

    try:
        with httpx.Client(timeout=0.3) as client:
            assert deadline.install(client, resolve=resolver_that_hangs)
            started = time.monotonic()
            with pytest.raises(TransientNotifyError, match="timeout"):
                SlackNotifier(client, "http://hooks.example.test/hook").send([make_alert()], 0.0)
            took = time.monotonic() - started
    finally:
        answered.set()
    assert took < 10.0, f"the look-up held the send {took:.1f}s with a 0.3 s timeout"


def test_a_receiver_named_by_host_name_is_looked_up_and_reached(recorder: Recorder) -> None:
    """Names are looked up on a helper thread now; `localhost` still reaches the receiver (on whichever of
    its addresses listens)."""
    url = recorder.url.replace("127.0.0.1", "localhost")
    with httpx.Client(timeout=2) as client:
        assert deadline.install(client)
        SlackNotifier(client, url).send([make_alert()], 0.0)
    assert len(recorder.bodies) == 1


def test_a_name_that_does_not_resolve_fails_as_a_connection_error() -> None:
    def nowhere(host: str) -> list[ipaddress.IPv4Address]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with httpx.Client(timeout=2) as client:
        assert deadline.install(client, resolve=nowhere)
        with pytest.raises(TransientNotifyError, match="connection failed: ConnectError"):
            SlackNotifier(client, "http://hooks.example.test/hook").send([make_alert()], 0.0)


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


def test_the_deadline_bounds_connections_through_a_proxy_too() -> None:
    """A proxy from the environment (HTTPS_PROXY) gets a pool of its own: it must be bounded as well."""
    with httpx.Client(proxy="http://127.0.0.1:9", timeout=1) as client:
        assert deadline.install(client)
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool._network_backend, deadline.DeadlineBackend)


def test_a_client_whose_pools_cannot_be_bounded_is_used_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    """Should httpx lay its pools out otherwise, requests are bounded per read (and their bodies by the
    deadline) with a warning, rather than the alert worker failing to start."""
    caplog.set_level(logging.WARNING)
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        assert not deadline.install(client)
        SlackNotifier(client, "http://x/hook").send([make_alert()], 0.0)
    assert "does not let finsent bound a notification request" in caplog.text


def test_an_smtp_server_dripping_its_replies_costs_one_timeout_not_more(sinks: list[Dripper]) -> None:
    """smtplib's timeout, too, bounds each socket operation: a greeting dripped a byte per 0.1 s held a
    send with timeout_s 0.5 for 4.5 s. Now it is cut at 0.5 s, and retried later (transient). The
    greeting here takes 60 s to drip; the dripper stops at the end of the test."""
    sinks.append(dripper := Dripper(b"220 " + b"x" * 594 + b"\r\n", 0.1, read_first=False))
    notifier = EmailNotifier("127.0.0.1", dripper.port, sender="a@test", recipients=["b@test"], timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TransientNotifyError, match=r"SMTP timeout: not complete after 0\.5s"):
        notifier.send([make_alert()], 0.0)
    took = time.monotonic() - started
    assert took < 10.0, f"one e-mail took {took:.1f}s with timeout_s 0.5"


def test_an_smtp_host_whose_look_up_hangs_costs_one_timeout_not_more() -> None:
    """`Cutoff` shuts a connection down, but during the look-up there is none yet: a DNS server that did
    not answer held the send for as long as the system's resolver retried."""
    answered = threading.Event()

    def resolver_that_hangs(host: str) -> list[ipaddress.IPv4Address]:
        answered.wait(60)  # released at the end of the test
        return [ipaddress.IPv4Address("127.0.0.1")]

    notifier = EmailNotifier(
        "mail.example.test",
        25,
        sender="a@test",
        recipients=["b@test"],
        timeout_s=0.5,
        resolve=resolver_that_hangs,
    )
    started = time.monotonic()
    try:
        with pytest.raises(TransientNotifyError, match="SMTP"):
            notifier.send([make_alert()], 0.0)
        took = time.monotonic() - started
    finally:
        answered.set()
    assert took < 10.0, f"the look-up held one e-mail {took:.1f}s with timeout_s 0.5"


def test_an_smtp_host_named_by_host_name_is_looked_up_and_reached() -> None:
    sink = SmtpSink()
    try:
        notifier = EmailNotifier("localhost", sink.port, sender="a@test", recipients=["b@test"], timeout_s=5)
        notifier.send([make_alert()], time.time())
        assert len(sink.messages) == 1
    finally:
        sink.close()


@pytest.fixture
def mail_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ssl.SSLContext, list[str | None]]:
    """A server TLS context with a certificate for mail.test (trusted by ssl.create_default_context()
    through SSL_CERT_FILE), and the SNI names it is asked for."""
    cert, key = self_signed(tmp_path, "mail.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    seen: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _: seen.append(name)  # type: ignore[assignment,misc]
    return ctx, seen


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_e_mail_over_tls_dials_the_looked_up_address_and_verifies_the_name(
    security: str, mail_tls: tuple[ssl.SSLContext, list[str | None]]
) -> None:
    """The connection goes to the address looked up, and TLS sends the host name (SNI) and checks the
    certificate against it. Before, both TLS modes failed at every send ("check_hostname requires
    server_hostname": smtplib keeps the name for TLS only when the constructor is given it)."""
    ctx, seen = mail_tls
    sink = SmtpSink(starttls=ctx if security == "starttls" else None)
    if security == "ssl":
        sink.server.socket = ctx.wrap_socket(sink.server.socket, server_side=True)
    looked_up: list[str] = []

    def resolve(host: str) -> list[ipaddress.IPv4Address]:
        looked_up.append(host)
        return [ipaddress.IPv4Address("127.0.0.1")]

    try:
        notifier = EmailNotifier(
            "mail.test",
            sink.port,
            sender="a@test",
            recipients=["b@test"],
            security=security,
            timeout_s=5,
            resolve=resolve,
        )
        notifier.send([make_alert()], time.time())
    finally:
        sink.close()
    assert len(sink.messages) == 1 and looked_up == ["mail.test"] and seen == ["mail.test"]


def test_an_e_mail_sent_in_time_is_not_cut() -> None:
    """The cut-off thread stops with the send: a quick one is delivered, and nothing is left running."""
    sink = SmtpSink()
    try:
        notifier = EmailNotifier("127.0.0.1", sink.port, sender="a@test", recipients=["b@test"], timeout_s=5)
        notifier.send([make_alert()], time.time())
        assert len(sink.messages) == 1
        assert not any(t.name == "smtp-cutoff" for t in threading.enumerate())
    finally:
        sink.close()


# --------------------------------------------------------------- credentials from a file with a newline


def test_credentials_from_a_secret_file_lose_their_newline_and_reach_the_receiver(recorder: Recorder) -> None:
    """The URLs were stripped, the credentials were not: httpx refused every request ("Bearer x\\n" is no
    header value), which was logged as a connection failure and retried for ever."""
    settings = NotifierSettings.model_validate(
        {
            "log": {"enabled": False},
            "webhook": {
                "enabled": True,
                "url": recorder.url,
                "authorization": "Bearer s3cr3t-token\n",
                "secret": "k3y\n",
            },
            "alertmanager": {"enabled": True, "url": recorder.url, "bearer_token": " s3cr3t-am\r\n"},
        }
    )
    outcomes = Outcomes()
    d = build_dispatcher(settings, on_outcome=outcomes)
    try:
        d.notify([make_alert()])
    finally:
        d.close()
    assert sorted(outcomes) == [("alertmanager", "sent", 1), ("webhook", "sent", 1)]
    auth = sorted(h.get("Authorization", "") for h in recorder.headers)
    assert auth == ["Bearer s3cr3t-am", "Bearer s3cr3t-token"]
    hook = next(i for i, h in enumerate(recorder.headers) if "X-Finsent-Signature" in h)
    expected = hmac.new(b"k3y", recorder.bodies[hook], hashlib.sha256).hexdigest()
    assert recorder.headers[hook]["X-Finsent-Signature"] == f"sha256={expected}"


def test_a_bearer_token_file_holding_only_a_newline_sends_no_authorization(recorder: Recorder) -> None:
    """Stripped to nothing, the token is as if unset: no "Bearer " header with an empty credential."""
    settings = NotifierSettings.model_validate(
        {
            "log": {"enabled": False},
            "alertmanager": {"enabled": True, "url": recorder.url, "bearer_token": "\n"},
        }
    )
    d = build_dispatcher(settings)
    try:
        d.notify([make_alert()])
    finally:
        d.close()
    assert len(recorder.bodies) == 1 and "Authorization" not in recorder.headers[0]


def test_other_credentials_lose_their_newline_too() -> None:
    settings = NotifierSettings.model_validate(
        {
            "alertmanager": {"username": "ops\n", "password": "pw\n"},
            "email": {"username": "mailer\n", "password": "pw\n", "security": "ssl"},
        }
    )
    am, em = settings.alertmanager, settings.email
    assert am.username == "ops" and am.password is not None and am.password.get_secret_value() == "pw"
    assert em.username == "mailer" and em.password is not None and em.password.get_secret_value() == "pw"


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {SECRET}\r\nX-Evil: 1",
        f"Bearer {SECRET}\n{SECRET}",
        f"Bearer {SECRET}\x00",
        f"Bearer {SECRET}é",
    ],
    ids=["crlf", "inner-newline", "nul", "non-ascii"],
)
@pytest.mark.parametrize("channel", ["webhook.authorization", "alertmanager.bearer_token"])
def test_a_credential_no_header_can_carry_is_refused_when_the_settings_are_read_without_quoting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channel: str, value: str
) -> None:
    section, name = channel.split(".")
    config = tmp_path / "finsent.yaml"
    url = "https://hooks.example.com/x"
    config.write_text(
        yaml.safe_dump({"alerts": {"notifiers": {section: {"enabled": True, "url": url, name: value}}}})
    )
    monkeypatch.setenv("FINSENT_CONFIG", str(config))  # load_settings sets it: restored afterwards
    with pytest.raises(SettingsError) as exc:
        load_settings(config)
    assert f"alerts.notifiers.{section}: {name} holds" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_a_header_httpx_refuses_fails_permanently_without_quoting_it(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Built without the settings' checks: httpx's LocalProtocolError (it will never send that header)
    was a "connection failed", retried for ever; now it is permanent, and its words (which quote the
    header) are not logged. httpx's and httpcore's own loggers are quieted as every command that sends
    notifications has them (`build_dispatcher`): httpcore's DEBUG trace quotes each header it sends."""
    caplog.set_level(logging.DEBUG)
    quiet_http_logging()
    outcomes = Outcomes()
    with httpx.Client(timeout=2) as client:
        notifier = WebhookNotifier(client, recorder.url, authorization=f"Bearer {SECRET}\n")
        with pytest.raises(PermanentNotifyError, match="LocalProtocolError") as exc:
            notifier.send([make_alert()], 0.0)
        assert SECRET not in str(exc.value)
        d = Dispatcher([Channel(notifier, TokenBucket(60, 3))], on_outcome=outcomes)
        d.notify([make_alert()])
    assert outcomes == [("webhook", "failed", 1)] and d.pending() == 0 and recorder.bodies == []
    assert SECRET not in caplog.text


# ------------------------------------------------------------------- error pages that echo the path

Page = Callable[[httpx.Request], httpx.Response]


def json_escaped(data: dict[str, object]) -> str:
    """JSON as PHP's json_encode writes it: every slash escaped."""
    return json.dumps(data).replace("/", "\\/")


@pytest.mark.parametrize(
    "page",
    [
        lambda r: httpx.Response(404, json={"status": 404, "error": "Not Found", "path": r.url.path}),
        lambda r: httpx.Response(404, text=f"<pre>Not Found: Cannot POST {r.url.path}</pre>"),
        lambda r: httpx.Response(404, text=json_escaped({"error": "Not Found", "path": r.url.path})),
        lambda r: httpx.Response(404, text=f"Not Found: no hook {SECRET}"),
        lambda r: httpx.Response(404, text=f"Not Found: {r.url}"),
        lambda r: httpx.Response(503, text=f"Not Found: {r.url.path}?{r.url.query.decode()}"),
    ],
    ids=["spring-json", "express-html", "json-escaped-slashes", "token-alone", "full-url", "query"],
)
def test_an_error_page_echoing_the_secret_path_is_logged_without_it(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    """Spring Boot's error JSON has "path", Express says "Cannot POST /path": for a Slack-style webhook
    the path is the token, and the first 200 characters of the body went to the log."""
    caplog.set_level(logging.WARNING)
    url = f"{SECRET_URL}?token={SECRET}Q"
    with httpx.Client(transport=httpx.MockTransport(page)) as client:
        d = Dispatcher([Channel(SlackNotifier(client, url), TokenBucket(60, 3))])
        d.notify([make_alert()])
    assert "Not Found" in caplog.text  # the receiver's words are still there to read
    assert SECRET not in caplog.text and "/services/T0001" not in caplog.text


def test_an_error_body_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    forged = "bad\nERROR alerts: all good\r\n"
    answer = httpx.MockTransport(lambda r: httpx.Response(400, text=forged))
    with httpx.Client(transport=answer) as client, pytest.raises(PermanentNotifyError) as exc:
        SlackNotifier(client, "http://x/hook").send([make_alert()], 0.0)
    assert str(exc.value) == "HTTP 400: bad ERROR alerts: all good"


# ------------------------------------------------------------------------------------- the clocks


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_backoff_and_rate_limits_run_on_the_monotonic_clock_by_default() -> None:
    """They ran on time.time(): a wall clock stepped back (NTP) by 65 minutes while a channel waited for
    its retry shut it for the 65 minutes."""
    status = [503]
    d = build_dispatcher(
        NotifierSettings.model_validate(
            {"log": {"enabled": False}, "webhook": {"enabled": True, "url": "http://x/y"}}
        ),
        client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status[0]))),
    )
    channel = d.channels[0]
    d.notify([make_alert()])
    now = time.monotonic()
    assert d.pending() == 1 and now <= channel.not_before <= now + 1.0
    assert now - 1.0 <= channel.bucket.updated <= now


def test_a_wall_clock_stepped_back_no_longer_holds_a_retry_back() -> None:
    """The reviewer's case: the receiver is down, the wall clock steps back an hour, the receiver is back.
    The retry goes out 0.5 s later (monotonic time), not an hour and 0.5 s later."""
    status, sent = [503], list[float]()
    wall, mono = Clock(1_800_000_000.0), Clock(5_000.0)

    def receiver(request: httpx.Request) -> httpx.Response:
        if status[0] == 200:
            sent.append(mono.now)
        return httpx.Response(status[0])

    client = httpx.Client(transport=httpx.MockTransport(receiver))
    channel = Channel(WebhookNotifier(client, "http://x/y"), TokenBucket(60, 3))
    d = Dispatcher([channel], clock=mono, wall_clock=wall)
    d.notify([make_alert()])
    status[0] = 200
    wall.now -= 3600  # NTP steps the wall clock back an hour
    mono.now += 0.5
    d.flush()
    assert sent == [5_000.5] and d.pending() == 0


def test_a_retry_after_date_is_read_on_the_wall_clock_and_waited_for_on_the_monotonic_one() -> None:
    """Retry-After may be an HTTP date: it is converted with the wall clock (what `send` is told is
    now), and the wait that comes of it counts on the monotonic clock."""
    wall, mono = Clock(1_800_000_000.0), Clock(5_000.0)
    later = email.utils.formatdate(wall.now + 30, usegmt=True)
    answer = httpx.Response(429, headers={"Retry-After": later})
    client = httpx.Client(transport=httpx.MockTransport(lambda r: answer))
    channel = Channel(SlackNotifier(client, "http://x/y"), TokenBucket(60, 3))
    d = Dispatcher([channel], clock=mono, wall_clock=wall)
    d.notify([make_alert()])
    assert channel.not_before == pytest.approx(5_030.0)
