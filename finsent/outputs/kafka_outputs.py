"""Labeled-event and dead-letter producers. Sends are asynchronous; `flush()` makes them durable (acks=all)
and raises if any record of the batch failed, so the caller never commits past an unwritten record. It waits
for the batch's own records only, never for watermarks, and at most the producer's delivery timeout plus
DELIVERY_MARGIN_S: a producer that holds a record longer is stuck, and is replaced."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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
"""A flush still waiting after this long logs once which partitions hold the batch's unacknowledged records
(and whether the producer knows their leader); the records fail, and the batch is counted in
finsent_output_errors_total and retried, at the producer's delivery timeout (2 minutes), or
DELIVERY_MARGIN_S later at the latest."""

DELIVERY_MARGIN_S = 10.0
"""How long past the producer's delivery timeout (delivery_timeout_ms) a record may stay unacknowledged
before the producer is taken for stuck: the flush fails (an output error, the batch is retried) and the
producer is replaced. The delivery timeout is kafka-python's promise that every record succeeds or fails
within it, and kafka-python 3.0.12 breaks it: when a record it had sent and was retrying expires (the
broker away for longer than the delivery timeout, or a partition of a topic deleted meanwhile), its
idempotent producer drops its producer id and never asks for another (its sender only asks from the
UNINITIALIZED state, and it is READY), and from then on sends nothing and fails nothing, for good: each
flush waited for ever, and nothing was counted."""

REPLACE_AFTER_FAILED_FLUSHES = 3
"""Flushes in a row whose records the broker refused (an error answer, not a timeout) before the producer
is replaced: a fresh one gets a new producer id and sequence numbers, and fresh metadata. Tansu answers
every write of the old producer to a topic deleted and created again with UNKNOWN_SERVER_ERROR (its
sequence numbers are the old topic's), for good; a new producer writes at once. Timeouts (the broker
away) do not count: a new producer would wait for the broker the same way."""

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


class ProducerStuck(OutputError):
    """The producer holds records past its delivery timeout (see DELIVERY_MARGIN_S)."""


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


ProducerFactory = Callable[[], KafkaProducer]


class KafkaOutputs:
    """Sends to the labeled and dead-letter topics and tracks the futures of the current batch. With
    `new_producer`, a producer that is stuck or keeps failing is replaced by a new one (see
    DELIVERY_MARGIN_S and REPLACE_AFTER_FAILED_FLUSHES). All calls but `close` come from one thread (the
    runner's output thread), so the producer is replaced between two of them."""

    def __init__(
        self,
        producer: KafkaProducer,
        *,
        labeled_topic: str,
        dead_letter_topic: str,
        new_producer: ProducerFactory | None = None,
    ) -> None:
        self.producer = producer
        self.labeled_topic = labeled_topic
        self.dead_letter_topic = dead_letter_topic
        self._new_producer = new_producer
        self._futures: list[FutureRecordMetadata] = []
        self._first_send: float | None = None  # when the current attempt's first record was sent
        # Records no flush waits for (watermarks, those of an attempt given up), with when they were sent:
        # watched only, for a producer that never completes them (see DELIVERY_MARGIN_S).
        self._unwaited: list[tuple[float, FutureRecordMetadata]] = []
        self._tracked: set[str] = set()
        self._watermark_failed = WatermarkFailures()
        self._failed_flushes = 0
        self._replace_pending: str | None = None  # why the producer still has to be replaced
        self._labeled_partitions: int | None = None  # as last seen in the producer's metadata
        self._labeled_partitions_before: int | None = None  # before its last change
        self._lock = threading.Lock()  # the replacement's thread hands its producer over with it
        self._replacing: threading.Thread | None = None
        self._replacement: KafkaProducer | BaseException | None = None
        self._closed = False
        self.stall_warning_s = FLUSH_STALL_WARNING_S
        self.delivery_margin_s = DELIVERY_MARGIN_S
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
            self._ensure_producer()
        except OutputError as e:  # being replaced: the batches' failures say why
            log.debug("no watermark sent: %s", e)
            return
        try:
            self._track(self.labeled_topic)
            partitions = sorted(self.producer.partitions_for(self.labeled_topic) or ())
            self._check_labeled_partitions()
            now = time.monotonic()
            self._unwaited = [(t, f) for t, f in self._unwaited if not f.is_done]
            for p in partitions:
                future = self.producer.send(
                    self.labeled_topic, key=key, value=value, headers=headers, partition=p
                )
                future.add_errback(self._watermark_failed)
                self._unwaited.append((now, future))
        except KafkaError as e:
            log.warning("sending a watermark to %s failed: %s", self.labeled_topic, e)

    def _send(self, topic: str, **record: Any) -> None:
        """send() itself raises for a record over max_request_size or when the topic's metadata does not
        arrive in max_block_ms, and (ValueError, from the key partitioner) for a topic the metadata lost
        meanwhile: an OutputError too, so the batch is retried, not the worker ended. send()'s other
        ValueErrors cannot come from here: topic names a broker refuses are refused by the settings, every
        record has a key or a value (`dead_letter_record`), and the partitioner always answers."""
        self._ensure_producer()
        self._track(topic)
        if self._first_send is None:
            self._first_send = time.monotonic()
        try:
            self._futures.append(self.producer.send(topic, **record))
        except (KafkaError, ValueError) as e:
            raise OutputError(f"Kafka send to {topic} failed: {e}") from e

    def _track(self, topic: str) -> None:
        """Keep `topic` in the producer's metadata requests (see `track_topic`), from its first send."""
        if topic not in self._tracked:
            self._tracked.add(topic)
            track_topic(self.producer, topic)

    def delivery_timeout_s(self) -> float:
        return float(self.producer.config.get("delivery_timeout_ms", 120_000)) / 1000

    def flush(self, timeout_s: float | None = None, *, stop: threading.Event | None = None) -> None:
        """Wait until every record sent since the last flush is acknowledged; raise OutputError if one
        failed, or if they are not acknowledged within `timeout_s` (None: the producer's delivery timeout,
        which fails them, plus DELIVERY_MARGIN_S; past that the producer is stuck, and is replaced). Only
        this batch's records are waited for: watermarks and the records of attempts given up are not.
        With `stop`, raise SinkStopped once it is set (checked every FLUSH_SLICE_S): with the broker away
        a flush lasts until the records expire (delivery_timeout_ms, 2 minutes), past a pod's grace
        period."""
        futures, self._futures = self._futures, []
        first_send, self._first_send = self._first_send, None
        self._check_labeled_partitions()
        try:
            if self._can_send_now():
                self._await(futures, first_send, timeout_s, stop)
            else:
                self._flush_producer(futures, timeout_s, stop)
        except SinkStopped:
            self._give_up(futures)
            raise
        except ProducerStuck:
            self._replace_producer(
                "it holds records past its delivery timeout without failing them (kafka-python stopped "
                "sending; the batch's failure says which)"
            )
            raise
        except OutputError:
            self._give_up(futures)
            self._flush_failed(futures)
            raise
        except Exception as e:
            self._give_up(futures)
            raise OutputError(f"Kafka flush failed: {e}") from e
        if not all(f.is_done for f in futures):
            self._give_up(futures)
            raise OutputError("Kafka record not acknowledged after flush")
        failed = [f for f in futures if f.failed()]
        if failed:
            self._flush_failed(futures)
            raise OutputError(
                f"Kafka record failed: {failed[0].exception} ({self._describe(failed)})"
            ) from failed[0].exception
        self._failed_flushes = 0

    def _await(
        self,
        futures: Sequence[FutureRecordMetadata],
        first_send: float | None,
        timeout_s: float | None,
        stop: threading.Event | None,
    ) -> None:
        """Wait for `futures` alone, sending what the producer holds at once (as its flush() would)."""
        started = time.monotonic()
        sent = first_send if first_send is not None else started
        limit = sent + self.delivery_timeout_s() + self.delivery_margin_s
        timeout_at = None if timeout_s is None else started + timeout_s
        warned = False
        pending = [f for f in futures if not f.is_done]
        with self._sending_now():
            while pending:
                now = time.monotonic()
                if stop is not None and stop.is_set():
                    raise SinkStopped("stopping while Kafka outputs were unacknowledged")
                stuck = self._stuck(now)
                if now >= limit or stuck:
                    self._producer_stuck(pending, stuck, now - sent)
                if timeout_at is not None and now >= timeout_at:
                    raise OutputError(
                        f"Kafka records not acknowledged within {timeout_s:g} s ({self._describe(pending)})"
                    )
                if not warned and now - started >= self.stall_warning_s:
                    warned = True
                    log.warning(
                        "Kafka outputs not acknowledged after %.0f s (%s); still waiting, until the "
                        "producer's delivery timeout (%.0f s) fails them and the batch is retried",
                        now - started,
                        self._describe(pending),
                        self.delivery_timeout_s(),
                    )
                wait = min(FLUSH_SLICE_S, max(0.01, limit - now))
                if timeout_at is not None:
                    wait = min(wait, max(0.01, timeout_at - now))
                with contextlib.suppress(Exception):  # a failed record: looked at once all are done
                    pending[0].get(timeout=wait)
                pending = [f for f in pending if not f.is_done]

    @contextlib.contextmanager
    def _sending_now(self) -> Iterator[None]:
        """Have the producer send what it holds without lingering (FLUSH_DRIVEN), as its flush() does, while
        the caller waits for some of the records only: kafka-python's flush() waits for all of them."""
        accumulator: Any = getattr(self.producer, "_accumulator", None)
        accumulator.begin_flush()
        wakeup = getattr(getattr(self.producer, "_sender", None), "wakeup", None)
        if callable(wakeup):
            wakeup()
        try:
            yield
        finally:
            accumulator._flushes_in_progress.decrement()

    def _can_send_now(self) -> bool:
        """Whether `_sending_now` finds what it needs in kafka-python's producer (3.0.12)."""
        accumulator = getattr(self.producer, "_accumulator", None)
        counter = getattr(accumulator, "_flushes_in_progress", None)
        return callable(getattr(accumulator, "begin_flush", None)) and callable(
            getattr(counter, "decrement", None)
        )

    def _flush_producer(
        self, futures: Sequence[FutureRecordMetadata], timeout_s: float | None, stop: threading.Event | None
    ) -> None:
        """Where kafka-python's internals changed: the producer's own flush(), which waits for every record
        it holds (watermarks included), in slices, up to the same limit."""
        started = time.monotonic()
        limit = started + (
            timeout_s if timeout_s is not None else self.delivery_timeout_s() + self.delivery_margin_s
        )
        warned = False
        while True:
            try:
                self.producer.flush(timeout=max(0.01, min(FLUSH_SLICE_S, limit - time.monotonic())))
                return
            except KafkaTimeoutError:
                if stop is not None and stop.is_set():
                    raise SinkStopped("stopping while Kafka outputs were unacknowledged") from None
                waited = time.monotonic() - started
                if time.monotonic() >= limit:
                    raise OutputError(f"Kafka outputs not acknowledged after {waited:.0f} s") from None
                if not warned and waited >= self.stall_warning_s:
                    warned = True
                    log.warning(
                        "Kafka outputs not acknowledged after %.0f s (%s); still waiting, until the "
                        "producer's delivery timeout (%.0f s) fails them and the batch is retried",
                        waited,
                        self._describe([f for f in futures if not f.is_done]),
                        self.delivery_timeout_s(),
                    )

    def _stuck(self, now: float) -> list[FutureRecordMetadata]:
        """Records no flush waits for that are still unacknowledged past the delivery timeout and margin."""
        self._unwaited = [(t, f) for t, f in self._unwaited if not f.is_done]
        limit = self.delivery_timeout_s() + self.delivery_margin_s
        return [f for t, f in self._unwaited if now - t >= limit]

    def _producer_stuck(
        self, pending: Sequence[FutureRecordMetadata], stuck: Sequence[FutureRecordMetadata], waited_s: float
    ) -> None:
        """Raise ProducerStuck for a producer that broke its delivery timeout (`flush` replaces it)."""
        delivery_s = self.delivery_timeout_s()
        what = self._describe(pending)
        if stuck:
            what += (
                f"; and, sent over {delivery_s + self.delivery_margin_s:.0f} s ago, {self._describe(stuck)}"
            )
        raise ProducerStuck(
            f"records unacknowledged past the producer's delivery timeout ({delivery_s:.0f} s), which "
            f"should have failed them ({waited_s:.0f} s since this attempt's first send): the producer "
            f"is stuck ({what})"
        )

    def _give_up(self, futures: Sequence[FutureRecordMetadata]) -> None:
        """Watch the records of an attempt given up (failed or stopped) that the producer still holds."""
        now = time.monotonic()
        self._unwaited.extend((now, f) for f in futures if not f.is_done)

    def _flush_failed(self, futures: Sequence[FutureRecordMetadata]) -> None:
        """Count a flush whose records failed; replace the producer after REPLACE_AFTER_FAILED_FLUSHES in a
        row that the broker answered with an error (not timeouts)."""
        errors = [f.exception for f in futures if f.is_done and f.failed()]
        if not errors or all(isinstance(e, KafkaTimeoutError) for e in errors):
            return
        self._failed_flushes += 1
        if self._failed_flushes >= REPLACE_AFTER_FAILED_FLUSHES:
            self._replace_producer(
                f"its records failed in {self._failed_flushes} flushes in a row, the last with {errors[0]}"
            )

    def _replace_producer(self, why: str) -> None:
        """Close the producer, dropping what it holds (nothing committed depends on it: the batch is
        retried, and lost watermarks only wait for the next), and make a new one (`_ensure_producer`).
        Without a factory it is kept, and the error repeats until the worker is restarted."""
        self._failed_flushes = 0
        if self._new_producer is None:
            log.error("the Kafka producer cannot be replaced here (%s); restart the worker", why)
            return
        log.warning("replacing the Kafka producer: %s", why)
        close_producer(self.producer, 0)
        self._watermark_failed.flush()
        self._unwaited = []
        self._tracked = set()
        self._replace_pending = why
        self._start_replacement()
        with contextlib.suppress(OutputError):  # said at the next send, which looks again
            self._ensure_producer()

    def _start_replacement(self) -> None:
        """Make the new producer on a thread of its own: with the broker away, kafka-python's constructor
        waits for it (bootstrap_timeout_ms, 30 s), which would hold a stopping worker past its grace
        period; meanwhile sends fail at once (`_ensure_producer`), and the batch is retried."""
        factory = self._new_producer
        assert factory is not None

        def make() -> None:
            made: KafkaProducer | BaseException
            try:
                made = factory()
            except Exception as e:
                made = e
            with self._lock:
                keep = not self._closed
                if keep:
                    self._replacement = made
            if not keep and not isinstance(made, BaseException):
                close_producer(made, 0)  # closed meanwhile: not needed any more

        self._replacing = threading.Thread(target=make, name="finsent-kafka-producer", daemon=True)
        self._replacing.start()

    def _ensure_producer(self) -> None:
        """Put the new producer in place once a replacement has made it (waiting up to FLUSH_SLICE_S for
        it); OutputError while there is none (the broker away: it is tried again)."""
        if self._replace_pending is None:
            return
        if self._replacing is not None:
            self._replacing.join(timeout=FLUSH_SLICE_S)
            if self._replacing.is_alive():
                raise OutputError("a new Kafka producer is being made (the broker has not answered yet)")
        with self._lock:
            made, self._replacement = self._replacement, None
        if made is None or isinstance(made, BaseException):
            self._start_replacement()
            raise OutputError(f"a new Kafka producer could not be made ({type(made).__name__}: {made})")
        self.producer = made
        self._replace_pending = None
        log.info("a new Kafka producer is in place")

    def _check_labeled_partitions(self) -> None:
        """Say it once when the labeled topic's partition count in the producer's metadata changes. Fewer
        means the topic was deleted and created again (Kafka cannot remove partitions), e.g. by a client
        writing to it or asking for its metadata where the broker creates topics on use, with the broker's
        default partitions."""
        cluster: Any = getattr(self.producer, "_metadata", None)
        lookup = getattr(cluster, "partitions_for_topic", None)
        if not callable(lookup):
            return
        partitions = lookup(self.labeled_topic)
        if not partitions:
            return  # not (yet) in the metadata: the failures name it
        now, before = len(partitions), self._labeled_partitions
        self._labeled_partitions = now
        if before is None or before == now:
            return
        self._labeled_partitions_before = before
        if now < before:
            log.warning(
                "the labeled topic %s has %d partition(s) now, %d before: it was deleted and created again "
                "(where the broker creates topics on use, any client naming it re-creates it with the "
                "broker's default partitions). Labeling goes on into %d partition(s), which moves alert "
                "keys between partitions and leaves at most %d alert worker(s) any work; recreate it with "
                "%d partitions (docs/operations.md#kafka-topics)",
                self.labeled_topic,
                now,
                before,
                now,
                now,
                before,
            )
        else:
            log.warning(
                "the labeled topic %s has %d partitions now, %d before: partitions were added, which moves "
                "alert keys to other partitions (docs/operations.md#kafka-topics)",
                self.labeled_topic,
                now,
                before,
            )

    def _describe(self, futures: Sequence[FutureRecordMetadata]) -> str:
        """The partitions of `futures`, for the log: `topic[p]: n records`, partitions with the same note
        together (`topic[3, 4]: n records, ...`), noting what the producer's metadata says is wrong there
        (`_partition_note`)."""
        counts: Counter[tuple[str, int]] = Counter()
        for f in futures:
            tp = getattr(getattr(f, "_produce_future", None), "topic_partition", None)
            if tp is not None:
                counts[(tp.topic, tp.partition)] += 1
        if not counts:
            return f"{len(futures)} records"
        groups: dict[tuple[str, str], list[int]] = {}
        records: Counter[tuple[str, str]] = Counter()
        for (topic, partition), n in sorted(counts.items()):
            note = self._partition_note(topic, partition)
            groups.setdefault((topic, note), []).append(partition)
            records[(topic, note)] += n
        return "; ".join(
            f"{topic}[{', '.join(map(str, partitions))}]: {records[(topic, note)]} records"
            + (f", {note}" if note else "")
            for (topic, note), partitions in groups.items()
        )

    def _partition_note(self, topic: str, partition: int) -> str:
        """`no leader known`, `no such partition` (with the topic's partition count, and the labeled
        topic's before), or a topic the producer's metadata does not know; empty when nothing is wrong."""
        cluster: Any = getattr(self.producer, "_metadata", None)
        partitions_of = getattr(cluster, "partitions_for_topic", None)
        leader_of = getattr(cluster, "leader_for_partition", None)
        if not callable(partitions_of) or not callable(leader_of):
            return ""
        partitions = partitions_of(topic)
        if not partitions:
            return "topic unknown to the producer's metadata (deleted?)"
        if partition not in partitions:
            note = f"no such partition: the topic has {len(partitions)} partition(s) now"
            before = self._labeled_partitions_before if topic == self.labeled_topic else None
            if before is not None and before > len(partitions):
                note += f", {before} before (deleted and created again)"
            return note
        if leader_of(TopicPartition(topic, partition)) in (None, -1):
            return "no leader known"
        return ""

    def discard(self) -> None:
        """Forget the futures of an attempt that is being retried (still watched: `_stuck`)."""
        self._give_up(self._futures)
        self._futures = []
        self._first_send = None

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
        with self._lock:
            self._closed = True
            made, self._replacement = self._replacement, None
        if made is not None and not isinstance(made, BaseException):
            close_producer(made, 0)  # a replacement never put in place
        if self._replace_pending is not None:
            return  # closed when it was given up
        dropped = close_producer(self.producer, timeout_s)
        self._watermark_failed.flush()
        if not dropped:
            return
        log.warning(
            "closing the Kafka producer: dropped the records still unacknowledged after %g s (their batches "
            "were not committed: they will be labeled again)",
            timeout_s,
        )
