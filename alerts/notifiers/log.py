"""Alerts into the process log (a channel that cannot fail)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alerts.model import Alert
from alerts.notifiers.base import render_alert
from alerts.notifiers.render import plain_lines

logger = logging.getLogger("finsent.alerts")


class LogNotifier:
    name = "log"

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples

    def batch_size(self, alerts: Sequence[Alert]) -> int:
        """All: each alert is a log line of its own."""
        return len(alerts)

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        """One line per alert, all rendered before the first is written (an alert that cannot be rendered
        fails before any line, so a retry of the others repeats none)."""
        lines = [render_alert(a, lambda x: " | ".join(plain_lines(x, self.max_examples))) for a in alerts]
        for line in lines:
            logger.warning("%s", line)
