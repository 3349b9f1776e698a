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
not tried again (exponential backoff, or the receiver's Retry-After when longer, capped; never 0, which
had a failing channel tried at every flush); a later flush retries it.
So a receiver that is down costs one request timeout per backoff interval, other channels keep sending,
and the queue (saved in the worker's state) keeps the notification until the receiver is back. Permanent
failures (3xx, 4xx but 408/429) are dropped, and a queue never holds more than `max_pending` alerts.

Firing alerts are re-sent (to Alertmanager, which resolves what is not re-sent by its endsAt) in rounds:
each flush spends at most `resend_budget_s` (and one request) of the worker's thread on the round, and
the next flush goes on where it stopped, so a slow receiver and thousands of firing alerts no longer hold
one step past Kafka's max.poll.interval.ms. Re-sends are not notifications: they are not counted `sent`,
and a re-send that fails counts its alerts `failed` once until one of theirs gets through.

Deliveries a notifier finishes itself (`FollowUps`: e-mail to recipients an SMTP server refused for now)
are tried from each flush too, within a budget of their own of the same length, and given up (logged,
counted `failed`) when the dispatcher is closed: they are not kept in the worker's state."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from alerts.model import Alert
from alerts.notifiers.base import (
    Closable,
    FollowUps,
    Notifier,
    NotifyError,
    PartialDelivery,
    PermanentNotifyError,
    TransientNotifyError,
    UnrenderableAlert,
    WaitCapped,
)

logger = logging.getLogger(__name__)

Outcome = Callable[[str, str, int], None]
Identity = tuple[str, str, str]  # rule, key type, key: an alert in Alertmanager, whatever its evidence
# What one flush (or resend) spends at most on a re-send round, plus the request under way when it ran
# out (at most the channel's timeout): the consumer thread must get back to polling Kafka.
RESEND_BUDGET_S = 2.0


class Backlog(NamedTuple):
    """A channel's state for monitoring: the `queued` alerts waiting to be notified (rate-limited, or
    retried while its receiver fails), and its transient `failures` in a row while something waits for it
    (queued alerts, or a re-send round); 0 once a delivery gets through, or when nothing waits."""

    queued: int
    failures: int


def identity(alert: Alert) -> Identity:
    """Which alert this is, across its transitions and re-evaluations (no hash: its key may not be valid
    UTF-8)."""
    return alert.rule, alert.key_type, alert.key


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
    resending: list[Alert] = field(default_factory=list)  # what the re-send round has yet to send
    resend_failed: set[Identity] = field(default_factory=set)  # counted failed since a re-send went

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

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.max_s > 0):  # a wait of 0 tries a failing channel at every flush
            raise ValueError("backoff waits must be positive")

    def delay(self, failures: int, retry_after_s: float | None) -> float:
        """Wait after the `failures`-th failure in a row (1-based): exponential, or the receiver's
        Retry-After (capped) when longer. Never shorter than the backoff: `Retry-After: 0`, or a date in
        the past, had a failing channel tried at every flush."""
        backoff = min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 60))
        if retry_after_s is None:
            return backoff
        return max(backoff, min(retry_after_s, self.max_retry_after_s))


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
        resend_budget_s: float = RESEND_BUDGET_S,
    ) -> None:
        """`clock` times backoff, rate limits and the re-send budget: a monotonic clock, since a wall
        clock stepped back (NTP) shut a channel for the length of the step. `wall_clock` is what `send` is
        told is now (the receiver's Retry-After date, Alertmanager's startsAt and endsAt, an e-mail's
        Date)."""
        self.channels = list(channels)
        self.retry = retry
        self.resend_budget_s = resend_budget_s
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
        """Start a round re-sending the firing `alerts` to channels that expect it (Alertmanager),
        bypassing the queues, and send what `resend_budget_s` allows; later flushes send the rest. The
        alerts the last round had not reached go first, so that rounds that never end in one step still
        reach every alert. A channel in backoff sends when its wait is over, and its failure stops the
        round there until then."""
        firing = {identity(a) for a in alerts}
        for ch in self.channels:
            if ch.native_batches:
                ch.resending = unfinished_first(ch.resending, alerts)
                ch.resend_failed &= firing  # an alert no longer firing is counted no more
        self._resend_rounds()

    def resending(self) -> int:
        """How many firing alerts the re-send rounds have yet to send."""
        return sum(len(ch.resending) for ch in self.channels)

    def flush(self) -> None:
        """Send queued alerts as far as each channel's rate limit and backoff allow, then go on with the
        re-send rounds; the rest wait for a later flush. A failing channel gets one try per flush, so it
        never holds the others up for long."""
        for ch in self.channels:
            self._flush_channel(ch)
        self._follow_ups()
        self._resend_rounds()

    def close(self) -> None:
        """Give up the notifiers' follow-ups (e-mail to recipients refused for now: not saved in the
        worker's state; logged as an error, counted `failed`) and close their connections (the HTTP
        ones'). The alert worker closes a dispatcher it built when it stops, since `finsent run` builds a
        new one at each restart; call it only on a dispatcher whose clients are yours (not one given a
        `client` you keep using)."""
        for ch in self.channels:
            if isinstance(ch.notifier, FollowUps):
                failed = ch.notifier.abandon_follow_ups()
                if failed:
                    self.on_outcome(ch.notifier.name, "failed", failed)
            if isinstance(ch.notifier, Closable):
                ch.notifier.close()

    def follow_ups(self) -> int:
        """How many messages the notifiers have yet to send again to some of their recipients."""
        return sum(
            ch.notifier.follow_ups_pending() for ch in self.channels if isinstance(ch.notifier, FollowUps)
        )

    def pending(self) -> int:
        return sum(len(ch.pending) for ch in self.channels)

    def backlog(self) -> dict[str, Backlog]:
        """Per channel name, what waits for it and how often it failed in a row meanwhile: the worker
        exports them as gauges, since `failed` counts a stuck alert once and a channel down for hours then
        looked healthy after its first failure. The queues are saved in the worker's state and restored
        into the dispatcher, so a restart exports them again; its failures count again from its first try.
        Failures are 0 while nothing waits: a queue handed over with its partitions, or emptied by a
        permanent failure (counted `failed`), is no outage of the channel's any more."""
        return {
            ch.notifier.name: Backlog(len(ch.pending), ch.failures if ch.pending or ch.resending else 0)
            for ch in self.channels
        }

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
        restores them from the state topic). Returns how many were dropped. The re-send rounds end too:
        their alerts may now be another worker's, which may resolve them (re-sent still firing after that,
        one would fire again); the next resend is of this worker's own."""
        dropped = 0
        for ch in self.channels:
            ch.resending.clear()
            gone = {id(a): a for a in ch.pending if drop(a)}
            if gone:
                ch.pending = deque(a for a in ch.pending if id(a) not in gone)
                ch.forget(gone.values())
                dropped += len(gone)
        return dropped

    def _enqueue(self, ch: Channel, alerts: Iterable[Alert]) -> None:
        """Append to the channel's queue; when it is full the oldest alert goes (counted as failed), so a
        channel that is down for days holds at most `max_pending` alerts. A transition leaves the re-send
        round: the round's copy is older (a firing re-sent after its resolve would fire it again)."""
        alerts = list(alerts)
        if ch.resending:
            newer = {identity(a) for a in alerts}
            ch.resending = [a for a in ch.resending if identity(a) not in newer]
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
                self._failed(ch, [exc.alert], done=True)
                ch.bucket.refund()
                ch.pending.extendleft(reversed(rest))
                return True
            logger.error("%s: notification of %d alert(s) failed permanently: %s", name, len(batch), exc)
        except PermanentNotifyError as exc:
            logger.error("%s: notification of %d alert(s) failed permanently: %s", name, len(batch), exc)
        except PartialDelivery as exc:
            self._partly_delivered(ch, batch, exc)
            return True
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

    def _partly_delivered(self, ch: Channel, batch: list[Alert], exc: PartialDelivery) -> None:
        """Some recipients have the message, others refused it: never sent again as a whole (the others
        would get it twice), logged (an error, a warning when every refusal was temporary), and counted
        `sent`, and, once, `failed` when some recipient will not get it. Those refused for now the
        notifier may send it again to, alone (its follow-ups, tried at each flush; they count `failed`
        themselves when they give up)."""
        level = logging.WARNING if exc.temporary else logging.ERROR
        name = ch.notifier.name
        logger.log(level, "%s: notification of %d alert(s) delivered in part: %s", name, len(batch), exc)
        ch.failures, ch.not_before = 0, 0.0
        if exc.lost:
            self._failed(ch, batch, done=True)
        else:
            if exc.counted is not None and any(id(a) in ch.reported for a in batch):
                exc.counted()  # counted `failed` while stuck: the retry giving up must not count again
            ch.forget(batch)
        self.on_outcome(name, "sent", len(batch))

    def _follow_ups(self) -> None:
        """Let the notifiers finish deliveries they keep (`FollowUps`): one due follow-up after another,
        within one `resend_budget_s` for them all (plus the attempt under way when it ran out, at most
        that notifier's timeout), and on to the next notifier when one says stop (nothing more is due, or
        its server could not be reached)."""
        start = self.clock()
        for ch in self.channels:
            notifier = ch.notifier
            if not isinstance(notifier, FollowUps):
                continue
            while True:
                try:
                    result = notifier.follow_up(self.clock())
                except Exception:
                    logger.exception("%s: notifier crashed in a follow-up", notifier.name)
                    break
                if result.failed:
                    self.on_outcome(notifier.name, "failed", result.failed)
                if not result.go_on or self.clock() - start >= self.resend_budget_s:
                    break

    def _resend_rounds(self) -> None:
        """Go on with each channel's re-send round, within one `resend_budget_s` for them all."""
        start = self.clock()
        for ch in self.channels:
            self._resend(ch, start)

    def _resend(self, ch: Channel, start: float) -> None:
        """Re-send what is left of the channel's round, in requests of the size the channel takes, until
        it is done, the channel fails (backing off) or the budget from `start` is spent."""
        while ch.resending and self.clock() >= ch.not_before and self.clock() - start < self.resend_budget_s:
            n = max(1, min(ch.notifier.batch_size(ch.resending), len(ch.resending)))
            again = self._resend_batch(ch, ch.resending[:n])
            if again is None:
                return
            ch.resending = again + ch.resending[n:]

    def _resend_batch(self, ch: Channel, batch: list[Alert]) -> list[Alert] | None:
        """One request. None after a transient failure (backing off; the batch stays in the round);
        else what to send again at once: the batch without an alert that cannot be rendered, or nothing."""
        name = ch.notifier.name
        try:
            ch.notifier.send(batch, self.wall_clock())
        except UnrenderableAlert as exc:
            rest = self._without(ch, batch, exc)
            if rest is not None:
                self._resend_failed(ch, [exc.alert])
                return rest
            logger.error("%s: re-sending %d firing alert(s) failed: %s", name, len(batch), exc)
            self._resend_failed(ch, batch)
        except PermanentNotifyError as exc:
            logger.error("%s: re-sending %d firing alert(s) failed: %s", name, len(batch), exc)
            self._resend_failed(ch, batch)
        except PartialDelivery as exc:
            logger.error("%s: re-sending %d firing alert(s) delivered in part: %s", name, len(batch), exc)
            ch.failures, ch.not_before = 0, 0.0
        except NotifyError as exc:
            self._backoff(ch, exc, batch, resend=True)
            return None
        except Exception:
            logger.exception("%s: notifier crashed", name)
            self._resend_failed(ch, batch)
        else:
            ch.failures, ch.not_before = 0, 0.0
            ch.resend_failed.difference_update(identity(a) for a in batch)
        return []

    def _resend_failed(self, ch: Channel, alerts: list[Alert]) -> None:
        """Count re-sent alerts as failed, each once until a re-send of it gets through: a receiver down
        for an hour is one `failed` per firing alert, not one per alert per re-send interval."""
        new = {identity(a) for a in alerts} - ch.resend_failed
        if new:
            ch.resend_failed |= new
            self.on_outcome(ch.notifier.name, "failed", len(new))

    def _without(self, ch: Channel, batch: list[Alert], exc: UnrenderableAlert) -> list[Alert] | None:
        """The batch without the alert that cannot be rendered, which fails for good (logged; the caller
        counts it); None when that alert is not in the batch (then the batch fails as a whole)."""
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
        return rest

    def _backoff(self, ch: Channel, exc: NotifyError, batch: list[Alert], *, resend: bool = False) -> None:
        """Hold the channel back after a transient failure; report it once it failed too often in a row."""
        ch.failures += 1
        retry_after = exc.retry_after_s if isinstance(exc, TransientNotifyError) else None
        delay = self.retry.delay(ch.failures, retry_after)
        if isinstance(ch.notifier, WaitCapped):  # Alertmanager: within the firing alerts' TTL
            delay = min(delay, max(float(ch.notifier.max_wait_s), self.retry.initial_s))
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
            self._resend_failed(ch, batch)
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


def unfinished_first(unfinished: Sequence[Alert], alerts: Sequence[Alert]) -> list[Alert]:
    """A new re-send round of `alerts`: those the unfinished round had not yet sent first."""
    left = {identity(a) for a in unfinished}
    return [a for a in alerts if identity(a) in left] + [a for a in alerts if identity(a) not in left]
