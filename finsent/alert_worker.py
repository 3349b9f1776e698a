"""The alert worker: labeled topic -> detector (one per assigned partition) -> notifiers, Elasticsearch,
metrics. Thin adapter around the pure `alerts.detector.Detector`.

Order of effects, so that a crash at any point neither loses nor repeats a notification:
1. events of a poll are counted into the partition's detector; closed windows yield alert transitions,
   which go into the partition's outbox;
2. every partition's state (detector snapshot, next offset, outbox) is written to the compacted state
   topic and acknowledged, then the labeled offsets are committed;
3. the outbox is delivered (notifiers, Elasticsearch, metrics, `on_alert`), emptied, and the state written
   again. A crash between 2 and 3 re-delivers from the restored outbox; a crash before 2 replays the
   events from the last state, which yields the same transitions again (but they were never delivered).
   Notifications that a channel's rate limit holds back, or that wait for a retry after a receiver failed,
   stay in the state too (`pending`), until sent: a restart, or the worker that takes the partition over,
   sends them."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from elasticsearch import ApiError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from alerts.config import UNFILLED_LINKS, AlertSettings, dashboard_template_problem
from alerts.detector import ACCEPTED, LATE, SNAPSHOT_VERSION, Detector, higher
from alerts.events import InvalidEvent, labeled_time, parse_event
from alerts.model import RULE_SHARE, RULE_VOLUME, SEVERITY_RANK, Alert
from alerts.notifiers.base import one_line
from alerts.notifiers.dispatch import Dispatcher, RetryPolicy
from alerts.notifiers.factory import build_dispatcher
from finsent.alert_index import AlertIndex
from finsent.alert_metrics import AlertMetrics
from finsent.alert_state import (
    SAVE_TIMEOUT_S,
    NewerState,
    SaveStopped,
    StateStore,
    ensure_state_topic,
    newer_state,
    state_key,
)
from finsent.kafka_internals import io_loop_sleep
from finsent.late_report import LateTally
from finsent.outputs.es_sink import is_refused_document
from finsent.poll_wait import JoinWatch, group_settled, idle_wait_s, poll_timeout_ms
from finsent.settings import CLIENT_CLOSE_TIMEOUT_S, Settings
from finsent.watermarks import InputClock, InvalidWatermark, is_control, parse_watermark

log = logging.getLogger(__name__)

STATE_VERSION = 1
COMMIT_TIMEOUT_MS = 10_000
POLL_TIMEOUT_MS = 500
"""step()'s poll timeout when called on its own (tests); run() chooses its own (see IDLE_WAIT_MAX_S)."""
IDLE_WAIT_MAX_S = 0.5
"""Longest wait between steps while the labeled topic is quiet. Once the group is settled, run() polls
without blocking and waits on its own timer (finsent.poll_wait: some brokers answer an empty fetch at once,
and a worker blocked in poll() re-fetched in a loop, a whole core on noida-db), so the step's timers (state
saves, notification retries and rate limits, idle event time, Alertmanager re-sends) are checked at least
this often, as when poll() waited 500 ms; an event arriving meanwhile is read at most this late, against
windows of minutes."""
MAX_UNINDEXED = 10_000  # alert documents kept for a retry while Elasticsearch is down
INDEX_STEP_BUDGET_S = 5.0
"""Longest one step spends writing queued alert documents: after an outage the queue can hold thousands,
and a slow Elasticsearch must not keep the consumer from polling (the rest go in the next steps)."""
HANDOVER_SAVE_TIMEOUT_S = 15.0
"""The state save before partitions change hands (a revoke, the shutdown), which a stop does not cut
short. At shutdown, with the commit (COMMIT_TIMEOUT_MS) and the clients' closes (up to
CLIENT_CLOSE_TIMEOUT_S each), a stop with Kafka away stays within the pods' 60 s grace period; a periodic
save under way when the stop came is abandoned within a second (`StateStore.save(stop=)`)."""
SAVE_DUTY_FACTOR = 10.0
"""Periodic state saves are at least this many times their own duration apart (and at least
`alerts.state_interval_s`): they take at most a tenth of the worker's time however many keys it keeps."""
INDEX_RETRY = RetryPolicy(initial_s=1.0, max_s=60.0)  # between tries of alert documents Elasticsearch refused
OnAlert = Callable[[Alert], None]


@dataclass
class PartitionState:
    """What the worker keeps per assigned labeled-topic partition."""

    partition: int
    detector: Detector
    next_offset: int | None = None
    outbox: list[Alert] = field(default_factory=list)
    # The alerts notified as firing, with the severity each was last told at: an episode that rose while
    # the worker lagged is told of its escalation when caught up. "" (a state saved by an older version,
    # which kept the ids only): unknown, so no escalation is due.
    notified: dict[str, str] = field(default_factory=dict)
    pending: dict[str, list[Alert]] = field(default_factory=dict)
    # alert documents Elasticsearch has not taken yet (their latest transition): saved, so that a restart
    # or a new owner writes them (the outbox is cleared and the offsets committed once delivered)
    unindexed: list[Alert] = field(default_factory=list)
    idle_wall: float = 0.0
    idle_watermark: float | None = None
    idle_complete: float | None = None  # the labelers' completeness when the last event was seen
    inputs: InputClock = field(default_factory=InputClock)  # the labelers' watermarks (not saved)
    dirty: bool = True
    durable: bool = False  # a state record of this partition exists in the state topic
    first_offset: int | None = None  # first offset counted since the last durable state (or start)
    keys_evicted: int = 0  # the detector's count of forgotten keys, as far as exported
    model_changes: int = 0  # the detector's count of model changes, as far as exported
    log_restarted: bool = False  # warned that the labeled log ends before next_offset (re-created)

    def to_record(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "partition": self.partition,
            "offset": self.next_offset,
            "detector": self.detector.snapshot(),
            "outbox": [a.to_dict() for a in self.outbox],
            "notified": sorted(self.notified),  # the ids alone, as older versions read them
            "notified_severity": {i: s for i, s in sorted(self.notified.items()) if s},
            "pending": {ch: [a.to_dict() for a in alerts] for ch, alerts in self.pending.items()},
            "unindexed": [a.to_dict() for a in self.unindexed],
        }

    @classmethod
    def from_record(cls, settings: AlertSettings, partition: int, rec: dict[str, Any]) -> PartitionState:
        if rec.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported alert state version {rec.get('version')!r}")
        detector = Detector(settings)
        for warning in detector.restore(rec["detector"]):
            log.warning("partition %d: %s", partition, warning)
        offset = rec.get("offset")
        return cls(
            partition=partition,
            detector=detector,
            next_offset=int(offset) if offset is not None else None,
            outbox=_readable_alerts(rec.get("outbox") or (), partition, "outbox"),
            notified=_notified(rec.get("notified"), rec.get("notified_severity")),
            pending={
                str(ch): _readable_alerts(alerts, partition, f"pending on {ch}")
                for ch, alerts in (rec.get("pending") or {}).items()
            },
            unindexed=_readable_alerts(rec.get("unindexed") or (), partition, "unindexed"),
            dirty=False,
            durable=True,
        )


def _notified(ids: Any, severities: Any) -> dict[str, str]:
    """The stored notified ids with their severities, as far as readable: an older version saved no
    severities, and another may garble them (unknown then: ""). Ids are strings (JSON keys are)."""
    told = severities if isinstance(severities, dict) else {}
    return {
        i: s if (s := told.get(i)) in SEVERITY_RANK else ""
        for i in (ids if isinstance(ids, list) else ())
        if isinstance(i, str)
    }


def _readable_alerts(raw: Any, partition: int, where: str) -> list[Alert]:
    """The stored alerts this version can read; one it cannot (written by another version, lacking a
    required field) is dropped with a warning instead of the whole partition's state."""
    out: list[Alert] = []
    for item in raw if isinstance(raw, list) else ():
        try:
            out.append(Alert.from_dict(item))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("partition %d: dropping an unreadable stored alert (%s): %r", partition, where, e)
    return out


def interval_due(last: float, now: float, interval_s: float) -> bool:
    """Whether a periodic task (state save, Alertmanager re-send) is due. A wall clock stepped back (NTP)
    puts `now` before `last`: due at once, then counted from there, rather than paused for the step (a
    pause of minutes lets Alertmanager resolve firing alerts whose endsAt passed)."""
    return now < last or now - last >= interval_s


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python 3 calls these on its IO thread, while the worker's own thread waits in `poll()`. What
    they do blocks (waiting for the state topic's acknowledgement, committing, reading state back), and
    blocking that thread fails ("Cannot block on net.run() from the IO thread") or stalls heartbeats. So
    the work runs on a helper thread, and the coroutine yields to the loop until it is done: the revoked
    state is durable before the partitions move, and positions are set before the next fetch."""

    def __init__(self, worker: AlertWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker.off_loop(self.worker.on_revoked, self.worker.partitions_of(revoked))

    async def on_partitions_lost(self, lost: Any) -> None:
        await self.worker.off_loop(self.worker.on_lost, self.worker.partitions_of(lost))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker.off_loop(self.worker.on_assigned, self.worker.partitions_of(assigned))


class StateUnusable(RuntimeError):
    """The alert state of an assigned partition could not be restored (written by a newer release, or
    the state topic failed) or handed over: the worker stops rather than count without it. The cause is
    logged where it happened, so a command says this in one line."""


class AlertWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        metrics: AlertMetrics | None = None,
        dispatcher: Dispatcher | None = None,
        on_alert: OnAlert | None = None,
        clock: Callable[[], float] = time.time,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.alerts = settings.alerts
        template_problem = dashboard_template_problem(self.alerts.dashboard_url_template)
        if template_problem is not None:
            log.warning("alerts.dashboard_url_template %s: %s", template_problem, UNFILLED_LINKS)
        self.topic = settings.pipeline.labeled_topic
        self.clock = clock
        self.on_alert = on_alert
        self._stop: threading.Event | None = None  # run()'s, which a state save under way heeds
        # `metrics` (instead of `registry`): a worker restarted in the same process keeps its series
        self.metrics = metrics or AlertMetrics(registry or CollectorRegistry())
        # what this worker opened, for `_shutdown` to close; a dispatcher passed in is the caller's
        self._owned: list[tuple[str, Callable[[], None]]] = []
        if dispatcher is None:
            dispatcher = build_dispatcher(self.alerts.notifiers, on_outcome=self.metrics.notification)
            self._owned.append(("notifiers", dispatcher.close))
        self.dispatcher = dispatcher
        self.metrics.init_channels(ch.notifier.name for ch in self.dispatcher.channels)
        rules = (RULE_SHARE, RULE_VOLUME) if self.alerts.volume_rule else (RULE_SHARE,)
        self.metrics.init_rules(rules, self.alerts.keys)
        self._label_warned = False  # events without alerts.negative_label: warned of once, then counted
        self.consumer_overrides = consumer_overrides or {}
        self.parts: dict[int, PartitionState] = {}
        self.index: AlertIndex | None = None
        self.fatal: BaseException | None = None
        self.late = LateTally()  # which keys the late events were of, logged once a minute at most
        self.last_poll = 0.0  # time.monotonic() after the latest poll, for the health probes; 0: none yet
        self._last_save = 0.0
        self._save_s = 0.0  # CPU time of this thread in the last save (encoding; not waiting for acks)
        self._last_resend = 0.0
        self._origin: dict[tuple[str, str], int] = {}  # (alert id, status) -> partition, for queued ones
        # alert id -> (its partition, its latest transition Elasticsearch did not take)
        self._unindexed: dict[str, tuple[int, Alert]] = {}
        self._index_failures = 0
        self._index_retry_at = 0.0
        self._rewind: dict[int, int] = {}  # revoked without any durable state: where its counting began
        self._closing = False

    # ---- wiring --------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Connect. Each client is registered for `_shutdown` as soon as it exists: a set-up that fails
        part-way (a malformed Elasticsearch URL, a topic name Kafka refuses) must not leave the ones before
        it open, or every restart by `finsent run` would leak another producer thread."""
        k = self.settings.kafka
        kw = k.client_kwargs()
        record_limit = ensure_state_topic(kw, self.alerts.state_topic)
        self.store = StateStore(
            kw,
            self.alerts.state_topic,
            self.topic,
            consumer_kwargs=k.consumer_kwargs(),
            max_record_bytes=record_limit,
            group_id=self.alerts.group_id,
        )
        self._owned.append(("state store", self.store.close))
        es = self.settings.elasticsearch
        if es.enabled and es.url:
            from finsent.outputs.es_client import make_client

            client = make_client(es)
            self._owned.append(("Elasticsearch client", client.close))
            self.index = AlertIndex(client, es.index_prefix)
            self.index.prepare()
        self.consumer = KafkaConsumer(
            **{
                **k.consumer_kwargs(),
                "group_id": self.alerts.group_id,
                "enable_auto_commit": False,
                "auto_offset_reset": self.alerts.auto_offset_reset,
                "session_timeout_ms": k.session_timeout_ms,
                "heartbeat_interval_ms": k.heartbeat_interval_ms,
                "max_poll_interval_ms": k.max_poll_interval_ms,
                "max_poll_records": 2000,
                # A labeled topic is created with its partitions by `finsent run` or the deploy files; one
                # created by this subscription would get the broker's default (often 1) for good, the
                # most alert workers that could ever share it.
                "allow_auto_create_topics": False,
                # static membership, as the labeler's consumer has it (the setting is the Kafka section's)
                **({"group_instance_id": k.group_instance_id} if k.group_instance_id else {}),
                **self.consumer_overrides,
            }
        )
        close_ms = int(CLIENT_CLOSE_TIMEOUT_S * 1000)
        self._owned.append(
            ("consumer", functools.partial(self.consumer.close, autocommit=False, timeout_ms=close_ms))
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set; whatever ends it, set-up included, closes what the worker opened. A
        worker runs once: `finsent run` starts a new one after a failure."""
        self._stop = stop
        idle_s = 0.0
        try:
            self._setup()
            join_watch = JoinWatch(self.consumer)
            while not stop.is_set():
                # Rebalance listeners run inside poll(), a non-blocking one included (kafka-python awaits
                # them within the call), so `off_loop`'s helper still has the state to itself.
                join_watch.check()  # a join kafka-python gave up on would leave it without partitions
                settled = group_settled(self.consumer)
                got_records = self.step(poll_timeout_ms(settled))
                if got_records:
                    idle_s = 0.0  # a backlog, or a burst: poll again at once
                elif settled:  # while joining, poll() itself waited (JOIN_POLL_MS)
                    idle_s = idle_wait_s(idle_s, IDLE_WAIT_MAX_S)
                    stop.wait(idle_s)
        except SaveStopped:
            log.info("a state save was abandoned to stop; the shutdown saves again")
        finally:
            self._shutdown()

    def step(self, timeout_ms: int = POLL_TIMEOUT_MS) -> bool:
        """One poll: count events, close windows, persist, deliver, re-send firing alerts. True when the
        poll brought records."""
        batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=2000)
        if self.fatal is not None:
            raise StateUnusable("alert state could not be handed over or restored") from self.fatal
        self.last_poll = time.monotonic()
        now = self.clock()
        for tp, records in batch.items():
            ps = self.parts.get(tp.partition)
            if ps is None:
                continue
            events = False
            for r in records:
                if (
                    ps.next_offset is not None
                    and r.offset < ps.next_offset
                    and not self._log_restarted(ps, r.offset)
                ):
                    continue
                if ps.first_offset is None:
                    ps.first_offset = r.offset
                if is_control(r.headers):  # not saved for (a replay reads them again): no state write
                    self._take_watermark(ps, r.value, r.offset)
                else:
                    # only a counted event moves event time: a stream of others (late, ignored key
                    # types, invalid) restarting the idle clock kept a quiet key's windows open for ever
                    events = self._count(ps, r.value, now, r.offset) or events
                    ps.dirty = True
                ps.next_offset = r.offset + 1
            if events:
                self._mark_idle_start(ps, now)
            self._export_labeled_until(ps)
        self._check_log_ends()
        self._export_lag()
        late = self.late.report(now, self.alerts.allowed_lateness_s)
        if late is not None:
            log.warning("%s", late)
        for ps in self.parts.values():
            transitions = ps.detector.advance()
            idle_to = self._idle_event_time(ps, now)
            if idle_to is not None:
                transitions += ps.detector.advance(idle_to)
            self._export_evicted(ps)
            if transitions:
                ps.outbox.extend(transitions)
                ps.dirty = True
        has_outbox = any(ps.outbox for ps in self.parts.values())
        if has_outbox or interval_due(self._last_save, now, self._save_interval_s()):
            self._persist_and_commit()
        if has_outbox:
            self._deliver(now)
            self._persist_and_commit()
        if self._notify_caught_up(now):
            self._persist_and_commit()
        self.dispatcher.flush()
        if self._sync_pending():
            self._persist_and_commit()
        if self._unindexed:
            self._retry_index()
        if self._sync_unindexed():
            self._persist_and_commit()
        firing = [a for ps in self.parts.values() for a in ps.detector.firing()]
        self.metrics.set_firing(firing)
        am = self.alerts.notifiers.alertmanager
        if am.enabled and interval_due(self._last_resend, now, am.resend_interval_s):
            self._last_resend = now
            self.dispatcher.resend([a for a in firing if a.alert_id in self._notified_ids()])
        self.metrics.set_backlog(self.dispatcher.backlog())  # FinsentNotificationsFailing
        return bool(batch)

    def _export_lag(self) -> None:
        """Per owned partition, the highwater the fetches carry minus the next offset to read, for
        Prometheus (dashboards, FinsentAlertWorkerLagGrowing); KEDA reads the group's committed offsets
        from the brokers instead."""
        for partition, ps in self.parts.items():
            high = self.consumer.highwater(TopicPartition(self.topic, partition))
            if high is not None and ps.next_offset is not None:
                self.metrics.set_lag(self.topic, partition, max(0, high - ps.next_offset))

    def _log_restarted(self, ps: PartitionState, offset: int) -> bool:
        """Whether a record below the saved offset comes from a log that now ends before that offset: the
        labeled topic was deleted and created again (to change its partitions), or truncated. The fetch
        fell back to `auto_offset_reset`, and skipped, the new log's records were lost without a trace
        until it passed the old offset (days). They are counted from here on instead; baselines and open
        windows are kept, and an event read before counts once (its event id)."""
        high = self._log_ends_before(ps)
        if high is None:
            return False  # an old fetch's record: the log is as saved
        self._warn_log_restarted(ps, high)
        ps.log_restarted = False  # counting again: a later truncation is told of again
        ps.next_offset = offset
        ps.dirty = True
        return True

    def _check_log_ends(self) -> None:
        """Move a partition whose log ends before the saved offset to where `auto_offset_reset` says. Some
        brokers (Tansu) answer a fetch past the log end with nothing instead of offset-out-of-range, so the
        consumer would wait there, after a re-created topic, until the new log reached the old offset."""
        for ps in self.parts.values():
            if ps.log_restarted or (high := self._log_ends_before(ps)) is None:
                continue
            self._warn_log_restarted(ps, high)
            tp = TopicPartition(self.topic, ps.partition)
            # 0, not seek_to_beginning: a log that starts later answers out-of-range, and the consumer
            # then resets to its start (auto_offset_reset)
            self.consumer.seek(tp, 0 if self.alerts.auto_offset_reset == "earliest" else high)

    def _log_ends_before(self, ps: PartitionState) -> int | None:
        """The partition's log end (the high watermark of the latest fetch) when it is below the offset
        the partition's state goes on from, else None. (Not `end_offsets`: Tansu's answer falls short.)
        A high watermark kept from before a rebalance is never below it: only this consumer read the
        partition in between."""
        if ps.next_offset is None:
            return None
        high = self.consumer.highwater(TopicPartition(self.topic, ps.partition))
        return high if isinstance(high, int) and 0 <= high < ps.next_offset else None

    def _warn_log_restarted(self, ps: PartitionState, high: int) -> None:
        if ps.log_restarted:
            return
        ps.log_restarted = True
        log.warning(
            "partition %d: the saved alert state goes on from offset %d but %s[%d] ends at %d (deleted and "
            "created again, or truncated): counting its records from its %s (alerts.auto_offset_reset)",
            ps.partition,
            ps.next_offset,
            self.topic,
            ps.partition,
            high,
            "start" if self.alerts.auto_offset_reset == "earliest" else "end",
        )

    def polling(self, within_s: float) -> bool:
        """Whether `step()` polled within the last `within_s` seconds. A healthy step can block far longer
        than a poll (state saves, commits, alert documents: each waits up to its timeout), so callers
        choose `within_s` to cover that."""
        return time.monotonic() - self.last_poll < within_s

    @staticmethod
    def _pending_key(alert: Alert) -> tuple[str, str]:
        return alert.alert_id, alert.status

    def _sync_pending(self) -> bool:
        """Copy the dispatcher's queues into the owning partitions' states; True when one changed."""
        by_part: dict[int, dict[str, list[Alert]]] = {p: {} for p in self.parts}
        queued: set[tuple[str, str]] = set()
        for channel, alerts in self.dispatcher.pending_alerts().items():
            for a in alerts:
                queued.add(self._pending_key(a))
                p = self._origin.get(self._pending_key(a))
                if p in by_part:
                    by_part[p].setdefault(channel, []).append(a)
        # only queued transitions need their partition: an entry per delivered one was kept for ever
        self._origin = {k: p for k, p in self._origin.items() if k in queued}
        changed = False
        for p, pending in by_part.items():
            ps = self.parts[p]
            if pending != ps.pending:
                ps.pending = pending
                ps.dirty = changed = True
        return changed

    def _sync_unindexed(self) -> bool:
        """Copy the documents waiting for Elasticsearch into their partitions' states; True when one
        changed (a save is due)."""
        changed = False
        for p, ps in self.parts.items():
            waiting = [a for owner, a in self._unindexed.values() if owner == p]
            if waiting != ps.unindexed:
                ps.unindexed = waiting
                ps.dirty = changed = True
        return changed

    def _notified_ids(self) -> set[str]:
        return {i for ps in self.parts.values() for i in ps.notified}

    def _idle_event_time(self, ps: PartitionState, now: float) -> float | None:
        """Where event time may move with no events for `idle_advance_s`: on with the wall clock since
        the last event, but (`idle_clock: labeler`) no further than the labelers' watermarks say the input
        is read and labeled, so windows stay open while a labeler is stopped or behind."""
        if ps.idle_watermark is None or now - ps.idle_wall < self.alerts.idle_advance_s:
            return None
        to = ps.idle_watermark + (now - ps.idle_wall)
        if self.alerts.idle_clock == "wall":
            return to
        complete = ps.inputs.complete_at()
        if complete is None:
            return None
        # Event time is publication time, completeness is arrival time: a message arriving after
        # `complete` may have been published up to its source's delay earlier. The last event arrived
        # after the completeness seen with it (idle_complete: else a watermark would have followed it)
        # and carries that delay, so event time moves only as far as completeness has moved on since.
        # Capping at `complete` itself would close windows early by the delay and make the backlog of a
        # labeler outage late. With no watermark seen yet then, the event arrived before we saw it
        # (idle_wall): a later start, which also takes off the labelers' lag (safe, only slower).
        since = ps.idle_complete if ps.idle_complete is not None else ps.idle_wall
        labeled_to = ps.idle_watermark + (complete - since)
        return min(to, labeled_to) if labeled_to > ps.idle_watermark else None

    @staticmethod
    def _mark_idle_start(ps: PartitionState, now: float) -> None:
        """Where idle event time starts from: the last event's (never ahead of the wall clock: a state
        saved by an older version may hold event time up to max_future_s ahead, which idle advance would
        otherwise carry on for good), and the labelers' completeness at that moment."""
        watermark = ps.detector.watermark
        ps.idle_wall = now
        ps.idle_watermark = None if watermark is None else min(watermark, now)
        ps.idle_complete = ps.inputs.complete_at()

    def _export_evicted(self, ps: PartitionState) -> None:
        """The detector's monotonic counts (forgotten keys, model changes) as far as not exported yet."""
        evicted = ps.detector.keys_evicted
        if evicted > ps.keys_evicted:
            self.metrics.keys_evicted.inc(evicted - ps.keys_evicted)
            ps.keys_evicted = evicted
        changes = ps.detector.model_changes
        if changes > ps.model_changes:
            self.metrics.model_changes.inc(changes - ps.model_changes)
            ps.model_changes = changes

    def _export_labeled_until(self, ps: PartitionState) -> None:
        """The gauge behind FinsentAlertWindowsHeld: 0 while the input's completeness is unknown (no
        watermark yet, or an input partition no labeler reports), so that a deployment without watermarks
        alerts too instead of holding windows silently. Only with `idle_clock: labeler`."""
        if self.alerts.idle_clock == "labeler":
            self.metrics.set_labeled_until(ps.partition, ps.inputs.complete_at() or 0.0)

    def _take_watermark(self, ps: PartitionState, value: bytes | None, offset: int) -> None:
        try:
            ps.inputs.observe(parse_watermark(value))
            self._export_labeled_until(ps)
        except InvalidWatermark as exc:
            self.metrics.events_skipped.labels("invalid_watermark").inc()
            log.warning("skipping control record %s[%d]@%d: %s", self.topic, ps.partition, offset, exc)

    def _count(self, ps: PartitionState, value: bytes | None, now: float, offset: int) -> bool:
        """Count one labeled record; True when the detector took it (accepted)."""
        try:
            obj = json.loads(value) if value is not None else None
            event = parse_event(obj, self.alerts.negative_label)
        except (ValueError, RecursionError, InvalidEvent) as exc:  # RecursionError: JSON nested too deep
            code = exc.code if isinstance(exc, InvalidEvent) else "invalid_json"
            self.metrics.events_skipped.labels(code).inc()
            if code == "label" and self._label_warned:  # one labeler's every event: logged once
                log.debug("skipping labeled record %s[%d]@%d: %r", self.topic, ps.partition, offset, exc)
            elif code == "label":
                self._label_warned = True
                log.warning(
                    "skipping labeled record %s[%d]@%d: %s (alerts.negative_label is %r: another labeler, or "
                    "a mismatched setting?); such events are counted in "
                    'finsent_alert_events_skipped_total{reason="label"} and not logged again',
                    self.topic,
                    ps.partition,
                    offset,
                    exc,
                    self.alerts.negative_label,
                )
            else:
                log.warning("skipping labeled record %s[%d]@%d: %r", self.topic, ps.partition, offset, exc)
            return False
        # The wall clock of the event's arrival is when it was labeled, not when this worker reads it: in
        # a backlog, one event dated hours ahead (a source's clock) moved event time to the worker's now
        # and made the rest of the backlog late. The backtest replays with labeled_at the same way.
        labeled = labeled_time(obj)
        arrived = now if labeled is None else min(now, labeled)
        try:
            outcome = ps.detector.add(event, arrived)
        except Exception as exc:  # a safety net: one event the detector chokes on must not stop the partition
            self.metrics.events_skipped.labels("schema").inc()
            log.warning(
                "skipping labeled record %s[%d]@%d: the detector rejected it (%s: %s)",
                self.topic,
                ps.partition,
                offset,
                type(exc).__name__,
                exc,
            )
            return False
        if outcome == ACCEPTED:
            self.metrics.events.inc()
            return True
        self.metrics.events_skipped.labels(outcome).inc()
        if outcome == LATE:
            self.late.add(event.key_id, arrived - event.ts, now)
            log.debug("late event %r (%s)", event.event_id, event.ts)
        return False

    def _deliver(self, now: float) -> None:
        due: list[Alert] = []
        for ps in self.parts.values():
            for a in ps.outbox:
                self.metrics.transition(a)
                self._index(a, ps.partition)
                if self.on_alert is not None:
                    try:
                        self.on_alert(a)
                    except Exception:
                        log.exception("on_alert callback failed")
                if a.status == "firing":
                    if self._recent(a, now):
                        if a.escalation and a.alert_id not in ps.notified:
                            # its episode was never notified (too old when read): "escalated from
                            # warning" would name a warning nobody got, and resolve it in Alertmanager
                            a = replace(a, escalated_from="")
                        self._told(ps, a)
                        self._queue(ps, a, due)
                    else:
                        log.info("not notifying old alert %s (%s)", a.alert_id, one_line(a.summary))
                elif a.alert_id in ps.notified:
                    del ps.notified[a.alert_id]
                    self._queue(ps, a, due)
            ps.outbox.clear()
            ps.dirty = True
        if due:
            self.dispatcher.notify(due)
        self._sync_pending()
        self._sync_unindexed()

    def _recent(self, alert: Alert, now: float) -> bool:
        """Recent enough to notify: older ones come from replayed history. The age runs from when its
        window could close (`allowed_lateness_s` after its end), not from the end itself: with a lateness
        near `notify_max_age_s` every live alert was "old" by the time it fired, and none was sent."""
        return now - (alert.window_end + self.alerts.allowed_lateness_s) <= self.alerts.notify_max_age_s

    def _queue(self, ps: PartitionState, alert: Alert, due: list[Alert]) -> None:
        """Add a transition to the notifications due, remembering its partition (for its queued state)."""
        self._origin[self._pending_key(alert)] = ps.partition
        due.append(alert)

    @staticmethod
    def _told(ps: PartitionState, alert: Alert) -> None:
        ps.notified[alert.alert_id] = alert.severity
        ps.dirty = True

    def _notify_caught_up(self, now: float) -> bool:
        """Notify, once, alerts that fire and were never notified although their latest window is recent: a
        spike that began while the worker was down or lagging. Its firing transition was too old to notify
        when the backlog was read, and later windows of the same episode yield no new transition. Likewise
        an escalation read too late to notify, of an episode notified at its lower severity."""
        due: list[Alert] = []
        for ps in self.parts.values():
            for a in ps.detector.firing():
                if not self._recent(a, now):
                    continue
                if a.alert_id in ps.notified:
                    told = ps.notified[a.alert_id] or a.severity
                    if not higher(a.severity, told):
                        continue
                    log.info(
                        "notifying the escalation of alert %s, read after the worker caught up", a.alert_id
                    )
                    a = replace(a, escalated_from=told)
                else:
                    log.info(
                        "notifying alert %s, which began before the worker caught up (%s)",
                        a.alert_id,
                        one_line(a.summary),
                    )
                self._told(ps, a)
                self._queue(ps, a, due)
        if due:
            self.dispatcher.notify(due)
        return bool(due)

    def _index(self, alert: Alert, partition: int) -> None:
        """Write the alert's document; one that fails waits in `_unindexed` (its latest transition only,
        so a retried firing never overwrites a later resolve) and is retried with backoff."""
        if self.index is None:
            return
        self._unindexed.pop(alert.alert_id, None)
        self._unindexed[alert.alert_id] = (partition, alert)
        self._retry_index()

    def _retry_index(self) -> None:
        """Write queued alert documents, oldest first, for at most INDEX_STEP_BUDGET_S, unless a failure's
        backoff (1 s doubling to 60 s) has not passed: Elasticsearch calls block the consumer thread. A
        document the server refuses for its own fault (400, 413: the sink's rule, `is_refused_document`) is
        dropped, so it cannot hold the others back; a write block, a refused key or a missing index is
        retried, as the labeler's sink holds its batches on them."""
        now = self.clock()
        if now < self._index_retry_at:
            return
        budget_ends = now + INDEX_STEP_BUDGET_S
        while self._unindexed and self.index is not None and self.clock() < budget_ends:
            alert_id, (_, alert) = next(iter(self._unindexed.items()))
            try:
                self.index.write(alert)
            except Exception as exc:
                self.metrics.output_errors.labels("elasticsearch").inc()
                if isinstance(exc, ApiError) and is_refused_document(exc):
                    log.error("Elasticsearch refused alert %s for good (%s); not retried", alert_id, exc)
                    del self._unindexed[alert_id]
                    continue
                self._index_failures += 1
                delay = INDEX_RETRY.delay(self._index_failures, None)
                self._index_retry_at = now + delay
                log.error(
                    "writing alert %s to Elasticsearch failed (%d queued, retry in %.0f s): %s",
                    alert_id,
                    len(self._unindexed),
                    delay,
                    exc,
                )
                break
            del self._unindexed[alert_id]
            self._index_failures = 0
        while len(self._unindexed) > MAX_UNINDEXED:
            alert_id, _ = next(iter(self._unindexed.items()))
            del self._unindexed[alert_id]
            log.error("alert %s dropped from the Elasticsearch retry queue (full)", alert_id)

    def _save_interval_s(self) -> float:
        """`alerts.state_interval_s`, or SAVE_DUTY_FACTOR times the last save's CPU time when longer: a save
        encodes every key of each changed partition (about 1 s per 10,000 keys, `python
        bench/alert_memory.py`), so at a few 10,000 keys saves every 5 s left the worker no time to read."""
        return max(self.alerts.state_interval_s, SAVE_DUTY_FACTOR * self._save_s)

    def _persist_and_commit(self, partitions: set[int] | None = None, *, handover: bool = False) -> None:
        self._sync_pending()
        chosen = {p: ps for p, ps in self.parts.items() if partitions is None or p in partitions}
        started, cpu = time.monotonic(), time.thread_time()
        dirty = {p: ps.to_record() for p, ps in chosen.items() if ps.dirty}
        if dirty:
            try:
                if handover:
                    self.store.save(dirty, HANDOVER_SAVE_TIMEOUT_S)
                else:
                    self.store.save(dirty, SAVE_TIMEOUT_S, stop=self._stop)
            except SaveStopped:
                raise
            except Exception:
                self.metrics.output_errors.labels("kafka").inc()
                raise
            for p in dirty:
                chosen[p].dirty = False
                chosen[p].durable = True
                chosen[p].first_offset = None
            # spacing by CPU, not wall time: a save that waited 25 s for acks (a leader election) would
            # otherwise hold the next periodic save and offset commit back for minutes
            self._save_s = time.thread_time() - cpu
            self.metrics.state_save.observe(time.monotonic() - started)
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(ps.next_offset, "", -1)
            for p, ps in chosen.items()
            if ps.next_offset is not None
        }
        if offsets:
            try:
                self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
            except Exception as exc:  # the state topic holds the true offset; a failed commit only lags
                log.warning("committing labeled offsets failed: %s", exc)
        self._last_save = self.clock()

    # ---- rebalance -----------------------------------------------------------------------------------
    def partitions_of(self, tps: Any) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.topic}

    async def off_loop(self, work: Callable[[set[int]], None], partitions: set[int]) -> None:
        """Run `work` on a helper thread and yield to the consumer's IO loop until it is done. The worker's
        thread is inside `poll()` meanwhile, so the helper has the worker's state to itself."""
        sleep = io_loop_sleep(self.consumer)
        if sleep is None:  # a consumer without an IO loop of its own calls listeners on our thread
            work(partitions)
            return
        done = threading.Event()

        def target() -> None:
            try:
                work(partitions)
            except Exception as exc:  # the worker stops at its next step; its restart resumes cleanly
                log.exception("alert rebalance handling of partitions %s failed", sorted(partitions))
                self.fatal = exc
            finally:
                done.set()

        threading.Thread(target=target, name="alert-rebalance", daemon=True).start()
        while not done.is_set():
            await sleep(0.02)

    def on_revoked(self, partitions: set[int]) -> None:
        """Save and commit before the partitions move, so their next owner goes on from here."""
        mine = partitions & set(self.parts)
        if not mine:
            return
        if not self._closing:  # at shutdown the state was just saved
            try:
                self._persist_and_commit(mine, handover=True)  # a stop meanwhile must not drop the hand-over
            except Exception:
                log.exception("saving alert state of revoked partitions %s failed", sorted(mine))
        self._drop(mine)

    def on_lost(self, partitions: set[int]) -> None:
        """Evicted: another worker may own these already, so save nothing; it replays from the last
        durable state."""
        mine = partitions & set(self.parts)
        if mine:
            log.warning("partitions %s lost without a revoke; their unsaved state is dropped", sorted(mine))
            self._drop(mine)

    def _drop(self, mine: set[int]) -> None:
        for p in mine:
            ps = self.parts.pop(p)
            self.metrics.forget_partition(p, self.topic)
            if not ps.durable and ps.first_offset is not None:
                self._rewind[p] = ps.first_offset
        # their queued notifications travel with the state: the next owner sends them
        dropped = self.dispatcher.drop_pending(lambda a: self._origin.get(self._pending_key(a)) in mine)
        if dropped:
            log.info("%d queued notification(s) handed over with partitions %s", dropped, sorted(mine))
        self._origin = {k: p for k, p in self._origin.items() if p not in mine}
        # so do their unwritten alert documents
        for alert_id in [i for i, (p, _) in self._unindexed.items() if p in mine]:
            del self._unindexed[alert_id]

    def on_assigned(self, partitions: set[int]) -> None:
        """Restore each new partition's state and seek to the offset it holds. A partition that comes back
        to this consumer keeps its old read position, so the seek is never skipped: without a state record
        it goes to the committed offset, or back to where this worker's unsaved counting began."""
        new = partitions - set(self.parts)
        if not new:
            return
        try:
            records = self.store.load(new)
            restored = {p: self._restore(p, records.get(p)) for p in sorted(new)}
        except NewerState as exc:  # stopping, not starting fresh: that would overwrite the newer state
            log.error("%s", exc)
            self.fatal = exc
            return
        except Exception as exc:
            log.exception("reading alert state failed")
            self.fatal = exc
            return
        now = self.clock()
        for p, ps in restored.items():
            tp = TopicPartition(self.topic, p)
            if ps.next_offset is None:
                try:
                    committed = self.consumer.committed(tp, timeout_ms=COMMIT_TIMEOUT_MS)
                except Exception as exc:
                    log.warning("partition %d: reading the committed offset failed: %s", p, exc)
                    committed = None
                ps.next_offset = committed if committed is not None else self._rewind.get(p)
            self._rewind.pop(p, None)
            if ps.next_offset is not None:
                self.consumer.seek(tp, ps.next_offset)
            self._mark_idle_start(ps, now)
            self.parts[p] = ps
            # exported now, not at the partition's first record: with the labelers silent (stopped, or
            # held by an Elasticsearch outage) no record comes, and FinsentAlertWindowsHeld needs the 0
            self._export_labeled_until(ps)
            for a in ps.unindexed:
                self._unindexed.setdefault(a.alert_id, (p, a))
            for channel, alerts in ps.pending.items():
                for a in alerts:
                    self._origin[self._pending_key(a)] = p
                if self.dispatcher.restore_pending(channel, alerts):
                    log.info("partition %d: %d queued %s notification(s) restored", p, len(alerts), channel)

    def _restore(self, p: int, rec: dict[str, Any] | None) -> PartitionState:
        if rec is None:
            log.info("partition %d: no saved alert state, starting fresh", p)
            return PartitionState(partition=p, detector=Detector(self.alerts))
        self._refuse_newer(p, rec)
        try:
            ps = PartitionState.from_record(self.alerts, p, rec)
        except Exception as exc:
            # Any shape of a garbled record: the same record would stop every restart of the worker, so
            # it is logged and the partition starts fresh instead.
            log.error(
                "partition %d: saved alert state unusable (%s: %s), starting fresh",
                p,
                type(exc).__name__,
                str(exc)[:300],
            )
            return PartitionState(partition=p, detector=Detector(self.alerts))
        if ps.detector.dropped_at_restore:  # alerts.window_s changed: the open windows could not be kept
            self.metrics.events_skipped.labels("window_resized").inc(ps.detector.dropped_at_restore)
        log.info(
            "partition %d: restored alert state at offset %s (%d firing, %d to deliver)",
            p,
            ps.next_offset,
            len(ps.detector.firing()),
            len(ps.outbox),
        )
        return ps

    def _refuse_newer(self, p: int, rec: dict[str, Any]) -> None:
        """Raise NewerState for a record (or its detector snapshot) of a later version than this release
        reads: a rollback must neither read it nor, starting fresh, save over it. Other unreadable records
        are garbled: the partition starts fresh (`_restore`)."""
        detector = rec.get("detector")
        for what, found, reads in (
            ("state version", rec.get("version"), STATE_VERSION),
            (
                "detector snapshot version",
                detector.get("version") if isinstance(detector, dict) else None,
                SNAPSHOT_VERSION,
            ),
        ):
            if isinstance(found, int) and not isinstance(found, bool) and found > reads:
                loaded: dict[int, bytes] = getattr(getattr(self, "store", None), "loaded_from", {})
                key = loaded.get(p) or state_key(self.topic, p, self.alerts.group_id)
                raise newer_state(self.alerts.state_topic, key, f"{what} {found}", f"{what} {reads}")

    def _shutdown(self) -> None:
        """Save, then close what this worker opened, newest first (the consumer's revoke still reaches the
        dispatcher). Only what exists is closed, since set-up may have failed part-way, and one close that
        fails is logged so that it neither keeps the others open nor hides the error that ended the run.
        Its last line says which owned partitions' state was saved (`alert worker stopped (...)`)."""
        try:
            if self.fatal is None and self.parts:  # partitions are assigned only once set-up is done
                self._persist_and_commit(handover=True)
        except Exception:
            log.exception("saving alert state at shutdown failed")
        # before the consumer's close, whose revoke drops the partitions
        saved = sorted(p for p, ps in self.parts.items() if not ps.dirty)
        unsaved = sorted(p for p, ps in self.parts.items() if ps.dirty)
        self._closing = True
        while self._owned:
            what, close = self._owned.pop()
            try:
                close()
            except Exception:
                log.exception("closing the alert worker's %s failed", what)
        if unsaved:
            also = f"; saved for partitions {saved}" if saved else ""
            log.warning(
                "alert worker stopped (state NOT saved for partitions %s: they resume from their last "
                "saved state%s)",
                unsaved,
                also,
            )
        elif saved:
            log.info("alert worker stopped (state saved for partitions %s)", saved)
        else:
            log.info("alert worker stopped (no partitions assigned)")
