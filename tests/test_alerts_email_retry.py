"""E-mail to recipients an SMTP server refused for now (4xx: greylisting, a full mailbox) while it took the
message for the others: the same message again, later, to them alone, from the dispatcher's flush. They
were logged and counted failed, and never got the alert. Against a local SMTP server (tests'
SmtpSink), on a virtual clock where the waits matter."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import Closable, FollowUps, WaitCapped
from alerts.notifiers.dispatch import Channel, Dispatcher, RetryPolicy, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.log import LogNotifier
from finsent.demo import free_port
from tests.test_alerts_delivery import Clock, Outcomes
from tests.test_alerts_notifiers import SmtpSink, make_alert


class Answers:
    """Each recipient's answers to RCPT in turn, the last one kept ("250 ok" for one not named), and
    how many RCPTs each got."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = {address: list(said) for address, said in answers.items()}
        self.asked: dict[str, int] = {}

    def __call__(self, address: str) -> str:
        self.asked[address] = self.asked.get(address, 0) + 1
        said = self.answers.get(address, ["250 ok"])
        return said.pop(0) if len(said) > 1 else said[0]


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING):
        yield caplog


def setup(
    sinks: list[SmtpSink],
    answers: dict[str, list[str]],
    recipients: list[str],
    clock: Clock | None = None,
    *,
    tries: int = 6,
    max_follow_ups: int = 100,
    timeout_s: float = 5.0,
    budget_s: float = 2.0,
) -> tuple[Dispatcher, EmailNotifier, SmtpSink, Answers, Outcomes]:
    rcpt = Answers(answers)
    sinks.append(sink := SmtpSink(rcpt_reply=rcpt))
    notifier = EmailNotifier(
        "127.0.0.1",
        sink.port,
        sender="a@test",
        recipients=recipients,
        timeout_s=timeout_s,
        follow_up_first_s=60.0,
        follow_up_max_s=480.0,
        follow_up_tries=tries,
        max_follow_ups=max_follow_ups,
    )
    outcomes = Outcomes()
    d = Dispatcher(
        [Channel(notifier, TokenBucket(600, 10))],
        retry=RetryPolicy(initial_s=0.1, max_s=0.2),
        clock=clock or Clock(),
        on_outcome=outcomes,
        resend_budget_s=budget_s,
    )
    return d, notifier, sink, rcpt, outcomes


def envelopes(sink: SmtpSink) -> list[list[str]]:
    return [rcpts for _, rcpts in sink.envelopes]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_recipient_refused_for_now_gets_the_same_message_later_alone_and_the_other_not_twice(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """The due follow-up goes from a flush with nothing queued: no new alert is needed to carry it."""
    clock = Clock()
    d, _, sink, rcpt, outcomes = setup(
        sinks,
        {"busy@test": ["451 4.7.1 greylisted, try again later", "250 ok"]},
        ["ops@test", "busy@test"],
        clock,
    )
    d.notify([make_alert()])
    assert envelopes(sink) == [["<ops@test>"]]
    assert outcomes.seen == [("email", "sent", 1)] and d.follow_ups() == 1 and d.pending() == 0
    clock.now += 59.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"]] and rcpt.asked["busy@test"] == 1  # not yet due
    clock.now += 1.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"], ["<busy@test>"]]
    first, again = sink.messages
    assert again["Message-ID"] == first["Message-ID"] and again["To"] == "ops@test, busy@test"
    assert again.as_string() == first.as_string()
    assert d.follow_ups() == 0
    clock.now += 100_000.0
    d.flush()
    assert len(sink.envelopes) == 2 and rcpt.asked == {"ops@test": 1, "busy@test": 2}
    assert outcomes.seen == [("email", "sent", 1)]
    assert errors(caplog_warnings) == []


def test_a_recipient_refused_for_good_is_not_retried_and_counts_failed_once(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    answers = {"gone@test": ["550 5.1.1 no such user"], "busy@test": ["452 4.2.2 mailbox full", "250 ok"]}
    d, _, sink, rcpt, outcomes = setup(sinks, answers, ["ops@test", "gone@test", "busy@test"], clock)
    d.notify([make_alert()])
    assert envelopes(sink) == [["<ops@test>"]]
    assert outcomes.total("email", "sent") == 1 and outcomes.total("email", "failed") == 1
    (line,) = [m for m in errors(caplog_warnings) if "delivered in part" in m]
    assert "gone@test: 550 5.1.1 no such user" in line and "busy@test: 452" in line
    clock.now += 60.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"], ["<busy@test>"]]  # the 5xx one is not tried again
    clock.now += 100_000.0
    d.flush()
    assert rcpt.asked == {"ops@test": 1, "gone@test": 1, "busy@test": 2}
    assert outcomes.total("email", "failed") == 1 and outcomes.total("email", "sent") == 1


def test_a_try_keeps_only_those_refused_for_now_again_and_drops_those_refused_for_good(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    answers = {
        "b1@test": ["450 4.2.0 busy", "250 ok"],
        "b2@test": ["450 4.2.0 busy", "451 4.7.1 greylisted", "250 ok"],
        "b3@test": ["451 4.7.1 greylisted", "550 5.1.1 gone now"],
    }
    d, _, sink, _, outcomes = setup(sinks, answers, ["ops@test", "b1@test", "b2@test", "b3@test"], clock)
    d.notify([make_alert()])
    assert outcomes.seen == [("email", "sent", 1)]
    clock.now += 60.0
    d.flush()
    assert envelopes(sink)[1:] == [["<b1@test>"]]
    assert outcomes.seen == [("email", "sent", 1), ("email", "failed", 1)]  # b3 will not get it
    (line,) = errors(caplog_warnings)
    assert "b3@test" in line and "550 5.1.1 gone now" in line and "b2@test" not in line
    clock.now += 119.0  # the wait doubles after a try refused again
    d.flush()
    assert len(sink.envelopes) == 2
    clock.now += 1.0
    d.flush()
    assert envelopes(sink)[1:] == [["<b1@test>"], ["<b2@test>"]] and d.follow_ups() == 0
    assert outcomes.total("email", "failed") == 1  # once for the message, whatever happens after


def test_recipients_refused_for_now_until_the_tries_run_out_are_an_error_and_count_failed_once(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    answers = {"busy@test": ["450 4.2.0 busy"], "full@test": ["452 4.2.2 mailbox full"]}
    d, _, sink, rcpt, outcomes = setup(sinks, answers, ["ops@test", "busy@test", "full@test"], clock, tries=3)
    d.notify([make_alert()])
    for wait in (60.0, 120.0, 240.0):
        clock.now += wait - 1
        d.flush()
        assert rcpt.asked["busy@test"] == 1 + (wait > 60.0) + (wait > 120.0)  # not before it is due
        clock.now += 1.0
        d.flush()
    assert rcpt.asked == {"ops@test": 1, "busy@test": 4, "full@test": 4}
    assert envelopes(sink) == [["<ops@test>"]] and d.follow_ups() == 0
    (line,) = errors(caplog_warnings)
    assert "2 recipient(s)" in line and "busy@test, full@test" in line and "3 tries" in line
    assert outcomes.seen == [("email", "sent", 1), ("email", "failed", 1)]
    clock.now += 100_000.0
    d.flush()
    assert rcpt.asked["busy@test"] == 4 and outcomes.total("email", "failed") == 1


def test_a_connection_failure_during_a_try_keeps_every_recipient_for_the_next(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    answers = {"b1@test": ["450 4.2.0 busy", "250 ok"], "b2@test": ["451 4.7.1 greylisted", "250 ok"]}
    d, notifier, sink, rcpt, outcomes = setup(sinks, answers, ["ops@test", "b1@test", "b2@test"], clock)
    d.notify([make_alert()])
    notifier.port = free_port()  # nothing listens: connection refused
    clock.now += 60.0
    d.flush()
    assert d.follow_ups() == 1 and rcpt.asked == {"ops@test": 1, "b1@test": 1, "b2@test": 1}
    notifier.port = sink.port
    clock.now += 119.0
    d.flush()
    assert len(sink.envelopes) == 1
    clock.now += 1.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"], ["<b1@test>", "<b2@test>"]] and d.follow_ups() == 0
    assert outcomes.seen == [("email", "sent", 1)] and errors(caplog_warnings) == []


def test_a_421_to_one_recipient_during_a_try_keeps_every_recipient_for_the_next(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """smtplib hangs up at a 421 and raises with the recipients refused so far: the one it had taken
    before never got the message, and was taken for delivered."""
    clock = Clock()
    answers = {
        "a2@test": ["450 4.2.0 busy", "250 ok"],
        "b1@test": ["450 4.2.0 busy", "421 4.3.2 bye", "250 ok"],
    }
    d, _, sink, rcpt, outcomes = setup(sinks, answers, ["ops@test", "a2@test", "b1@test"], clock)
    d.notify([make_alert()])
    clock.now += 60.0
    d.flush()
    assert rcpt.asked == {"ops@test": 1, "a2@test": 2, "b1@test": 2} and len(sink.envelopes) == 1
    assert d.follow_ups() == 1
    clock.now += 120.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"], ["<a2@test>", "<b1@test>"]] and d.follow_ups() == 0
    assert outcomes.seen == [("email", "sent", 1)] and errors(caplog_warnings) == []


def test_messages_awaiting_a_retry_are_bounded_the_oldest_dropped_and_counted_failed(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    answers = {"busy@test": ["450 4.2.0 busy", "450 4.2.0 busy", "450 4.2.0 busy", "250 ok"]}
    d, _, sink, _, outcomes = setup(sinks, answers, ["ops@test", "busy@test"], clock, max_follow_ups=2)
    for key in ("A", "B", "C"):
        d.notify([make_alert(key)])
    assert d.follow_ups() == 2
    (line,) = errors(caplog_warnings)
    assert "busy@test" in line and sink.messages[0]["Message-ID"] in line
    assert outcomes.total("email", "sent") == 3 and outcomes.total("email", "failed") == 1
    clock.now += 60.0
    d.flush()
    retried = [
        m["Message-ID"]
        for m, (_, rcpts) in zip(sink.messages, sink.envelopes, strict=True)
        if rcpts == ["<busy@test>"]
    ]
    assert retried == [sink.messages[1]["Message-ID"], sink.messages[2]["Message-ID"]]
    assert d.follow_ups() == 0 and outcomes.total("email", "failed") == 1


def test_closing_with_retries_pending_is_an_error_naming_the_recipients_and_counts_failed(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """They are not saved in the worker's state: a stopping worker gives them up, loudly."""
    clock = Clock()
    d, _, sink, rcpt, outcomes = setup(
        sinks, {"busy@test": ["450 4.2.0 busy"]}, ["ops@test", "busy@test"], clock
    )
    d.notify([make_alert("A")])
    d.notify([make_alert("B")])
    d.close()
    (line,) = errors(caplog_warnings)
    assert "2 message(s)" in line and "busy@test will not get them" in line
    assert outcomes.total("email", "failed") == 2 and d.follow_ups() == 0
    clock.now += 100_000.0
    d.flush()
    assert rcpt.asked["busy@test"] == 2 and len(sink.envelopes) == 2


class ShiftedClock:
    """The monotonic clock, moved on by `shift` seconds: the waits pass at once, the budget takes time."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.shift


def test_a_slow_smtp_server_does_not_hold_the_flush_past_its_budget(sinks: list[SmtpSink]) -> None:
    """Each try takes 0.3 s (the server's answer to the message); six are due, the budget is 0.5 s."""
    clock = ShiftedClock()
    rcpt = Answers({"busy@test": ["450 4.2.0 busy"] * 6 + ["250 ok"]})

    def slow_data(raw: bytes) -> str:
        if len(sinks[0].messages) >= 6:
            time.sleep(0.3)
        return "250 queued"

    sinks.append(sink := SmtpSink(slow_data, rcpt))
    notifier = EmailNotifier("127.0.0.1", sink.port, sender="a@test", recipients=["ops@test", "busy@test"])
    outcomes = Outcomes()
    d = Dispatcher(
        [Channel(notifier, TokenBucket(600, 10))], clock=clock, on_outcome=outcomes, resend_budget_s=0.5
    )
    for key in "ABCDEF":
        d.notify([make_alert(key)])
    assert d.follow_ups() == 6
    clock.shift += 60.0
    d.flush()
    assert d.follow_ups() == 4 and len(sink.envelopes) == 8  # two tries: 0.6 s, past the budget
    d.flush()
    assert d.follow_ups() == 2
    assert outcomes.seen == [("email", "sent", 1)] * 6


def connections_waiting(server: socket.socket) -> int:
    """Accept (and close) the connections made to `server` so far: those the kernel completed are queued
    for accept() even once the client has given up on them."""
    server.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_a_hanging_smtp_server_costs_one_timeout_per_flush_not_one_per_message(sinks: list[SmtpSink]) -> None:
    clock = Clock()
    d, notifier, _, _, outcomes = setup(
        sinks, {"busy@test": ["450 4.2.0 busy"]}, ["ops@test", "busy@test"], clock, timeout_s=0.3
    )
    for key in "ABCD":
        d.notify([make_alert(key)])
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, never says a word
        notifier.port = silent.getsockname()[1]
        clock.now += 60.0
        d.flush()
        assert connections_waiting(silent) == 1  # one timeout, not four
    assert [f.tries for f in notifier.follow_ups] == [1, 0, 0, 0]
    assert d.follow_ups() == 4 and outcomes.total("email", "failed") == 0


def test_what_notifiers_offer_is_told_by_their_type_not_guessed() -> None:
    """The dispatcher closes what is Closable, caps the waits of what is WaitCapped, and follows up
    what has FollowUps."""
    with httpx.Client() as client:
        am = AlertmanagerNotifier(client, "http://am:9093", firing_ttl_s=240, resend_interval_s=60)
        assert isinstance(am, Closable) and isinstance(am, WaitCapped) and not isinstance(am, FollowUps)
    log = LogNotifier()
    assert not isinstance(log, Closable | WaitCapped | FollowUps)
    mail = EmailNotifier("127.0.0.1", 25, sender="a@test", recipients=["b@test"])
    assert isinstance(mail, FollowUps) and not isinstance(mail, Closable | WaitCapped)


def test_an_alert_counted_failed_while_stuck_is_not_counted_again_when_its_retry_gives_up(
    sinks: list[SmtpSink], caplog_warnings: pytest.LogCaptureFixture
) -> None:
    """Down past max_retries (counted `failed` once, as stuck), then delivered in part with a recipient
    refused for now until the tries run out: still one `failed` for the alert."""
    clock = Clock()
    d, notifier, sink, _, outcomes = setup(
        sinks, {"busy@test": ["450 4.2.0 busy"]}, ["ops@test", "busy@test"], clock, tries=1
    )
    notifier.port = free_port()  # nothing listens: the channel fails and backs off
    d.notify([make_alert()])
    for _ in range(5):
        clock.now += 1.0
        d.flush()
    assert outcomes.total("email", "failed") == 1 and len(sink.envelopes) == 0  # stuck: reported once
    notifier.port = sink.port
    clock.now += 1.0
    d.flush()
    assert envelopes(sink) == [["<ops@test>"]] and d.follow_ups() == 1
    clock.now += 60.0
    d.flush()
    assert d.follow_ups() == 0 and any("still refused after 1 tries" in m for m in errors(caplog_warnings))
    assert outcomes.total("email", "failed") == 1 and outcomes.total("email", "sent") == 1
