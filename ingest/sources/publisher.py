"""Where messages go: Kafka (durable, keyed by source) or, for `finsent sources check`, a stream."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
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
    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        """Send messages in order and wait for the acks; returns None or the error per message."""
        ...

    def close(self) -> None: ...


class KafkaPublisher:
    """kafka-python producer with acks=all and retries; idempotent where the broker supports it.

    Keyed by source name, so that one source's items land in one partition in order. Without idempotence
    one request is in flight at a time, so that retries cannot reorder a source's items."""

    def __init__(self, client_kwargs: Mapping[str, Any], *, flush_timeout_s: float = 30.0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, UnsupportedVersionError

        common = {
            **client_kwargs,
            "acks": "all",
            "retries": 10,
            "linger_ms": 5,
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

    def publish(
        self, topic: str, key: str, messages: Sequence[Mapping[str, Any]]
    ) -> list[PublishError | None]:
        from kafka.errors import KafkaError

        futures: list[Any] = []
        errors: list[PublishError | None] = [None] * len(messages)
        for i, msg in enumerate(messages):
            try:
                futures.append(self._producer.send(topic, key=key.encode("utf-8"), value=encode(msg)))
            except KafkaError as e:
                futures.append(None)
                errors[i] = _error(e)
        try:
            self._producer.flush(timeout=self._flush_timeout_s)
        except KafkaError as e:
            log.warning("flush to %s did not complete: %s", topic, e)
        for i, fut in enumerate(futures):
            if fut is None:
                continue
            if not fut.is_done:
                errors[i] = PublishError(f"not acknowledged within {self._flush_timeout_s}s", retriable=True)
                continue
            try:
                fut.get(timeout=0)
            except Exception as e:  # any failure of one record is reported, never raised
                errors[i] = _error(e)
        return errors

    def close(self) -> None:
        """Flush and close; undelivered messages were never checkpointed, so they are sent after restart."""
        from kafka.errors import KafkaError

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
