"""Build the configured channels and dispatcher from settings (secrets unwrapped here only)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx

from alerts.config import NotifierSettings
from alerts.notifiers import deadline
from alerts.notifiers.alertmanager import AlertmanagerNotifier
from alerts.notifiers.dispatch import Channel, Dispatcher, Outcome, RetryPolicy, TokenBucket
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.log import LogNotifier
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier
from ingest.sources.http import quiet_http_logging


def build_dispatcher(
    settings: NotifierSettings,
    *,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    on_outcome: Outcome | None = None,
) -> Dispatcher:
    """The dispatcher of the configured channels. The HTTP channels share one client: `client`, else one
    made here only when an HTTP channel is on. The HTTP notifiers close it when the dispatcher is closed,
    so a `client` given is handed over when an HTTP channel takes it, and stays the caller's otherwise (no
    HTTP channel, or a configuration that fails); one made here is closed if the configuration fails, and
    bounds each request as a whole by `timeout_s` (a `client` given keeps its own per-read timeouts).
    `clock` and `wall_clock` are the dispatcher's (see Dispatcher)."""
    quiet_http_logging()  # webhook URLs are secrets, and httpx logs each request URL at INFO
    made: httpx.Client | None = None
    if client is None and _uses_http(settings):
        client = made = httpx.Client(timeout=settings.timeout_s, follow_redirects=False)
        deadline.install(made)
    try:
        channels = _channels(settings, client)
    except BaseException:
        if made is not None:
            made.close()
        raise
    return Dispatcher(
        channels,
        retry=RetryPolicy(settings.max_retries, settings.backoff_initial_s, settings.backoff_max_s),
        digest_min=settings.digest_min_alerts,
        max_pending=settings.max_pending,
        clock=clock,
        wall_clock=wall_clock,
        on_outcome=on_outcome,
    )


def _uses_http(settings: NotifierSettings) -> bool:
    """Whether a channel that sends over HTTP is on: only then is an HTTP client worth opening."""
    return settings.alertmanager.enabled or settings.slack.enabled or settings.webhook.enabled


def _channels(settings: NotifierSettings, http: httpx.Client | None) -> list[Channel]:
    """The channels that are on, in a fixed order; `http` is None only when no HTTP channel is on."""
    channels = _http_channels(settings, http) if http is not None else []
    burst = settings.rate_limit_burst
    em = settings.email
    if em.enabled:
        email = EmailNotifier(
            em.host,
            em.port,
            sender=em.sender,
            recipients=em.recipients,
            security=em.security,
            username=em.username,
            password=em.password.get_secret_value() if em.password else None,
            subject_prefix=em.subject_prefix,
            timeout_s=em.timeout_s,
            max_examples=settings.max_examples,
        )
        channels.append(Channel(email, TokenBucket(em.rate_limit_per_minute, burst)))
    if settings.log.enabled:
        channels.append(
            Channel(
                LogNotifier(settings.max_examples if settings.log.examples else 0),
                TokenBucket(settings.log.rate_limit_per_minute, burst),
            )
        )
    return channels


def _http_channels(settings: NotifierSettings, http: httpx.Client) -> list[Channel]:
    """Alertmanager, Slack and webhook channels that are on, all sending with `http`."""
    channels: list[Channel] = []
    if settings.alertmanager.enabled:
        channels.append(_alertmanager_channel(settings, http))
    burst = settings.rate_limit_burst
    if settings.slack.enabled:
        if settings.slack.webhook_url is None:
            raise ValueError("alerts.notifiers.slack.webhook_url is empty")
        slack = SlackNotifier(
            http, settings.slack.webhook_url.get_secret_value(), max_examples=settings.max_examples
        )
        channels.append(Channel(slack, TokenBucket(settings.slack.rate_limit_per_minute, burst)))
    wh = settings.webhook
    if wh.enabled:
        if wh.url is None:
            raise ValueError("alerts.notifiers.webhook.url is empty")
        webhook = WebhookNotifier(
            http,
            wh.url.get_secret_value(),
            secret=wh.secret.get_secret_value() if wh.secret else None,
            authorization=wh.authorization.get_secret_value() if wh.authorization else None,
            max_examples=settings.max_examples,
        )
        channels.append(Channel(webhook, TokenBucket(wh.rate_limit_per_minute, burst)))
    return channels


def _alertmanager_channel(settings: NotifierSettings, http: httpx.Client) -> Channel:
    am = settings.alertmanager
    if not am.url:
        raise ValueError("alerts.notifiers.alertmanager.url is empty")
    headers: dict[str, str] = {}
    if am.bearer_token is not None and am.bearer_token.get_secret_value():  # "": as if unset
        headers["Authorization"] = f"Bearer {am.bearer_token.get_secret_value()}"
    elif am.username:
        password = am.password.get_secret_value() if am.password else ""
        token = base64.b64encode(f"{am.username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    notifier = AlertmanagerNotifier(
        http,
        am.url,
        firing_ttl_s=am.resend_interval_s * am.ends_at_factor,
        resend_interval_s=am.resend_interval_s,
        generator_url=am.generator_url,
        headers=headers,
        max_examples=settings.max_examples,
    )
    return Channel(
        notifier, TokenBucket(am.rate_limit_per_minute, settings.rate_limit_burst), native_batches=True
    )
