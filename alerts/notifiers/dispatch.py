"""Deliver alerts to every channel: per-channel queues, retries with backoff, rate limits, digests.

Alerts due on a channel queue there; each flush sends as many messages as the channel's token bucket
allows. When `digest_min` or more alerts are queued they go out as a digest: as many as one message of
that channel carries (its notifier's `batch_size`). Slack and e-mail digests detail the first alerts and
name or count the rest, so an alert storm costs one message, not hundreds; the webhook and Alertmanager,
which carry every alert as data, get requests of bounded size (a 1,000-alert body would be refused, and
that refusal is permanent). Channels that take lists natively (Alertmanager) never wait for `digest_min`.
Each message succeeds, is retried or fails on its own; an alert that cannot be rendered fails alone, and
the rest of its message goes out without it.

Nothing here sleeps: the caller (the alert worker's consumer thread) must keep polling Kafka. A transient
failure puts the batch back at the head of its channel's queue with a time before which that channel is
not tried again (the receiver's Retry-After, capped, else exponential backoff); a later flush retries it.
So a receiver that is down costs one request timeout per backoff interval, other channels keep sending,
and the queue (saved in the worker's state) keeps the notification until the receiver is back. Permanent
failures (3xx, 4xx but 408/429) are dropped, and a queue never holds more than `max_pending` alerts."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from alerts.model import Alert
from alerts.notifiers.base import (
    Notifier,
    NotifyError,
    PermanentNotifyError,
    TransientNotifyError,
    UnrenderableAlert,
)

logger = logging.getLogger(__name__)

Outcome = Callable[[str, str, int], None]


@dataclass
class TokenBucket:
    """`rate_per_minute` tokens per minute, at most `burst` saved up; `now` from a monotonic clock."""

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

    def refund(self) -> None:
        """A message that did not get through does not count against the limit."""
        self.tokens = min(float(self.burst), self.tokens + 1.0)


@dataclass
class Channel:
    notifier: Notifier
    bucket: TokenBucket
    native_batches: bool = False
    pending: deque[Alert] = field(default_factory=deque)
    deferred: set[int] = field(default_factory=set)  # ids of queued alerts counted as rate_limited
    reported: set[int] = field(default_factory=set)  # ids of queued alerts counted as failed
    failures: int = 0  # transient failures in a row
    not_before: float = 0.0  # no request before this time (the dispatcher's monotonic clock)

    def forget(self, alerts: Iterable[Alert]) -> None:
        for a in alerts:
            self.deferred.discard(id(a))
            self.reported.discard(id(a))


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between tries of a channel that fails transiently. After `max_retries` retries in a row
    the failure is reported (an ERROR log line, outcome `failed`), but the alerts stay queued."""

    max_retries: int = 3
    initial_s: float = 0.5
    max_s: float = 10.0
    max_retry_after_s: float = 600.0

    def delay(self, failures: int, retry_after_s: float | None) -> float:
        """Wait after the `failures`-th failure in a row (1-based): Retry-After if given, else exponential."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        return min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 60))


class Dispatcher:
    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        retry: RetryPolicy = RetryPolicy(),
        digest_min: int = 3,
        max_pending: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_outcome: Outcome | None = None,
    ) -> None:
        """`clock` times backoff and rate limits: a monotonic clock, since a wall clock stepped back (NTP)
        shut a channel for the length of the step. `wall_clock` is what `send` is told is now (the
        receiver's Retry-After date, Alertmanager's startsAt and endsAt, an e-mail's Date)."""
        self.channels = list(channels)
        self.retry = retry
        self.digest_min = digest_min
        self.max_pending = max_pending
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_outcome: Outcome = (
            on_outcome if on_outcome is not None else (lambda channel, outcome, n: None)
        )

    def notify(self, alerts: Sequence[Alert]) -> None:
        """Queue alert transitions on every channel and send what the rate limits allow."""
        for ch in self.channels:
            self._enqueue(ch, alerts)
        self.flush()

    def resend(self, alerts: Sequence[Alert]) -> None:
        """Re-send firing alerts to channels that expect it (Alertmanager), bypassing the queues. One try:
        the next re-send covers a failure, and a channel in backoff is skipped."""
        if not alerts:
            return
        for ch in self.channels:
            if ch.native_batches and self.clock() >= ch.not_before:
                self._resend(ch, list(alerts))

    def flush(self) -> None:
        """Send queued alerts as far as each channel's rate limit and backoff allow; the rest wait for a
        later flush. A failing channel gets one try per flush, so it never holds the others up for long."""
        for ch in self.channels:
            self._flush_channel(ch)

    def close(self) -> None:
        """Close the notifiers' connections (those with a `close`: the HTTP ones). The alert worker
        closes a dispatcher it built when it stops, since `finsent run` builds a new one at each restart;
        call it only on a dispatcher whose clients are yours (not one given a `client` you keep using)."""
        for ch in self.channels:
            close = getattr(ch.notifier, "close", None)
            if callable(close):
                close()

    def pending(self) -> int:
        return sum(len(ch.pending) for ch in self.channels)

    def pending_alerts(self) -> dict[str, list[Alert]]:
        """The queued (rate-limited or retried) alerts per channel name, oldest first: kept in the
        worker's state."""
        return {ch.notifier.name: list(ch.pending) for ch in self.channels if ch.pending}

    def restore_pending(self, channel: str, alerts: Sequence[Alert]) -> int:
        """Queue alerts saved by an earlier run (or another worker) on the channel named `channel`;
        they go out at the next flush the rate limit allows. Returns how many were queued (0 when the
        channel is no longer configured)."""
        for ch in self.channels:
            if ch.notifier.name == channel:
                self._enqueue(ch, alerts)
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
            gone = {id(a): a for a in ch.pending if drop(a)}
            if gone:
                ch.pending = deque(a for a in ch.pending if id(a) not in gone)
                ch.forget(gone.values())
                dropped += len(gone)
        return dropped

    def _enqueue(self, ch: Channel, alerts: Iterable[Alert]) -> None:
        """Append to the channel's queue; when it is full the oldest alert goes (counted as failed), so a
        channel that is down for days holds at most `max_pending` alerts."""
        for a in alerts:
            if len(ch.pending) >= self.max_pending:
                dropped = ch.pending.popleft()
                logger.error(
                    "notification queue of %s full: dropping %s %s",
                    ch.notifier.name,
                    dropped.status,
                    dropped.alert_id,
                )
                self._failed(ch, [dropped], done=True)
            ch.pending.append(a)

    def _flush_channel(self, ch: Channel) -> None:
        while ch.pending:
            now = self.clock()
            if now < ch.not_before:
                return
            if not ch.bucket.take(now):
                fresh = [a for a in ch.pending if id(a) not in ch.deferred]
                if fresh:
                    self.on_outcome(ch.notifier.name, "rate_limited", len(fresh))
                    ch.deferred.update(id(a) for a in fresh)
                return
            if not self._deliver(ch, self._take(ch)):
                return

    def _take(self, ch: Channel) -> list[Alert]:
        """The alerts of the next message, from the head of the queue: one alone, or as many as one
        message of the channel carries once a digest is due (or always, for a channel taking lists)."""
        n = 1
        if ch.native_batches or len(ch.pending) >= self.digest_min:
            n = ch.notifier.batch_size(list(ch.pending))
        return [ch.pending.popleft() for _ in range(max(1, min(n, len(ch.pending))))]

    def _deliver(self, ch: Channel, batch: list[Alert]) -> bool:
        """Send one queued batch. True when it is done with (sent, or dropped for good); False when it
        went back to the head of the queue to be retried later."""
        name = ch.notifier.name
        try:
            ch.notifier.send(batch, self.wall_clock())
        except UnrenderableAlert as exc:
            rest = self._without(ch, batch, exc)
            if rest is not None:  # nothing went out: the others go at once, without it
                ch.bucket.refund()
                ch.pending.extendleft(reversed(rest))
                return True
            logger.error("%s: notification of %d alert(s) failed permanently: %s", name, len(batch), exc)
        except PermanentNotifyError as exc:
            logger.error("%s: notification of %d alert(s) failed permanently: %s", name, len(batch), exc)
        except NotifyError as exc:
            ch.bucket.refund()
            ch.pending.extendleft(reversed(batch))
            self._backoff(ch, exc, batch)
            return False
        except Exception:
            logger.exception("%s: notifier crashed", name)
        else:
            ch.failures, ch.not_before = 0, 0.0
            ch.forget(batch)
            self.on_outcome(name, "sent", len(batch))
            return True
        self._failed(ch, batch, done=True)
        return True

    def _resend(self, ch: Channel, alerts: list[Alert]) -> None:
        """Re-send in as many requests as the channel's size limit takes; a transient failure stops it."""
        rest = alerts
        while rest:
            n = max(1, min(ch.notifier.batch_size(rest), len(rest)))
            again = self._resend_batch(ch, rest[:n])
            if again is None:
                return
            rest = again + rest[n:]

    def _resend_batch(self, ch: Channel, batch: list[Alert]) -> list[Alert] | None:
        """One request. None after a transient failure (backing off); else what to send again at once:
        the batch without an alert that cannot be rendered, or nothing."""
        name = ch.notifier.name
        try:
            ch.notifier.send(batch, self.wall_clock())
        except UnrenderableAlert as exc:
            rest = self._without(ch, batch, exc)
            if rest is not None:
                return rest
            logger.error("%s: re-sending %d firing alert(s) failed: %s", name, len(batch), exc)
            self.on_outcome(name, "failed", len(batch))
        except PermanentNotifyError as exc:
            logger.error("%s: re-sending %d firing alert(s) failed: %s", name, len(batch), exc)
            self.on_outcome(name, "failed", len(batch))
        except NotifyError as exc:
            self._backoff(ch, exc, batch, resend=True)
            return None
        except Exception:
            logger.exception("%s: notifier crashed", name)
            self.on_outcome(name, "failed", len(batch))
        else:
            ch.failures, ch.not_before = 0, 0.0
            self.on_outcome(name, "sent", len(batch))
        return []

    def _without(self, ch: Channel, batch: list[Alert], exc: UnrenderableAlert) -> list[Alert] | None:
        """The batch without the alert that cannot be rendered, which fails for good (logged, counted);
        None when that alert is not in the batch (then the batch fails as a whole)."""
        bad = exc.alert
        rest = [a for a in batch if a is not bad]
        if len(rest) == len(batch):
            return None
        logger.error(
            "%s: dropping %s alert %s %s=%s: %s",
            ch.notifier.name,
            bad.status,
            bad.rule,
            bad.key_type,
            ascii(bad.key[:100]),  # never alert_id: its hash needs the key as valid UTF-8
            exc,
        )
        self._failed(ch, [bad], done=True)
        return rest

    def _backoff(self, ch: Channel, exc: NotifyError, batch: list[Alert], *, resend: bool = False) -> None:
        """Hold the channel back after a transient failure; report it once it failed too often in a row."""
        ch.failures += 1
        retry_after = exc.retry_after_s if isinstance(exc, TransientNotifyError) else None
        delay = self.retry.delay(ch.failures, retry_after)
        ch.not_before = self.clock() + delay
        name, what = ch.notifier.name, "re-sending" if resend else "notification of"
        if ch.failures <= self.retry.max_retries:
            logger.warning(
                "%s: %s %d alert(s) failed (%s), retrying in %.1fs", name, what, len(batch), exc, delay
            )
            return
        logger.error(
            "%s: %s %d alert(s) failed %d times in a row (%s); next try in %.1fs",
            name,
            what,
            len(batch),
            ch.failures,
            exc,
            delay,
        )
        if resend:
            self.on_outcome(name, "failed", len(batch))
        else:
            self._failed(ch, batch, done=False)

    def _failed(self, ch: Channel, alerts: list[Alert], *, done: bool) -> None:
        """Count queued alerts as failed, each once: when it is dropped, or first reported still stuck."""
        unreported = [a for a in alerts if id(a) not in ch.reported]
        if done:
            ch.forget(alerts)
        else:
            ch.reported.update(id(a) for a in unreported)
        if unreported:
            self.on_outcome(ch.notifier.name, "failed", len(unreported))
