"""One cycle of one source: fetch, normalise, drop duplicates, publish, then checkpoint.

The order is the delivery guarantee: the checkpoint and the dedup index move only after Kafka acknowledged
the messages (at-least-once), and the dedup index makes a re-read after a crash effectively-once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ingest.sources.checkpoint import Checkpoint, StateStore, advance
from ingest.sources.dedup import DedupIndex, is_stale
from ingest.sources.fetchers import Fetched, Known
from ingest.sources.http import FetchError
from ingest.sources.metrics import SourceMetrics
from ingest.sources.normalize import dedup_keys
from ingest.sources.publisher import Publisher
from ingest.sources.timeparse import parse_time

log = logging.getLogger(__name__)


class DedupGuard:
    """The shared dedup index with claims, so that two sources fetching the same story at the same time
    cannot both publish it."""

    def __init__(
        self, index: DedupIndex, state: StateStore | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.index = index
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._dirty = False

    def known(self, message: Mapping[str, Any]) -> bool:
        """Already published, or too old to publish: either way nothing to fetch further pages for."""
        now = self._clock()
        with self._lock:
            return self.index.is_duplicate(dedup_keys(message), now) or is_stale(
                message, now, self.index.horizon_s
            )

    def claim(self, messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The messages not yet published nor claimed (claiming them), and how many were dropped."""
        now = self._clock()
        fresh: list[dict[str, Any]] = []
        with self._lock:
            for msg in messages:
                keys = dedup_keys(msg)
                if self.index.is_duplicate(keys, now):
                    self._dirty |= self.index.seen_again(keys, now)
                    continue
                if any(k in self._pending for k in keys) or is_stale(msg, now, self.index.horizon_s):
                    continue
                self._pending.update(keys)
                fresh.append(msg)
        return fresh, len(messages) - len(fresh)

    def settle(
        self,
        published: Sequence[Mapping[str, Any]],
        claimed: Sequence[Mapping[str, Any]],
        *,
        persist: bool = True,
    ) -> None:
        """Record what went out, release every claim, and persist the index (unless `persist` is False:
        the caller then calls save() later)."""
        now = self._clock()
        with self._lock:
            for msg in published:
                self.index.record(dedup_keys(msg), now)
            for msg in claimed:
                self._pending.difference_update(dedup_keys(msg))
            self.index.prune(now)
            if published:
                self._dirty = True
            if persist:
                self._save_locked()

    def save(self) -> None:
        """Persist the index if anything was recorded since the last save."""
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self._state is not None and self._dirty:
            self._state.save_dedup(self.index)
            self._dirty = False


@dataclass(frozen=True)
class CycleReport:
    source: str
    ok: bool
    fetched: int = 0
    published: int = 0
    duplicates: int = 0
    invalid: int = 0
    error: str | None = None


def _order_key(indexed: tuple[int, Mapping[str, Any]]) -> tuple[float, int]:
    i, msg = indexed
    when = parse_time(msg.get("published_at"))
    return (when.timestamp() if when else float("-inf"), i)


class SourceRunner:
    """Runs the cycles of one scheduled source; cycles of one source never overlap."""

    def __init__(
        self,
        name: str,
        topic: str,
        fetch: Callable[[Checkpoint, Known], Fetched],
        *,
        publisher: Publisher,
        dedup: DedupGuard,
        metrics: SourceMetrics,
        state: StateStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.topic = topic
        self._fetch = fetch
        self._publisher = publisher
        self._dedup = dedup
        self._metrics = metrics
        self._state = state
        self._clock = clock
        self._checkpoint: Checkpoint | None = None
        self._lock = threading.Lock()
        metrics.init_source(name, clock())

    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            self._checkpoint = self._state.load_checkpoint(self.name)
        return self._checkpoint

    def run_once(self) -> CycleReport:
        """One fetch-publish-checkpoint cycle; never raises (a broken source must not stop the others)."""
        with self._lock:
            try:
                return self._cycle()
            except Exception as e:
                log.exception("source %s: unexpected error", self.name)
                self._metrics.errors.labels(self.name, "internal").inc()
                return CycleReport(self.name, ok=False, error=f"internal: {e}")

    def _cycle(self) -> CycleReport:
        m = self._metrics
        checkpoint = self.checkpoint()
        started = time.monotonic()
        try:
            fetched = self._fetch(checkpoint, self._dedup.known)
        except FetchError as e:
            m.fetch_seconds.labels(self.name).observe(time.monotonic() - started)
            m.errors.labels(self.name, e.kind).inc()
            log.warning("source %s: fetch failed: %s", self.name, e)
            return CycleReport(self.name, ok=False, error=str(e))
        m.fetch_seconds.labels(self.name).observe(time.monotonic() - started)
        m.fetched.labels(self.name).inc(fetched.items)
        for where, problem in fetched.invalid:
            m.errors.labels(self.name, problem.reason).inc()
            log.warning("source %s: skipped %s: %s", self.name, where, problem)
        if fetched.not_modified:
            self._succeeded()
            return CycleReport(self.name, ok=True)

        ordered = [msg for _, msg in sorted(enumerate(fetched.messages), key=_order_key)]
        fresh, dropped = self._dedup.claim(ordered)
        m.duplicates.labels(self.name).inc(dropped)
        published: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        failures = 0
        try:
            if fresh:
                errors = self._publisher.publish(self.topic, self.name, fresh)
                for msg, err in zip(fresh, errors, strict=True):
                    if err is None:
                        published.append(msg)
                    elif err.retriable:
                        failures += 1
                        log.warning(
                            "source %s: publishing %s failed: %s", self.name, msg.get("id"), err.message
                        )
                    else:
                        # The broker will never take it: count, log, remember it, and move on.
                        rejected.append(msg)
                        m.errors.labels(self.name, "rejected_by_broker").inc()
                        log.error("source %s: broker rejected %s: %s", self.name, msg.get("id"), err.message)
        finally:
            self._dedup.settle([*published, *rejected], fresh)
        m.published.labels(self.name).inc(len(published))
        report = CycleReport(
            self.name,
            ok=True,
            fetched=fetched.items,
            published=len(published),
            duplicates=dropped,
            invalid=len(fetched.invalid),
        )
        if failures:
            m.errors.labels(self.name, "publish").inc(failures)
            return replace(report, ok=False, error=f"publish: {failures} failed")
        # Everything fetched is out: only now does the checkpoint move. Not its newest time after a page
        # failed: `since_param` would then leave out the older items of the pages still owed.
        moved = published if fetched.partial_error is None else []
        new = advance(checkpoint, moved, self._clock(), **fetched.changes)
        if new != checkpoint:
            self._state.save_checkpoint(self.name, new)
        self._checkpoint = new
        if fetched.partial_error is not None:
            m.errors.labels(self.name, fetched.partial_error.kind).inc()
            log.warning("source %s: stopped paging: %s", self.name, fetched.partial_error)
            return replace(report, ok=False, error=str(fetched.partial_error))
        self._succeeded()
        if published or dropped or fetched.invalid:
            log.info(
                "source %s: %d fetched, %d %s, %d duplicates, %d invalid",
                self.name,
                fetched.items,
                len(published),
                "published" if self._publisher.publishes else "would be published",
                dropped,
                len(fetched.invalid),
            )
        return report

    def _succeeded(self) -> None:
        self._metrics.last_success.labels(self.name).set(self._clock())
