"""Alerts into the process log (a channel that cannot fail)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alerts.model import Alert
from alerts.notifiers.render import plain_lines

logger = logging.getLogger("finsent.alerts")


class LogNotifier:
    name = "log"

    def __init__(self, max_examples: int = 3) -> None:
        self.max_examples = max_examples

    def send(self, alerts: Sequence[Alert], now: float) -> None:
        for a in alerts:
            logger.warning("%s", " | ".join(plain_lines(a, self.max_examples)))
