"""Notifications show no credentials: links lose their user info and secret-looking query parameters
in every channel, and a receiver answering 401 that echoes the `Basic` Authorization httpx made of the
URL's user info (a real local server) is logged without it."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from alerts.model import Alert, Example
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.base import PermanentNotifyError, post_json
from alerts.notifiers.log import LogNotifier
from alerts.notifiers.render import email_html, email_text, link, safe_url, slack_text
from alerts.notifiers.webhook import WebhookNotifier, webhook_body
from tests.servers import EchoServer

LINK = (
    "https://reader:s3cr3tLINKPW@news.example.com/a/1?apikey=s3cr3tPARAM&id=7&X-Api-Key=s3cr3tHDR"
    "&auth_token=s3cr3tTOK&lang=en#frag"
)
SHOWN = "https://news.example.com/a/1?id=7&lang=en#frag"


def alert(url: str = LINK, dashboard: str = "") -> Alert:
    return Alert(
        rule="negative_share",
        key_type="ticker",
        key="ACME",
        status="firing",
        severity="warning",
        starts_at=1e9,
        ends_at=None,
        window_start=1e9 - 600,
        window_end=1e9,
        count=20,
        negative_count=15,
        negative_share=0.75,
        baseline_share=0.2,
        expected_negative=4,
        p_value=1e-6,
        summary="spike",
        dashboard_url=dashboard,
        examples=(Example("$ACME shares plunge", url, 0.95),),
    )


def test_links_lose_user_info_and_secret_parameters_and_keep_the_rest() -> None:
    assert link(LINK) == SHOWN
    assert link("https://n.example/a?PASSWORD=x&Session=y&page=2") == "https://n.example/a?page=2"
    assert link("https://n.example/cb#access_token=s3cr3t&state=1") == "https://n.example/cb#state=1"
    assert link("https://n.example/a?token=x") == "https://n.example/a"
    assert safe_url("https://u:pw@grafana.example/d/x?var-key=ACME&token=t") == (
        "https://grafana.example/d/x?var-key=ACME"  # a Grafana variable names no credential
    )
    assert link("javascript:alert(1)") == "" and safe_url("https://a b/") == ""


def test_no_channel_shows_a_links_credentials(caplog: pytest.LogCaptureFixture) -> None:
    a = alert(dashboard="https://admin:s3cr3tDASH@grafana.example/d/x?var-key=ACME&api_key=s3cr3tDK")
    rendered = {
        "slack": slack_text([a], 3),
        "webhook": json.dumps(webhook_body([a])),
        "alertmanager": json.dumps(
            AlertmanagerNotifier(httpx.Client(), "http://am:9093", firing_ttl_s=240).payload([a], 1e9)
        ),
        "email text": email_text([a], 3),
        "email html": email_html([a], 3),
    }
    with caplog.at_level(logging.INFO):
        LogNotifier().send([a], 1e9)
    rendered["log"] = caplog.text
    for channel, text in rendered.items():
        assert "s3cr3t" not in text, channel
        assert "news.example.com/a/1?id=7" in text, channel
        assert "var-key=ACME" in text, channel


@pytest.mark.parametrize("userinfo", ["wh:s3cr3tWHPW", "wh:s3cr3t%40WH", "s3cr3tTOKENASUSER"])
def test_a_401_echoing_the_basic_header_made_of_the_urls_user_info_is_logged_without_it(
    echo: EchoServer, userinfo: str
) -> None:
    url = f"http://{userinfo}@127.0.0.1:{echo.port}/hook"
    with httpx.Client(timeout=5) as client, pytest.raises(PermanentNotifyError) as exc:
        post_json(client, url, b"{}")
    (sent,) = echo.seen
    assert sent.startswith("Basic ")  # httpx made it of the user info
    said = str(exc.value)
    assert said.startswith("HTTP 401")
    assert sent.removeprefix("Basic ") not in said and "s3cr3t" not in said
    assert '"got"' in said  # the answer is logged, without the credential


def test_webhook_and_alertmanager_with_user_info_log_no_credential(echo: EchoServer) -> None:
    with httpx.Client(timeout=5) as client:
        notifiers = [
            WebhookNotifier(client, f"http://wh:s3cr3tWHPW@127.0.0.1:{echo.port}/hook"),
            AlertmanagerNotifier(client, f"http://am:s3cr3tAMPW@127.0.0.1:{echo.port}/", firing_ttl_s=240),
        ]
        for notifier in notifiers:
            with pytest.raises(PermanentNotifyError) as exc:
                notifier.send([alert()], 1e9)
            sent = echo.seen[-1]
            assert sent.startswith("Basic ") and sent.removeprefix("Basic ") not in str(exc.value)
            assert "s3cr3t" not in str(exc.value) and '"got"' in str(exc.value)
