"""The long-running sources service: every enabled source on its own schedule, stdin sources on a
thread, one shared producer and dedup index. `run_all_once` is the one-shot used by `check` and tests."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

import httpx
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from ingest.sources import tailing
from ingest.sources.checkpoint import StateStore
from ingest.sources.config import SourceList, SourcesSettings, StdinSource
from ingest.sources.fetchers import decode_stdin_line, fetches_over_http, make_fetcher, parse_stdin_line
from ingest.sources.http import HttpClient, RetryPolicy, retry_delay
from ingest.sources.metrics import SourceMetrics
from ingest.sources.normalize import InvalidItem
from ingest.sources.publisher import Publisher
from ingest.sources.runner import CycleReport, DedupGuard, SourceRunner
from ingest.sources.schedule import build_trigger

log = logging.getLogger(__name__)

# How often stdin's dedup index is written while lines stream in (and once more at the end).
STDIN_SAVE_INTERVAL_S = 1.0
# A stdin line Kafka could not take yet is retried after 0.5 s, doubling up to 30 s (no re-reading a pipe).
STDIN_RETRY = RetryPolicy(backoff_s=0.5, max_backoff_s=30.0)


class SourcesService:
    """Owns the scheduler, the HTTP client and the runners; the publisher is passed in and closed by the
    caller. With `dry_run`, state is read but never written (for `finsent sources check`)."""

    def __init__(
        self,
        sources: SourceList,
        settings: SourcesSettings,
        publisher: Publisher,
        registry: CollectorRegistry,
        *,
        dry_run: bool = False,
        stdin: BinaryIO | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sources = sources.enabled()
        tailing.allow_csv_cells_up_to(max((s.max_item_bytes for s in self.sources), default=0) * 4)
        self.metrics = SourceMetrics(registry)
        self._stop = threading.Event()
        self._publisher = publisher
        self._stdin = stdin
        self._clock = clock
        horizon_s = settings.dedup_horizon_hours * 3600.0
        self.state = StateStore(settings.state_dir, readonly=dry_run)
        index = self.state.load_dedup(horizon_s)
        self.dedup = DedupGuard(index, self.state, clock)
        # One HTTP client (one connection pool) per source: a kept-alive connection is reused without
        # the address guard's connect-time check (ingest/sources/connect.py), so a connection one source
        # may make (to its own internal host) must never serve another source's fetch.
        self.clients: dict[str, HttpClient] = {}
        self.runners: dict[str, SourceRunner] = {}
        for s in self.sources:
            if isinstance(s, StdinSource):
                continue
            if fetches_over_http(s):
                self.clients[s.name] = HttpClient(
                    user_agent=settings.user_agent, sleep=self._stop.wait, transport=transport
                )
            runner = SourceRunner(
                s.name,
                s.topic or settings.topic,
                make_fetcher(s, self.clients.get(s.name)),
                publisher=publisher,
                dedup=self.dedup,
                metrics=self.metrics,
                state=self.state,
                clock=clock,
            )
            self.runners[s.name] = runner
        self._scheduler: BackgroundScheduler | None = None
        self._threads: list[threading.Thread] = []

    # -- one shot ----------------------------------------------------------------------------------------

    def run_all_once(self) -> list[CycleReport]:
        """Every scheduled source once, in order; stdin sources read until end of input."""
        reports = [runner.run_once() for runner in self.runners.values()]
        for s in self.sources:
            if isinstance(s, StdinSource) and self._stdin is not None:
                reports.append(self.read_stdin(s, self._stdin))
        return reports

    # -- service -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler (each source runs once right away, then on its schedule) and stdin readers."""
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(self.settings.max_workers)}, timezone=UTC
        )
        now = datetime.now(UTC)
        for s in self.sources:
            if isinstance(s, StdinSource):
                continue
            trigger = build_trigger(
                every_s=s.interval_s, cron=s.cron, timezone=s.timezone, jitter_s=s.jitter_s
            )
            scheduler.add_job(
                self.runners[s.name].run_once,
                trigger,
                id=s.name,
                name=s.name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=now,
            )
        scheduler.start()
        self._scheduler = scheduler
        for s in self.sources:
            if isinstance(s, StdinSource) and self._stdin is not None:
                t = threading.Thread(
                    target=self.read_stdin, args=(s, self._stdin), name=f"stdin-{s.name}", daemon=True
                )
                t.start()
                self._threads.append(t)
        log.info("sources service started: %d scheduled, %d stdin", len(self.runners), len(self._threads))

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running and not self._stop.is_set()

    def only_stdin_finished(self) -> bool:
        """True when the service has nothing left to do: no scheduled source and stdin at its end."""
        return not self.runners and bool(self._threads) and not any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() is called or only finished stdin sources remain; True if stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self.only_stdin_finished():
                return True
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return False
            self._stop.wait(left)
        return True

    def stop(self) -> None:
        """Stop scheduling, interrupt back-off waits, let running cycles finish."""
        self._stop.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        # A stdin reader blocked on a quiet pipe never reaches its own final save.
        self._save_dedup(None)
        for client in self.clients.values():
            client.close()

    # -- stdin -------------------------------------------------------------------------------------------

    def _settle_stdin(
        self, name: str, published: list[dict[str, Any]], fresh: list[dict[str, Any]], *, persist: bool
    ) -> bool:
        """`dedup.settle`; True when it saved. A failed save (disk full, read-only) is logged and counted
        (`internal`) and tried again a second later: it must not end the reader, which the service would
        take for the end of its input."""
        try:
            self.dedup.settle(published, fresh, persist=persist)
        except OSError as e:
            self.metrics.errors.labels(name, "internal").inc()
            log.error("source %s: saving the dedup index failed: %s", name, e)
            return False
        return persist

    def _save_dedup(self, name: str | None) -> None:
        """The final save of the dedup index; a failure is logged (and counted for a source), not raised,
        so that the publisher and the HTTP clients are still closed."""
        try:
            self.dedup.save()
        except OSError as e:
            if name is not None:
                self.metrics.errors.labels(name, "internal").inc()
            log.error("saving the dedup index failed: %s", e)

    def read_stdin(self, source: StdinSource, stream: BinaryIO) -> CycleReport:
        """Publish each line as it arrives until end of input (or stop). A bad line (bad UTF-8, JSON or
        fields) is counted and skipped; a line the broker could not take yet is retried until it can."""
        m = self.metrics
        m.init_source(source.name, self._clock())
        topic = source.topic or self.settings.topic
        totals = Counter({"fetched": 0, "published": 0, "duplicates": 0, "invalid": 0})
        saved_at = self._clock()
        for lineno, raw in enumerate(stream, start=1):
            if self._stop.is_set():
                break
            if not raw.strip():
                continue
            totals["fetched"] += 1
            m.fetched.labels(source.name).inc()
            try:
                msg = parse_stdin_line(source, decode_stdin_line(raw))
            except InvalidItem as e:
                totals["invalid"] += 1
                m.errors.labels(source.name, e.reason).inc()
                log.warning("source %s: skipped line %d: %s", source.name, lineno, e)
                continue
            fresh, dropped = self.dedup.claim([msg])
            totals["duplicates"] += dropped
            m.duplicates.labels(source.name).inc(dropped)
            published: list[dict[str, Any]] = []
            try:
                if fresh and self._publish_line(source.name, topic, lineno, fresh):
                    published = fresh
            finally:
                # Saving the whole index per line would make a bulk load quadratic: once a second at most.
                persist = self._clock() - saved_at >= STDIN_SAVE_INTERVAL_S
                if self._settle_stdin(source.name, published, fresh, persist=persist):
                    saved_at = self._clock()
            if published:
                totals["published"] += 1
                m.published.labels(source.name).inc()
                m.last_success.labels(source.name).set(self._clock())
        self._save_dedup(source.name)
        return CycleReport(
            source.name,
            ok=True,
            fetched=totals["fetched"],
            published=totals["published"],
            duplicates=totals["duplicates"],
            invalid=totals["invalid"],
        )

    def _publish_line(self, name: str, topic: str, lineno: int, fresh: list[dict[str, Any]]) -> bool:
        """Publish one stdin line; retriable failures (broker down) are retried with backoff until stop,
        because a pipe cannot be read again. False when the broker rejected it or the service stopped."""
        attempt = 0
        while True:
            (error,) = self._publisher.publish(topic, name, fresh)
            if error is None:
                return True
            kind = "publish" if error.retriable else "rejected_by_broker"
            self.metrics.errors.labels(name, kind).inc()
            if not error.retriable:
                log.warning("source %s: line %d rejected by the broker: %s", name, lineno, error.message)
                return False
            attempt += 1
            delay = retry_delay(attempt, STDIN_RETRY, None)
            log.warning(
                "source %s: line %d not published, retrying in %.1fs: %s", name, lineno, delay, error.message
            )
            if self._stop.wait(delay):
                return False
