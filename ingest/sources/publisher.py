"""Where messages go: Kafka (durable, keyed by source) or, for `finsent sources check`, a stream."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

log = logging.getLogger(__name__)


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class PublishError:
    """Why one message was not acknowledged. Retriable errors (broker down, timeout) hold the checkpoint
    back so the item is sent again; others (the broker rejects the record) will never succeed."""

    message: str
    retriable: bool


class Publisher(Protocol):
    publishes: bool
    """False for a publisher that only shows what would be published (`finsent sources check`)."""

    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        """Send messages in order and wait for the acks; returns None or the error per message."""
        ...

    def close(self) -> None: ...


# How long a record Kafka acknowledged only after its run had given up waiting is remembered as
# published: the source's next run asks for it again well within this; after it, a source that never
# asks again (removed, or the item was published by another source) no longer holds it in memory.
LATE_ACK_KEEP_S = 24 * 3600.0
# kafka-python's own bound on a send() waiting for a topic's metadata or for buffer room (max_block_ms).
MAX_BLOCK_S = 60.0


@dataclass(frozen=True)
class _Sent:
    """One record handed to the producer: its future, and when (monotonic) it was sent."""

    future: Any
    at: float


class KafkaPublisher:
    """kafka-python producer with acks=all and retries; idempotent where the broker supports it.

    Keyed by source name, so that one source's items land in one partition in order. Without idempotence
    one request is in flight at a time, so that retries cannot reorder a source's items.

    A record not acknowledged within `flush_timeout_s` is reported as not published but stays in the
    producer, which may still deliver it (until delivery_timeout_ms, 2 minutes). Its future is kept: when
    the same message (topic, key, id) is published again, it is not sent again until that future says how
    the first send ended, so that a late acknowledgement never makes a second copy."""

    publishes = True

    def __init__(self, client_kwargs: Mapping[str, Any], *, flush_timeout_s: float = 30.0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, UnsupportedVersionError

        common = {
            **client_kwargs,
            "acks": "all",
            "retries": 10,
            "linger_ms": 5,
            # send() waits this long for a topic's metadata, per record, with the broker away.
            "max_block_ms": int(min(flush_timeout_s, MAX_BLOCK_S) * 1000),
            "key_serializer": None,
            "value_serializer": None,
        }
        try:
            self._producer = KafkaProducer(**common, enable_idempotence=True)
            self.idempotent = True
        except (KafkaConfigurationError, UnsupportedVersionError) as e:
            log.warning(
                "idempotent producer not available (%s); using acks=all with one request in flight", e
            )
            self._producer = KafkaProducer(
                **common, enable_idempotence=False, max_in_flight_requests_per_connection=1
            )
            self.idempotent = False
        self._flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._unsettled: dict[tuple[str, str, str], _Sent] = {}

    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        """Within `flush_timeout_s` (plus at most one send() blocked on metadata), never longer: a stopping
        service waits for the run that calls this."""
        deadline = time.monotonic() + self._flush_timeout_s
        idents = [_ident(topic, key, msg) for msg in messages]
        earlier = self._take_unsettled(idents)
        _wait(earlier.values(), deadline)
        outcomes = self._send_in_order(topic, key, messages, idents, earlier)
        if any(isinstance(o, _Sent) for o in outcomes):
            self._flush(topic, deadline)
        return [self._result(ident, o) for ident, o in zip(idents, outcomes, strict=True)]

    def _take_unsettled(self, idents: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], _Sent]:
        """The earlier sends of these messages still on record (removing them), after forgetting those
        that failed (sending again is right) or that are too old to be asked for again."""
        now = time.monotonic()
        with self._lock:
            for ident, sent in list(self._unsettled.items()):
                if (sent.future.is_done and sent.future.failed()) or now - sent.at > LATE_ACK_KEEP_S:
                    del self._unsettled[ident]
            return {i: self._unsettled.pop(i) for i in idents if i in self._unsettled}

    def _send_in_order(
        self,
        topic: str,
        key: str,
        messages: Sequence[Mapping[str, Any]],
        idents: Sequence[tuple[str, str, str]],
        earlier: Mapping[tuple[str, str, str], _Sent],
    ) -> list[_Sent | PublishError | None]:
        """Send each message unless an earlier send of it succeeded. Once one cannot go out now (its
        earlier send is still unresolved, or send() failed for metadata or buffer room), the rest are not
        sent either: they would fail the same way, and sending them would put them before it."""
        outcomes: list[_Sent | PublishError | None] = []
        halted: PublishError | None = None
        for msg, ident in zip(messages, idents, strict=True):
            prior = earlier.get(ident)
            if prior is not None and (not prior.future.is_done or prior.future.succeeded()):
                # Still unresolved (kept and reported so), or acknowledged after its own run gave up
                # (published once already): either way not sent again.
                outcomes.append(prior)
                if halted is None and not prior.future.is_done:
                    halted = PublishError("not sent: an earlier item is not acknowledged yet", retriable=True)
            elif halted is not None:
                outcomes.append(halted)
            else:
                outcome = self._send(topic, key, msg)
                outcomes.append(outcome)
                if isinstance(outcome, PublishError) and outcome.retriable:
                    halted = PublishError(f"not sent: {outcome.message}", retriable=True)
        return outcomes

    def _send(self, topic: str, key: str, msg: Mapping[str, Any]) -> _Sent | PublishError:
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(topic, key=key.encode("utf-8"), value=encode(msg))
        except KafkaError as e:  # no metadata or buffer room within max_block_ms, or a record too large
            return _error(e)
        return _Sent(future, time.monotonic())

    def _flush(self, topic: str, deadline: float) -> None:
        """Send what lingers now and wait for the acks; the futures then tell which records have one."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as e:
            log.warning("flush to %s did not complete: %s", topic, e)

    def _result(
        self, ident: tuple[str, str, str], outcome: _Sent | PublishError | None
    ) -> PublishError | None:
        """The outcome of one message; a send still unresolved is kept, to be awaited before a resend."""
        if not isinstance(outcome, _Sent):
            return outcome
        future = outcome.future
        if not future.is_done:
            with self._lock:
                self._unsettled[ident] = outcome
            return PublishError(
                f"not acknowledged within {self._flush_timeout_s}s; not sent again before Kafka gives up",
                retriable=True,
            )
        if future.failed():
            return _error(future.exception)
        return None

    def close(self) -> None:
        """Flush and close; undelivered messages were never checkpointed, so they are sent after restart."""
        from kafka.errors import KafkaError

        with self._lock:
            awaited = sum(1 for sent in self._unsettled.values() if not sent.future.is_done)
        if awaited:
            log.warning(
                "closing with %d record(s) still unacknowledged: if Kafka takes them now, they are "
                "published again after restart",
                awaited,
            )
        try:
            self._producer.close(timeout=self._flush_timeout_s)
        except KafkaError as e:
            log.warning(
                "producer closed with undelivered messages (%s); they are sent again after restart", e
            )
            # kafka-python's close() flushes first and gives up when that times out, leaving the sender
            # thread running; stop it the way close() would have.
            sender = getattr(self._producer, "_sender", None)
            if sender is not None:
                sender.force_close()
            self._producer._closed = True


class StreamPublisher:
    """Writes each message as one JSON line (the raw message contract) and publishes nothing."""

    publishes = False

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        for msg in messages:
            self._stream.write(json.dumps(msg, ensure_ascii=False) + "\n")
        self._stream.flush()
        return [None] * len(messages)

    def close(self) -> None:
        self._stream.flush()


def _error(e: BaseException) -> PublishError:
    return PublishError(f"{type(e).__name__}: {e}", retriable=bool(getattr(e, "retriable", True)))


def _ident(topic: str, key: str, msg: Mapping[str, Any]) -> tuple[str, str, str]:
    """Which message this is, across runs: its id (stable for an item), else its whole text."""
    ident = msg.get("id")
    return topic, key, ident if isinstance(ident, str) and ident else encode(msg).decode("utf-8")


def _wait(sent: Iterable[_Sent], deadline: float) -> None:
    """Until these earlier sends are resolved or the deadline passes; the futures then tell how."""
    for s in sent:
        if s.future.is_done:
            continue
        with contextlib.suppress(Exception):  # failed or timed out: the future itself says which
            s.future.get(timeout=max(0.0, deadline - time.monotonic()))
