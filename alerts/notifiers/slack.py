"""Slack-compatible incoming webhook (`{"text": ...}` with mrkdwn, escaped)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx

from alerts.model import Alert
from alerts.notifiers.base import post_json
from alerts.notifiers.render import slack_text


class SlackNotifier:
    """Slack's incoming webhooks only: the text is escaped for Slack's mrkdwn, not for the Markdown of
    Mattermost or Rocket.Chat (links, images and @channel would pass there)."""

    name = "slack"

    def __init__(self, client: httpx.Client, webhook_url: str, *, max_examples: int = 3) -> None:
        self.client = client
        self.webhook_url = webhook_url
        self.max_examples = max_examples

    def batch_size(self, alerts: Sequence[Alert]) -> int:
        """All: slack_text keeps a digest of any size within Slack's limit."""
        return len(alerts)

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        # no previews: an example's link is a stranger's, and Slack would fetch it (telling the poster
        # the post became an alert) and show its image or video in the analysts' channel
        payload = {
            "text": slack_text(alerts, self.max_examples),
            "mrkdwn": True,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        body = json.dumps(payload).encode()
        post_json(self.client, self.webhook_url, body, now=now)

    def close(self) -> None:
        """Close the HTTP client it sends with: the one build_dispatcher made for its HTTP channels, which
        close it each (closing twice is harmless)."""
        self.client.close()
