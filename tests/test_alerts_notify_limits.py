"""Every message a channel sends has a bounded size: a receiver that refuses an oversized body refuses it
for good, and every alert in it would be lost. An alert storm of 1,000 long alerts is the test."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from alerts.model import Alert, Example
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.dispatch import Channel, Dispatcher, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.webhook import WebhookNotifier, webhook_body
from tests.test_alerts_notifiers import make_alert

NGINX_LIMIT = 1024 * 1024  # client_max_body_size 1m, nginx's default
TEXT = "東京株式市場で日経平均株価が大幅に下落、" * 50  # 1,000 characters: what a labeled event keeps
URL = "https://news.example.co.jp/articles/2026/11/30/" + "x" * 150 + "?utm_source=feed&utm_medium=rss&ref=fs"


def long_alert(key: str, examples: int = 3, url: str = URL) -> Alert:
    return replace(make_alert(key), examples=tuple(Example(TEXT, url, 0.9) for _ in range(examples)))


class Receiver:
    """A receiver behind nginx: 413 for a body over 1 MiB, else `status(n)` for the n-th request."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200) -> None:
        self.status = status
        self.sizes: list[int] = []
        self.bodies: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sizes.append(len(request.content))
        if len(request.content) > NGINX_LIMIT:
            return httpx.Response(413)
        status = self.status(len(self.sizes))
        if status < 300:
            self.bodies.append(json.loads(request.content))
        return httpx.Response(status)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


class Outcomes(list[tuple[str, str, int]]):
    def __call__(self, channel: str, outcome: str, n: int) -> None:
        self.append((channel, outcome, n))

    def total(self, outcome: str) -> int:
        return sum(n for _, o, n in self if o == outcome)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_webhook_storm_goes_out_in_bounded_requests_each_delivered_on_its_own() -> None:
    """1,000 long alerts were one 19.6 MB body: nginx's 413 is permanent and dropped them all. Now
    each request stays far below the limit, and one that fails is retried alone, nothing twice."""
    receiver = Receiver(lambda n: 503 if n == 2 else 200)  # the second request fails once
    clock, outcomes = Clock(), Outcomes()
    notifier = WebhookNotifier(receiver.client(), "http://hook.example/x", max_examples=3)
    d = Dispatcher([Channel(notifier, TokenBucket(600, 100))], clock=clock, on_outcome=outcomes)
    storm = [long_alert(f"T{i:04d}", examples=20) for i in range(1_000)]  # alerts.max_examples may be 20
    d.notify(storm)
    clock.now += 60
    d.flush()
    delivered = [a["key"] for body in receiver.bodies for a in body["alerts"]]
    assert sorted(delivered) == [a.key for a in storm]  # all of them, each once
    assert max(receiver.sizes) <= 512 * 1024 and 413 not in receiver.sizes
    assert all(len(body["alerts"]) <= 100 for body in receiver.bodies)
    assert all(len(a["examples"]) == 3 for body in receiver.bodies for a in body["alerts"])
    assert outcomes.total("sent") == 1_000 and outcomes.total("failed") == 0 and d.pending() == 0


def test_a_refused_webhook_request_drops_only_its_own_alerts() -> None:
    receiver = Receiver(lambda n: 400 if n == 1 else 200)
    outcomes = Outcomes()
    notifier = WebhookNotifier(receiver.client(), "http://hook.example/x")
    d = Dispatcher([Channel(notifier, TokenBucket(600, 100))], on_outcome=outcomes)
    d.notify([long_alert(f"T{i:04d}") for i in range(1_000)])
    refused = outcomes.total("failed")
    assert 0 < refused <= 100 and outcomes.total("sent") == 1_000 - refused and d.pending() == 0


def test_the_webhook_body_holds_max_examples_and_no_overlong_link() -> None:
    alert = replace(
        long_alert("A", examples=5),
        examples=(
            Example("short link", "https://n.example/a", 0.9),
            Example("long link", "https://n.example/" + "a" * 600, 0.9),
            *long_alert("A").examples,
        ),
    )
    (item,) = webhook_body([alert], max_examples=2)["alerts"]
    assert [e["url"] for e in item["examples"]] == ["https://n.example/a", ""]
    assert [e["text"] for e in item["examples"]] == ["short link", "long link"]


def test_a_storm_on_alertmanager_is_sent_and_re_sent_in_bounded_requests() -> None:
    receiver = Receiver()
    am = AlertmanagerNotifier(receiver.client(), "http://am:9093", firing_ttl_s=240, max_examples=20)
    d = Dispatcher([Channel(am, TokenBucket(6_000, 100), native_batches=True)])
    storm = [long_alert(f"T{i:04d}", examples=20, url="https://n.example/" + "&" * 400) for i in range(1_000)]
    d.notify(storm)
    d.resend(storm)
    while d.resending():  # a round that runs out of its time budget goes on at the next flushes
        d.flush()
    assert len(receiver.bodies) >= 20 and max(receiver.sizes) <= 512 * 1024
    keys = [item["labels"]["key"] for body in receiver.bodies for item in body]
    assert sorted(keys) == sorted([a.key for a in storm] * 2)


def test_an_e_mail_digest_of_a_storm_details_some_lists_more_and_counts_the_rest() -> None:
    notifier = EmailNotifier("127.0.0.1", 25, sender="a@test", recipients=["b@test"])
    storm = [long_alert(f"T{i:04d}", url="https://news.example/" + "a&" * 4000) for i in range(1_000)]
    msg = notifier.message(storm, 0.0)
    assert len(msg.as_bytes()) < 1024 * 1024  # it was 101 MB (a 552 "too large" for every retry)
    text = msg.get_body(preferencelist=("plain",))
    assert text is not None
    content = text.get_content()
    assert content.count("window ") == 20 and "ticker=T0219" in content and "ticker=T0220" not in content
    assert content.rstrip().endswith("and 780 more") and "news.example/a&" not in content
    assert "1000 finsent alerts" in str(msg["Subject"])
