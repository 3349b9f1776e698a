"""Deliver alerts to every channel: retries with backoff, per-channel rate limits, digests.

Alerts due on a channel queue there; each flush sends as many messages as the channel's token bucket
allows. When `digest_min` or more alerts are queued they go out as one digest message, so an alert storm
costs one message, not hundreds. Channels that take lists natively (Alertmanager) always get one request."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from alerts.model import Alert
from alerts.notifiers.base import Notifier, NotifyError, PermanentNotifyError

logger = logging.getLogger(__name__)

Outcome = Callable[[str, str, int], None]


@dataclass
class TokenBucket:
    """`rate_per_minute` tokens per minute, at most `burst` saved up."""

    rate_per_minute: float
    burst: int
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.updated = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate_per_minute / 60.0)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Channel:
    notifier: Notifier
    bucket: TokenBucket
    native_batches: bool = False
    pending: deque[Alert] = field(default_factory=deque)
    deferred: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    initial_s: float = 0.5
    max_s: float = 10.0


class Dispatcher:
    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        retry: RetryPolicy = RetryPolicy(),
        digest_min: int = 3,
        max_pending: int = 1000,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_outcome: Outcome | None = None,
    ) -> None:
        self.channels = list(channels)
        self.retry = retry
        self.digest_min = digest_min
        self.max_pending = max_pending
        self.clock = clock
        self.sleep = sleep
        self.on_outcome = on_outcome or (lambda channel, outcome, n: None)

    def notify(self, alerts: Sequence[Alert]) -> None:
        """Queue alert transitions on every channel and send what the rate limits allow."""
        for ch in self.channels:
            for a in alerts:
                if len(ch.pending) >= self.max_pending:
                    dropped = ch.pending.popleft()
                    logger.error(
                        "notification queue of %s full: dropping %s %s",
                        ch.notifier.name,
                        dropped.status,
                        dropped.alert_id,
                    )
                    self.on_outcome(ch.notifier.name, "failed", 1)
                ch.pending.append(a)
        self.flush()

    def resend(self, alerts: Sequence[Alert]) -> None:
        """Re-send firing alerts to channels that expect it (Alertmanager), bypassing the queues."""
        if not alerts:
            return
        for ch in self.channels:
            if ch.native_batches:
                self._deliver(ch, list(alerts))

    def flush(self) -> None:
        """Send queued alerts as far as each channel's rate limit allows; the rest wait for a later flush."""
        for ch in self.channels:
            while ch.pending:
                if not ch.bucket.take(self.clock()):
                    fresh = [a for a in ch.pending if id(a) not in ch.deferred]
                    if fresh:
                        self.on_outcome(ch.notifier.name, "rate_limited", len(fresh))
                        ch.deferred.update(id(a) for a in fresh)
                    break
                if ch.native_batches or len(ch.pending) >= self.digest_min:
                    batch = list(ch.pending)
                    ch.pending.clear()
                else:
                    batch = [ch.pending.popleft()]
                for a in batch:
                    ch.deferred.discard(id(a))
                self._deliver(ch, batch)

    def pending(self) -> int:
        return sum(len(ch.pending) for ch in self.channels)

    def pending_alerts(self) -> dict[str, list[Alert]]:
        """The queued (rate-limited) alerts per channel name, oldest first: kept in the worker's state."""
        return {ch.notifier.name: list(ch.pending) for ch in self.channels if ch.pending}

    def restore_pending(self, channel: str, alerts: Sequence[Alert]) -> int:
        """Queue alerts saved by an earlier run (or another worker) on the channel named `channel`;
        they go out at the next flush the rate limit allows. Returns how many were queued (0 when the
        channel is no longer configured)."""
        for ch in self.channels:
            if ch.notifier.name == channel:
                ch.pending.extend(alerts)
                return len(alerts)
        if alerts:
            logger.warning(
                "%d saved notification(s) for %s dropped: channel not configured", len(alerts), channel
            )
        return 0

    def drop_pending(self, drop: Callable[[Alert], bool]) -> int:
        """Forget queued alerts for which `drop` is true (their partition moved to another worker, which
        restores them from the state topic). Returns how many were dropped."""
        dropped = 0
        for ch in self.channels:
            kept = deque(a for a in ch.pending if not drop(a))
            dropped += len(ch.pending) - len(kept)
            ch.deferred.intersection_update(id(a) for a in kept)
            ch.pending = kept
        return dropped

    def _deliver(self, ch: Channel, batch: list[Alert]) -> bool:
        name = ch.notifier.name
        delay = self.retry.initial_s
        for attempt in range(self.retry.max_retries + 1):
            try:
                ch.notifier.send(batch, self.clock())
            except PermanentNotifyError as exc:
                logger.error("%s: notification of %d alert(s) failed permanently: %s", name, len(batch), exc)
                break
            except NotifyError as exc:
                if attempt >= self.retry.max_retries:
                    logger.error(
                        "%s: notification of %d alert(s) failed after %d tries: %s",
                        name,
                        len(batch),
                        attempt + 1,
                        exc,
                    )
                    break
                logger.warning("%s: notification failed (%s), retrying in %.1fs", name, exc, delay)
                self.sleep(delay)
                delay = min(self.retry.max_s, delay * 2)
            except Exception:
                logger.exception("%s: notifier crashed", name)
                break
            else:
                self.on_outcome(name, "sent", len(batch))
                return True
        self.on_outcome(name, "failed", len(batch))
        return False
