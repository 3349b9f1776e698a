"""The run loop of `finsent run`: consume, decode, batch, label and write with overlap, commit in order.

Threads: the calling thread owns the Kafka consumer (poll, pause/resume, commit, rebalance callbacks);
one thread runs inference; one writes outputs. Batch N+1 is labeled while batch N is written, and the
consumer keeps polling all the time (pausing its partitions when `max_batches_in_flight` batches are
pending), so a slow batch or an unavailable sink never exceeds max.poll.interval. Offsets are committed
only for batches whose every output is durable, in order; on revoke and on stop, unfinished batches are
waited for up to `shutdown_timeout_s` and then dropped uncommitted (they will be consumed again)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata, TopicPartition

from alerts.events import KEY_TYPES
from finsent.kafka_internals import io_loop_sleep, known_partitions, rejoin_pending, release_parked_records
from finsent.metrics import PipelineMetrics
from finsent.outputs.es_sink import ElasticsearchSink, SinkStopped
from finsent.outputs.kafka_outputs import KafkaOutputs
from finsent.poll_wait import FIRST_IDLE_WAIT_S as FIRST_IDLE_WAIT_S  # tests read it here
from finsent.poll_wait import JoinWatch, group_settled, idle_wait_s, poll_timeout_ms
from finsent.processing import Batch, BatchWriter, Labeled, WriterConfig, encode_batch, label_batch
from finsent.settings import CLIENT_CLOSE_TIMEOUT_S, LABELER_COMMIT_TIMEOUT_S, Settings
from finsent.watermarks import InputProgress, watermark_record
from inference.types import Labeler, StagedLabeler
from ingest.batching import Batcher, BusyShare
from ingest.decode import DecodeLimits, decode
from ingest.message import DeadLetter, KafkaMeta, Message

log = logging.getLogger(__name__)

Item = tuple[TopicPartition, int, Message | DeadLetter]
LINGER_BELOW_BUSY_SHARE = 0.6
"""A partial batch lingers (`batch_linger_ms`) only while the model was busy less than this share of the
last BusyShare window: near saturation the model's idle time while a batch lingers is capacity lost
(without this condition, lingering 20 ms once gave a p99 of 637 ms at half load against 203 ms without
lingering in the same run: docs/performance.md, 2026-12-02)."""
BUSY_WAIT_S = 0.05
"""While the model is busy, poll at least this often (and as soon as it finishes), so the next batch is
assembled before it is needed."""
LAG_REQUEST_TIMEOUT_MS = 200
"""Longest the consume loop waits (once a second) for the brokers' end offsets."""
COMMIT_TIMEOUT_MS = int(LABELER_COMMIT_TIMEOUT_S * 1000)
"""Longest the consume loop waits for an offset commit (kafka-python's default is request_timeout_ms,
30 s): well under the labeler's readiness window (10 s between rebalances) and max.poll.interval, so a
hanging broker cannot hold the loop. A timed-out commit is covered by the partition's next one; until
then a restart or rebalance labels those messages again (idempotently)."""
BatchCallback = Callable[[Batch, Labeled], None]


def _commit_request(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


def _latest(*offsets: int | None) -> int | None:
    known = [o for o in offsets if o is not None]
    return max(known) if known else None


class PipelineError(RuntimeError):
    """The worker cannot go on (e.g. the model fails on every text); nothing unwritten was committed."""


@dataclass
class InFlight:
    batch: Batch
    future: Future[Labeled]


def make_consumer(settings: Settings, **overrides: Any) -> KafkaConsumer:
    k, p = settings.kafka, settings.pipeline
    kw: dict[str, Any] = {
        **k.consumer_kwargs(),
        "group_id": p.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_interval_ms,
        "max_poll_interval_ms": k.max_poll_interval_ms,
        "max_poll_records": max(500, p.batch_max_messages * 2),
        **({"group_instance_id": k.group_instance_id} if k.group_instance_id else {}),
        **overrides,
    }
    return KafkaConsumer(**kw)


def alert_key_types(settings: Settings) -> tuple[str, ...]:
    """`alerts.keys` when the alerting section defines it, else every key type."""
    keys = getattr(settings.alerts, "keys", None)
    return tuple(keys) if keys else KEY_TYPES


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python 3 runs rebalance callbacks on its IO loop: a blocking call there (commit, waiting for
    a batch) would deadlock it, so these are coroutines that yield to the loop while they wait."""

    def __init__(self, runner: PipelineRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned partitions: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.runner.on_assigned(set(assigned))


def decode_limits(settings: Settings, *, elasticsearch: bool) -> DecodeLimits:
    """The pipeline's input bounds. Publication times more than a day ahead are bad clocks. With the
    Elasticsearch output, each publication day is an index of its own: with its lifecycle on, times older
    than the retention are refused (the lifecycle deletes a day's index `retention_days` after that day);
    with it off, times older than `max_age_days` (one index per day since 1970 would reach the cluster's
    shard limit)."""
    p, es = settings.pipeline, settings.elasticsearch
    max_age_days = (es.retention_days if es.lifecycle_enabled else es.max_age_days) if elasticsearch else None
    return DecodeLimits(
        max_message_bytes=p.max_message_bytes,
        max_text_chars=p.max_text_chars,
        max_age_s=max_age_days * 86_400.0 if max_age_days is not None else None,
        max_ahead_s=86_400.0,
    )


class PipelineRunner:
    """Runs until `stop` is set. Build with real clients (see `finsent.commands.pipeline`) or test doubles."""

    def __init__(
        self,
        settings: Settings,
        *,
        labeler: Labeler,
        consumer: KafkaConsumer,
        outputs: KafkaOutputs,
        es: ElasticsearchSink | None,
        metrics: PipelineMetrics,
        stop: threading.Event,
        on_batch: BatchCallback | None = None,
    ) -> None:
        p = settings.pipeline
        self.settings = settings
        self.labeler = labeler
        self.consumer = consumer
        self.outputs = outputs
        self.es = es
        self.metrics = metrics
        self.stop = stop
        self.abandon = threading.Event()
        self.on_batch = on_batch
        self.limits = decode_limits(settings, elasticsearch=es is not None)
        self.batcher: Batcher[Item] = Batcher(
            p.batch_max_messages, p.batch_max_wait_ms / 1000, p.batch_linger_ms / 1000
        )
        self.model_busy = BusyShare()
        self._busy_lock = threading.Lock()  # model_busy is fed from the inference thread, read by the loop
        self.inflight: deque[InFlight] = deque()
        # Batches dropped uncommitted at a revoke keep running in the executors until done (their writes
        # are idempotent); they still hold memory, so they count against max_batches_in_flight.
        self.dropped: list[Future[Any]] = []
        self.positions: dict[TopicPartition, int] = {}
        self.last_poll = 0.0
        self.rewind: dict[TopicPartition, int] = {}
        self._idle_s = 0.0
        self._next_watermark = 0.0
        self._watermarking: Future[None] | None = None
        self.progress = InputProgress()
        self.written: dict[TopicPartition, int] = {}  # offsets up to which the outputs are durable
        self._lag_series: set[TopicPartition] = set()  # partitions with a finsent_consumer_lag series
        key: bytes | None = None
        if p.pseudonymize_authors:
            key = p.pseudonymize_key.get_secret_value().encode() if p.pseudonymize_key else b""
            if not key.strip():  # the settings refuse it too: never store authors in clear
                raise ValueError("pipeline.pseudonymize_authors is on without a key")
        self.writer = BatchWriter(
            kafka=outputs,
            es=es,
            config=WriterConfig(
                key_types=alert_key_types(settings),
                index_prefix=settings.elasticsearch.index_prefix,
                labeled_enabled=p.labeled_topic_enabled,
                elasticsearch_enabled=es is not None,
                author_key=key,
                backoff_max_s=settings.elasticsearch.retry_backoff_max_s,
                store_authors=p.store_authors,
            ),
            metrics=metrics,
            model_version=labeler.model_version,
            # Not `stop`: the batches in flight at a stop get pipeline.shutdown_timeout_s to be written,
            # retries included; only then are writers still retrying given up (`_shutdown`).
            stop=self.abandon,
        )
        self._labeling: Future[Labeled] | None = None
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="finsent-infer")
        # Tokenizing runs on its own thread, a batch ahead of the model, when the labeler can split it off.
        self._staged = labeler if isinstance(labeler, StagedLabeler) else None
        self._encode_pool = (
            ThreadPoolExecutor(1, thread_name_prefix="finsent-encode") if self._staged is not None else None
        )
        self._output_pool = ThreadPoolExecutor(1, thread_name_prefix="finsent-output")

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Poll without blocking, then wait for the model, a write or a short timer. Once partitions are
        assigned, poll() is not given a timeout: some brokers answer an empty fetch at once (ignoring
        fetch.max.wait.ms), and a consumer blocked in poll() then re-fetches in a loop (measured on
        noida-db: a caught-up consumer polling with 10 ms timeouts used a whole core)."""
        p = self.settings.pipeline
        self.consumer.subscribe(list(p.input_topics), listener=_Listener(self))
        log.info("consuming %s as group %s", ",".join(p.input_topics), p.group_id)
        next_lag = 0.0
        join_watch = JoinWatch(self.consumer)
        try:
            while not self.stop.is_set():
                self._collect_done(block=False)
                self._flow_control()
                join_watch.check()  # a join kafka-python gave up on would leave it without partitions
                settled = group_settled(self.consumer)
                window_ms = poll_timeout_ms(settled)
                records = self.consumer.poll(timeout_ms=window_ms, max_records=p.batch_max_messages)
                self.last_poll = now = time.monotonic()
                self._add(records)
                while self._dispatch_due(now) and self._batches_held() < p.max_batches_in_flight:
                    self._submit(self.batcher.take())
                if now >= next_lag and rejoin_pending(self.consumer) is not True:
                    # not while a rebalance is pending: kafka-python lists the partitions revoked until the
                    # join completes, and their lag series (removed in on_revoked) would come back, stale
                    self._watermark(self._update_lag(time.time()), now)
                    next_lag = now + 1.0
                if settled:  # while joining, poll back to back: the join needs every step promptly
                    self._wait(self._wait_s(now, got_records=bool(records)))
        finally:
            self._shutdown()

    def _add(self, records: dict[TopicPartition, list[Any]]) -> None:
        now_dt = datetime.now(UTC)
        now = time.monotonic()
        sources: list[str] = []
        for tp, recs in records.items():
            for r in recs:
                ts = r.timestamp if isinstance(r.timestamp, int) and r.timestamp >= 0 else None
                meta = KafkaMeta(tp.topic, tp.partition, r.offset, ts, r.key)
                item = decode(r.value, meta, self.limits, now_dt)
                sources.append(item.source if isinstance(item, Message) else "unknown")
                self.batcher.add((tp, r.offset, item), now)
                self.positions[tp] = r.offset + 1
        self.metrics.count_consumed(sources)

    def _model_idle(self) -> bool:
        """Whether every submitted batch has been labeled (the inference thread has nothing to do)."""
        return self._labeling is None or self._labeling.done()

    def _dispatch_due(self, now: float) -> bool:
        """Adaptive batching: a batch goes to the model when it is full, when its first message has waited
        `batch_max_wait_ms`, or, when the model is idle, at once, or after `batch_linger_ms` while the
        model has been mostly idle (`_lingering`). Waiting for a fuller batch pays while the model is
        busy (the messages would wait anyway); at low load lingering trades a little latency for fewer,
        cheaper batches; at high load the model is never idle, so batches still fill up."""
        left = self._due_in(now)
        return left is not None and left <= 0.0

    def _due_in(self, now: float) -> float | None:
        """Seconds until the pending batch goes to the model by `_dispatch_due`'s rule (0: now); None with
        nothing pending."""
        idle = self._model_idle()
        if idle and not self._lingering(now):
            return 0.0 if len(self.batcher) else None
        return self.batcher.time_left(now, idle=idle)

    def _lingering(self, now: float) -> bool:
        """Whether an idle model's partial batch waits `batch_linger_ms` for more messages: only when the
        model was busy less than LINGER_BELOW_BUSY_SHARE of the last seconds."""
        if self.batcher.linger_s <= 0:
            return False
        with self._busy_lock:
            return self.model_busy.share(now) < LINGER_BELOW_BUSY_SHARE

    def _model_was_busy(self, labeled: Future[Labeled]) -> None:
        """Done-callback of a batch's labeling (on the inference thread): its busy seconds, as it ends."""
        if not labeled.cancelled() and labeled.exception() is None:
            with self._busy_lock:
                self.model_busy.add(time.monotonic(), labeled.result().seconds)

    def _submit(self, items: list[Item]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, offset, _ in items:
            offsets[tp] = max(offsets.get(tp, 0), offset + 1)
        batch = Batch(records=[rec for _, _, rec in items], offsets=offsets, ingested_at=datetime.now(UTC))
        encoded = (
            self._encode_pool.submit(encode_batch, self._staged, batch.messages)
            if self._encode_pool is not None and self._staged is not None and batch.messages
            else None
        )
        labeled = self._infer_pool.submit(self._label, batch, encoded)
        self._labeling = labeled
        labeled.add_done_callback(self._model_was_busy)
        written = self._output_pool.submit(self._write, batch, labeled)
        self.inflight.append(InFlight(batch, written))

    def _label(self, batch: Batch, encoded: Future[Any] | None) -> Labeled:
        tokens = encoded.result() if encoded is not None else None
        return label_batch(self.labeler, batch.messages, self.metrics, tokens)

    def _write(self, batch: Batch, labeled_future: Future[Labeled]) -> Labeled:
        labeled = labeled_future.result()
        self.writer.write(batch, labeled)
        if self.on_batch is not None:
            try:
                self.on_batch(batch, labeled)
            except Exception:
                log.exception("on_batch callback failed")
        return labeled

    def _collect_done(self, *, block: bool, timeout_s: float = 0.0) -> None:
        """Commit the offsets of finished batches, oldest first; stop at the first unfinished one."""
        if block and self.inflight:
            wait_futures([f.future for f in self.inflight], timeout=timeout_s)
        offsets: dict[TopicPartition, int] = {}
        while self.inflight and self.inflight[0].future.done():
            done = self.inflight.popleft()
            error = done.future.exception()
            if error is not None:
                self.inflight.clear()
                self._commit(offsets)
                if isinstance(error, SinkStopped):
                    return
                raise PipelineError(f"batch failed: {error}") from error
            offsets.update(done.batch.offsets)
        self.written.update(offsets)
        self._commit(offsets)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self.consumer.commit(_commit_request(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaTimeoutError:
            log.warning(
                "offset commit not acknowledged within %d ms; those messages will be labeled again",
                COMMIT_TIMEOUT_MS,
            )
        except KafkaError as e:
            log.warning("offset commit failed (%s); those messages will be labeled again", e)

    def _wait_s(self, now: float, *, got_records: bool) -> float:
        """How long to wait before the next poll (woken early when the model or the oldest write finishes).
        The model busy: until it is done, or the partial batch is due, at most BUSY_WAIT_S. Idle with a
        partial batch: until its linger ends (at most BUSY_WAIT_S at a time), or not at all when it is
        not lingering. Idle with nothing to do: 5 ms, doubling while polls bring
        nothing, up to `idle_backoff_max_ms`."""
        if got_records:
            self._idle_s = 0.0
        p = self.settings.pipeline
        if self._batches_held() >= p.max_batches_in_flight:
            return BUSY_WAIT_S  # woken when the oldest batch is written; a due batch waits for that
        if not self._model_idle():
            left = self.batcher.time_left(now)
            return BUSY_WAIT_S if left is None else max(0.001, min(BUSY_WAIT_S, left))
        if len(self.batcher):  # lingering for more messages, polling as while the model is busy; 0 when
            self._idle_s = 0.0  # it does not linger (the model finished since _dispatch_due looked)
            return min(self._due_in(now) or 0.0, BUSY_WAIT_S)
        if got_records:
            return 0.0
        self._idle_s = idle_wait_s(self._idle_s, p.idle_backoff_max_ms / 1000)
        return self._idle_s

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        pending = [f for f in (self._labeling, self.inflight[0].future if self.inflight else None) if f]
        pending = [f for f in pending if not f.done()]
        if pending:
            wait_futures(pending, timeout=seconds, return_when=FIRST_COMPLETED)
        else:
            self.stop.wait(seconds)

    def _flow_control(self) -> None:
        """Pause the partitions while `max_batches_in_flight` batches are pending or a whole batch already
        waits (backpressure: the backlog stays in Kafka, and the worker holds at most
        (max_batches_in_flight + 2) x batch_max_messages messages); resume when there is room."""
        assigned = self.consumer.assignment()
        if not assigned:
            return
        p = self.settings.pipeline
        paused = self.consumer.paused()
        if self._batches_held() >= p.max_batches_in_flight or len(self.batcher) >= p.batch_max_messages:
            if assigned - paused:  # all of them: some paused and some not is what kafka-python gets wrong
                self.consumer.pause(*(assigned - paused))
        elif paused:
            self._resume_all()

    def _resume_all(self) -> None:
        """Resume every paused partition, and let records kafka-python parked for them be fetched again
        (finsent.kafka_internals.release_parked_records)."""
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
            release_parked_records(self.consumer)

    def _batches_held(self) -> int:
        """Batches in flight, plus those dropped at a revoke that are still running."""
        if self.dropped:
            self.dropped = [f for f in self.dropped if not f.done()]
        return len(self.inflight) + len(self.dropped)

    def polling(self, within_s: float = 10.0) -> bool:
        """Whether the consume loop is alive (it polls at least every `idle_backoff_max_ms`)."""
        return time.monotonic() - self.last_poll < within_s

    def _update_lag(self, wall: float) -> dict[TopicPartition, int]:
        """Set the lag gauges and sample each partition's log end (as of `wall`, taken before asking);
        returns the positions found."""
        assigned = self.consumer.assignment()
        ends = self._end_offsets(assigned) if assigned else {}
        positions: dict[TopicPartition, int] = {}
        for tp in assigned:
            high = _latest(self.consumer.highwater(tp), ends.get(tp))
            pos = self.positions.get(tp)
            if pos is None:
                try:
                    pos = self.consumer.position(tp, timeout_ms=50)
                except KafkaError:
                    pos = None
            if pos is not None:
                positions[tp] = pos
            if high is not None and pos is not None:
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - pos))
                self._lag_series.add(tp)
            if high is not None and tp in ends:  # not from a fetch's highwater alone: it may be stale
                self.progress.sample(tp, wall, high)
        return positions

    def _watermark(self, positions: dict[TopicPartition, int], now: float) -> None:
        """Every `watermark_interval_s`, tell the alert workers until when each owned input partition is
        read and written (see finsent.watermarks): the offsets before `written` are durable, and so is
        everything consumed from a partition with nothing waiting in a batch."""
        p = self.settings.pipeline
        if p.watermark_interval_s <= 0 or not p.labeled_topic_enabled or now < self._next_watermark:
            return
        if self.stop.is_set():
            return  # stopping: batches may have been dropped unwritten
        if self.rewind or rejoin_pending(self.consumer) is True:
            # revoked, not yet assigned again: the revoke dropped records that the consumer's position
            # (still past them until on_assigned rewinds it) would claim as written
            return
        self._batches_held()  # forgets dropped batches that have finished
        if self.dropped or (self._watermarking is not None and not self._watermarking.done()):
            return  # batches dropped at a revoke may still write events of partitions we own again
        waiting = {tp for tp, _, _ in self.batcher.items()}
        waiting.update(tp for pending in self.inflight for tp in pending.batch.offsets)
        # Input topics that do not exist (yet) have nothing to wait for: they are left out.
        counts = {t: n for t in p.input_topics if (n := known_partitions(self.consumer, t))}
        complete: dict[tuple[str, int], float] = {}
        for tp in positions:
            written = self.written.get(tp) if tp in waiting else self._consumed_to(tp)
            until = self.progress.complete(tp, written)
            if until is not None and tp.partition < counts.get(tp.topic, 0):  # metadata can lag a resize
                complete[(tp.topic, tp.partition)] = until
        if not complete:
            return
        # The output thread sends it: finding the labeled topic's partitions may wait for metadata.
        record = watermark_record(p.group_id, counts, complete)
        self._watermarking = self._output_pool.submit(self.outputs.send_watermark, *record)
        self._next_watermark = now + p.watermark_interval_s

    def _consumed_to(self, tp: TopicPartition) -> int | None:
        """The consumer's position: past every record it returned and past transaction markers, which
        take an offset of their own but never reach us (the log end counts them)."""
        try:
            return int(self.consumer.position(tp, timeout_ms=50))
        except KafkaError:
            return None

    def _end_offsets(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Log-end offsets asked of the broker (once a second). The highwater that fetches carry goes stale
        while records are buffered or partitions paused, i.e. just when consuming cannot keep up. Some
        brokers answer too low (Tansu), hence the max with the highwater."""
        try:
            return dict(self.consumer.end_offsets(list(partitions), timeout_ms=LAG_REQUEST_TIMEOUT_MS))
        except (KafkaError, ValueError) as e:
            self.metrics.lag_fallbacks.inc()
            log.debug("end offsets unavailable (%s); lag from the last highwater", e)
            return {}

    # ---- rebalance and shutdown -------------------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish (up to the timeout) or drop the in-flight batches; commit only what was written.
        Runs on the consumer's IO loop while `poll()` waits for the rebalance, so it awaits, never blocks."""
        log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        deadline = time.monotonic() + self.settings.pipeline.shutdown_timeout_s
        sleep = io_loop_sleep(self.consumer)
        while sleep is not None and self.inflight and time.monotonic() < deadline:
            if all(f.future.done() for f in self.inflight):
                break
            await sleep(0.05)
        offsets: dict[TopicPartition, int] = {}
        while (
            self.inflight and self.inflight[0].future.done() and self.inflight[0].future.exception() is None
        ):
            offsets.update(self.inflight.popleft().batch.offsets)
        if offsets:
            await self._commit_on_revoke(offsets, sleep)
        # kafka-python keeps the fetch position of a partition that is assigned to us again, so what is
        # dropped here is rewound in on_assigned; otherwise it would be skipped, and lost.
        self.rewind = {}
        for tp, offset, _ in self.batcher.drain():
            self.rewind[tp] = min(offset, self.rewind.get(tp, offset))
        for pending in self.inflight:
            for rec in pending.batch.records:
                tp = TopicPartition(rec.meta.topic, rec.meta.partition)
                self.rewind[tp] = min(rec.meta.offset, self.rewind.get(tp, rec.meta.offset))
        if self.inflight:
            log.warning(
                "dropping %d unfinished batches uncommitted; they will be consumed again", len(self.inflight)
            )
            self.dropped.extend(f.future for f in self.inflight if not f.future.done())
            self.inflight.clear()
        # kafka-python keeps a partition paused when it is assigned to us again while new ones come
        # unpaused: flow control starts over from all resumed in the new generation
        self._resume_all()
        self.progress.forget(revoked)
        for tp in revoked:
            self.positions.pop(tp, None)
            self.written.pop(tp, None)
            self._drop_lag_series(tp)

    async def _commit_on_revoke(self, offsets: dict[TopicPartition, int], sleep: Any) -> None:
        """Commit what was written, waiting at most COMMIT_TIMEOUT_MS (on the IO loop, yielding to it):
        a hanging broker must not hold the rebalance, and with it the consume loop, for the client's
        request timeout. Not acknowledged in time, those messages are labeled again (idempotently)."""
        try:
            future = self.consumer.commit_async(_commit_request(offsets))
            if sleep is None:  # kafka-python internals changed: wait as the client does
                await future
                return
            deadline = time.monotonic() + COMMIT_TIMEOUT_MS / 1000
            while not future.is_done and time.monotonic() < deadline:
                await sleep(0.02)
        except Exception as e:
            log.warning("offset commit on revoke failed (%s); those messages will be labeled again", e)
            return
        if not future.is_done:
            log.warning(
                "offset commit on revoke not acknowledged within %d ms; those messages will be labeled again",
                COMMIT_TIMEOUT_MS,
            )
        elif future.failed():
            log.warning(
                "offset commit on revoke failed (%s); those messages will be labeled again", future.exception
            )

    def _drop_lag_series(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.lag.remove(tp.topic, str(tp.partition))
        self._lag_series.discard(tp)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Rewind partitions that come back to us to the first record dropped at the revoke, and drop the
        lag series of partitions that are not ours any more."""
        for tp in self._lag_series - assigned:
            self._drop_lag_series(tp)
        for tp, offset in self.rewind.items():
            if tp in assigned:
                log.info(
                    "rewinding %s[%d] to offset %d, dropped at the revoke", tp.topic, tp.partition, offset
                )
                self.consumer.seek(tp, offset)
        self.rewind = {}

    def _finish_or_drop(self) -> int:
        """Wait up to `shutdown_timeout_s` for the batches in flight; returns how many were dropped."""
        try:
            self._collect_done(block=True, timeout_s=self.settings.pipeline.shutdown_timeout_s)
        except PipelineError:
            if not self.stop.is_set():
                raise
        unfinished = len(self.inflight)
        if unfinished:
            log.warning(
                "dropping %d unfinished batches uncommitted; they will be consumed again", len(self.inflight)
            )
            self.inflight.clear()
        return unfinished

    def _shutdown(self) -> None:
        if self.es is not None:  # a request to a hanging server must not outlast the stop's budget
            self.es.finish_by(time.monotonic() + self.settings.pipeline.shutdown_timeout_s)
        dropped = len(self.batcher)
        self.batcher.drop(lambda _: True)
        abandoned = 0
        try:
            if self.inflight:
                abandoned = self._finish_or_drop()
        finally:
            self.stop.set()
            self.abandon.set()  # unblocks writers still retrying a sink
            if self._encode_pool is not None:
                self._encode_pool.shutdown(wait=True, cancel_futures=True)
            self._infer_pool.shutdown(wait=True, cancel_futures=True)
            self._output_pool.shutdown(wait=True, cancel_futures=True)
            try:
                self.consumer.close(autocommit=False, timeout_ms=int(CLIENT_CLOSE_TIMEOUT_S * 1000))
            except Exception as e:
                log.warning("closing the consumer: %s", e)
            try:
                # The records of dropped batches are not waited for: the stop already gave them
                # shutdown_timeout_s, and nothing of those batches is committed.
                self.outputs.close(timeout_s=0 if abandoned or self.dropped else CLIENT_CLOSE_TIMEOUT_S)
            except Exception as e:
                log.warning("closing the producer: %s", e)
            log.info("pipeline stopped (%d polled but unbatched messages left uncommitted)", dropped)
