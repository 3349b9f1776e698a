"""Labeled-event and dead-letter producers. Sends are asynchronous; `flush()` makes them durable (acks=all)
and raises if any record of the batch failed, so the caller never commits past an unwritten record."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import TopicPartition

from finsent.kafka_internals import track_topic
from finsent.outputs.es_sink import SinkStopped
from finsent.outputs.partitioner import CachedKeyPartitioner
from finsent.settings import KafkaSettings
from ingest.message import DeadLetter

FLUSH_DRIVEN = {"linger_ms": 1000, "batch_size": 256 * 1024}
"""Producer settings for a caller that flushes after every batch (the pipeline's outputs): records wait to
be sent until that flush, so one produce request per partition carries the whole batch. With the default
5 ms linger a 64-message batch went out as many small requests (more client and broker CPU per message:
bench/pipeline.py, pipeline/model ratio 0.80 -> 0.83). 256 KiB stays under the broker's default 1 MiB
message.max.bytes."""


log = logging.getLogger(__name__)

FLUSH_SLICE_S = 1.0
"""How long one wait of a stoppable flush lasts: how late a stop is noticed while the broker is away."""

FLUSH_STALL_WARNING_S = 10.0
"""A flush still waiting after this long logs once which partitions hold unacknowledged records (and
whether the producer knows their leader); the records fail, and the batch is counted in
finsent_output_errors_total and retried, only at the producer's delivery timeout (2 minutes)."""

CLOSE_JOIN_S = 1.0
"""How long closing waits for the producer's I/O thread once its records are dropped."""

DEAD_LETTER_HEADROOM_BYTES = 16 * 1024
"""Room left in a produce request for a dead letter's key, headers and framing."""


WATERMARK_FAILURE_LOG_S = 60.0
"""Failed watermark records are logged at most this often, with a count: they fail together (one per
partition, every watermark interval), e.g. all at once when a stop during an outage closes the producer."""


class WatermarkFailures:
    """Counts watermark records that were not written and logs them as one line per interval."""

    def __init__(self, interval_s: float = WATERMARK_FAILURE_LOG_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._held = 0
        self._last_error: BaseException | None = None
        self._logged_at: float | None = None

    def __call__(self, error: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._held += 1
            self._last_error = error
            if self._logged_at is not None and now - self._logged_at < self.interval_s:
                return
            held, self._held, self._logged_at = self._held, 0, now
        self._log(held, error)

    def flush(self) -> None:
        """Log the failures held back since the last line (at the producer's close: a stop during an
        outage fails every pending watermark at once, after the first was logged)."""
        with self._lock:
            held, self._held = self._held, 0
        if held:
            self._log(held, self._last_error)

    @staticmethod
    def _log(held: int, error: BaseException | None) -> None:
        log.warning(
            "%d watermark record(s) not written (%s); the alert workers' idle clock waits for the next ones",
            held,
            error,
        )


class OutputError(Exception):
    """A record could not be written; the batch must not be committed."""


def make_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """The workers' producer. Retries are kafka-python's default (unbounded in number, bounded in time by
    delivery_timeout_ms): with a count of 10 at a fixed 100 ms apart, a retriable condition lasting over a
    second (too few in-sync replicas, a leader election during a rolling restart) failed the batch."""
    kw: dict[str, Any] = {
        **settings.client_kwargs(),
        "acks": "all",
        "compression_type": None if settings.compression_type == "none" else settings.compression_type,
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 5,
        "partitioner": CachedKeyPartitioner(),
        **overrides,
    }
    return KafkaProducer(**kw)


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """The contract's `finsent.*` headers for one dead letter. The reason is cut to 4 KiB on a character
    boundary: a cut inside a character left a header consumers cannot decode (unpaired surrogates are
    "?")."""
    reason = dl.reason.encode("utf-8", "replace")
    if len(reason) > 4096:
        reason = reason[:4096].decode("utf-8", "ignore").encode("utf-8")
    return [
        ("finsent.reason", reason),
        ("finsent.error", dl.error.encode()),
        ("finsent.topic", dl.meta.topic.encode("utf-8", "replace")),
        ("finsent.partition", str(dl.meta.partition).encode()),
        ("finsent.offset", str(dl.meta.offset).encode()),
    ]


DEAD_LETTER_MAX_KEY_BYTES = 4096


def dead_letter_record(
    dl: DeadLetter, max_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The key, value and headers of a dead letter, within `max_bytes` for key and value together. A
    record too big for one produce request (it came in compressed, or max_message_bytes is above the
    producer's max_request_size) keeps its first bytes, and `finsent.truncated` gives the original
    value size; a key over 4 KiB is cut the same way (`finsent.key_truncated`). The original stays at
    `finsent.topic/partition/offset` until retention removes it. A record with neither key nor value (a
    null tombstone, which other clients can write) is kept with an empty value: producers refuse a record
    with neither, and retrying would hold its batch for good."""
    headers = dead_letter_headers(dl)
    key, value = dl.meta.key, dl.raw
    if key is None and value is None:
        value = b""
    # the key's own cap is lower than 4 KiB when max_bytes is: a longer key left no room, and a negative
    # room sliced the value from its end
    key_cap = max(0, min(DEAD_LETTER_MAX_KEY_BYTES, max_bytes))
    if key is not None and len(key) > key_cap:
        headers.append(("finsent.key_truncated", str(len(key)).encode()))
        key = key[:key_cap]
    room = max(0, max_bytes - (len(key) if key else 0))
    if value is not None and len(value) > room:
        headers.append(("finsent.truncated", str(len(value)).encode()))
        value = value[:room]
    return key, value, headers


def close_producer(
    producer: KafkaProducer, timeout_s: float | None = None, *, join_s: float = CLOSE_JOIN_S
) -> bool:
    """Close the producer, waiting up to `timeout_s` (None: as long as it takes) for the records it still
    holds, then dropping them; True when some were dropped. kafka-python's close() raises at its flush
    instead, leaving its I/O thread running and the producer open, which its __del__ then tries to close
    again at exit and prints a traceback."""
    try:
        producer.close(timeout=timeout_s)
        return False
    except KafkaTimeoutError:
        pass
    sender = getattr(producer, "_sender", None)
    force_close = getattr(sender, "force_close", None)
    if callable(force_close):
        force_close()  # fails the records still held, wakes every waiter
        sender.join(timeout=join_s)  # type: ignore[union-attr]
    with contextlib.suppress(KafkaTimeoutError):
        producer.close(timeout=0)
    return True


class KafkaOutputs:
    """Sends to the labeled and dead-letter topics and tracks the futures of the current batch."""

    def __init__(self, producer: KafkaProducer, *, labeled_topic: str, dead_letter_topic: str) -> None:
        self.producer = producer
        self.labeled_topic = labeled_topic
        self.dead_letter_topic = dead_letter_topic
        self._futures: list[FutureRecordMetadata] = []
        self._tracked: set[str] = set()
        self._watermark_failed = WatermarkFailures()
        self.stall_warning_s = FLUSH_STALL_WARNING_S
        # Key and value of a dead letter together: what one produce request takes, less the headroom.
        request_limit = int(producer.config.get("max_request_size", 1_048_576))
        self._dead_letter_bytes = max(1024, request_limit - DEAD_LETTER_HEADROOM_BYTES)

    def send_labeled(self, key: bytes, value: bytes) -> None:
        self._send(self.labeled_topic, key=key, value=value)

    def send_dead_letter(self, dl: DeadLetter) -> None:
        key, value, headers = dead_letter_record(dl, self._dead_letter_bytes)
        self._send(self.dead_letter_topic, key=key, value=value, headers=headers)

    def send_watermark(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """One watermark record to every partition of the labeled topic. Not part of any batch (no flush
        waits for it): a lost watermark only delays the alert workers' idle clock until the next one."""
        try:
            self._track(self.labeled_topic)
            partitions = sorted(self.producer.partitions_for(self.labeled_topic) or ())
            for p in partitions:
                future = self.producer.send(
                    self.labeled_topic, key=key, value=value, headers=headers, partition=p
                )
                future.add_errback(self._watermark_failed)
        except KafkaError as e:
            log.warning("sending a watermark to %s failed: %s", self.labeled_topic, e)

    def _send(self, topic: str, **record: Any) -> None:
        """send() itself raises for a record over max_request_size or when the topic's metadata does not
        arrive in max_block_ms, and (ValueError, from the key partitioner) for a topic the metadata lost
        meanwhile: an OutputError too, so the batch is retried, not the worker ended. send()'s other
        ValueErrors cannot come from here: topic names a broker refuses are refused by the settings, every
        record has a key or a value (`dead_letter_record`), and the partitioner always answers."""
        self._track(topic)
        try:
            self._futures.append(self.producer.send(topic, **record))
        except (KafkaError, ValueError) as e:
            raise OutputError(f"Kafka send to {topic} failed: {e}") from e

    def _track(self, topic: str) -> None:
        """Keep `topic` in the producer's metadata requests (see `track_topic`), from its first send."""
        if topic not in self._tracked:
            self._tracked.add(topic)
            track_topic(self.producer, topic)

    def flush(self, timeout_s: float | None = None, *, stop: threading.Event | None = None) -> None:
        """Wait until every record sent since the last flush is acknowledged; raise OutputError if not.
        With `stop`, wait in slices and raise SinkStopped once it is set: with the broker away a flush
        lasts until the records expire (delivery_timeout_ms, 2 minutes), past a pod's grace period."""
        futures, self._futures = self._futures, []
        try:
            if stop is None:
                self.producer.flush(timeout=timeout_s)
            else:
                self._flush_until_stopped(stop, futures)
        except SinkStopped:
            raise
        except Exception as e:
            raise OutputError(f"Kafka flush failed: {e}") from e
        for f in futures:
            if not f.is_done:
                raise OutputError("Kafka record not acknowledged after flush")
            if f.failed():
                raise OutputError(f"Kafka record failed: {f.exception}") from f.exception

    def _flush_until_stopped(self, stop: threading.Event, futures: Sequence[FutureRecordMetadata]) -> None:
        started = time.monotonic()
        warned = False
        while True:
            try:
                self.producer.flush(timeout=FLUSH_SLICE_S)
                return
            except KafkaTimeoutError:
                if stop.is_set():
                    raise SinkStopped("stopping while Kafka outputs were unacknowledged") from None
                waited = time.monotonic() - started
                if not warned and waited >= self.stall_warning_s:
                    warned = True
                    log.warning(
                        "Kafka outputs not acknowledged after %.0f s (%s); still waiting, until the "
                        "producer's delivery timeout (%.0f s) fails them and the batch is retried",
                        waited,
                        self._unacknowledged(futures),
                        self.producer.config.get("delivery_timeout_ms", 120_000) / 1000,
                    )

    def _unacknowledged(self, futures: Sequence[FutureRecordMetadata]) -> str:
        """The partitions with records not yet acknowledged, for the log: `topic[p]: n records`, plus
        `no leader known` where the producer's metadata names no leader for the partition."""
        waiting: Counter[tuple[str, int]] = Counter()
        for f in futures:
            tp = getattr(getattr(f, "_produce_future", None), "topic_partition", None)
            if not f.is_done and tp is not None:
                waiting[(tp.topic, tp.partition)] += 1
        if not waiting:
            return "records sent before this batch: watermarks, or an attempt being retried"
        leader_of = getattr(getattr(self.producer, "_metadata", None), "leader_for_partition", None)
        parts = []
        for (topic, partition), n in sorted(waiting.items()):
            note = ""
            if callable(leader_of) and leader_of(TopicPartition(topic, partition)) in (None, -1):
                note = ", no leader known"
            parts.append(f"{topic}[{partition}]: {n} records{note}")
        return "; ".join(parts)

    def discard(self) -> None:
        """Forget the futures of an attempt that is being retried."""
        self._futures = []

    def connected(self) -> bool:
        try:
            return bool(self.producer.bootstrap_connected())
        except Exception:
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer, waiting up to `timeout_s` for the records it holds (0: drop them). Records
        still unacknowledged then are dropped (their batches were not committed: they are labeled again),
        logged in one line: kafka-python's close() raises at its flush instead, leaving its I/O thread
        running and the producer open, which its __del__ then tries to close again at exit and prints a
        traceback."""
        dropped = close_producer(self.producer, timeout_s)
        self._watermark_failed.flush()
        if not dropped:
            return
        log.warning(
            "closing the Kafka producer: dropped the records still unacknowledged after %g s (their batches "
            "were not committed: they will be labeled again)",
            timeout_s,
        )
