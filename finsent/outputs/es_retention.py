"""Retention of the daily event indices where the server has no index lifecycle management.

With lifecycle management, the policy `es_setup` installs deletes `<prefix>-events-YYYY.MM.DD` once
`elasticsearch.retention_days` have passed since the day in its name. A server without it (noida-db,
Elasticsearch Serverless) has no such policy, and nothing deleted those indices: texts and authors were kept
for ever. There `finsent run` deletes them itself, by the same count: at start, after the index setup, and
then every CLEANUP_INTERVAL_S while it runs. Several labelers doing it at once is fine (an index another one
deleted first is a 404, not an error).

The policy counts on the server's clock; finsent counts on the labeler host's. So that a clock far ahead
(91 days, with 90 days' retention) cannot delete every index, today's included, finsent also counts back
from the newest daily index present: an index is deleted only once it is past retention both by the clock
and by that newest day (`deletable_indices`), so retention_days of indices, counting back from the newest,
are always kept, and the newest one never goes."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from elasticsearch import ApiError, Elasticsearch, TransportError

from finsent.outputs.es_documents import events_index
from finsent.outputs.es_errors import error_summary
from finsent.settings import ElasticsearchSettings

log = logging.getLogger(__name__)

CLEANUP_INTERVAL_S = 3600.0
"""How often a running labeler looks for expired indices (an index may so outlive its retention by up to
this much, as one under a lifecycle policy outlives it by the server's lifecycle poll interval)."""

THREAD_NAME = "finsent-es-retention"

_DAY = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


def index_day(name: str, prefix: str) -> date | None:
    """The day an index named exactly `<prefix>-events-YYYY.MM.DD` (`events_index`) holds; None for any
    other name: the alias, another prefix's indices, a copy (`...-2024.01.31-old`), a name that is no date."""
    head = f"{prefix}-events-"
    if not name.startswith(head):
        return None
    match = _DAY.fullmatch(name[len(head) :])
    if match is None:
        return None
    try:
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:  # 2024.02.30
        return None
    return day if events_index(prefix, datetime(day.year, day.month, day.day, tzinfo=UTC)) == name else None


def day_start(day: date) -> datetime:
    """The start (UTC) of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def expired(day: date, retention_days: int, now: datetime) -> bool:
    """Whether a day's index is past its retention, counted as the lifecycle policy counts it: from the
    start (UTC) of the day in its name (`index.lifecycle.parse_origination_date`), deleted once
    `retention_days` have passed (the policy's delete phase, `min_age: <retention_days>d`)."""
    return now >= day_start(day) + timedelta(days=retention_days)


def expired_indices(names: Iterable[str], prefix: str, retention_days: int, now: datetime) -> list[str]:
    """Of `names`, those of finsent's daily event indices for `prefix` that are past retention, oldest
    first."""
    days = {name: index_day(name, prefix) for name in names}
    old = [(day, name) for name, day in days.items() if day is not None and expired(day, retention_days, now)]
    return [name for _, name in sorted(old)]


CLOCK_AHEAD = timedelta(days=2)
"""How far past the start of the newest index's day the clock may be before an index held back for it
(`deletable_indices`) is worth a warning: its whole day and one more. A stream quiet since yesterday, or
the minutes after midnight before today's first event, are not."""


def deletable_indices(
    names: Iterable[str], prefix: str, retention_days: int, now: datetime
) -> tuple[list[str], list[str], date | None]:
    """(to delete, held back, newest day): of finsent's daily event indices for `prefix` among `names`,
    those past retention (oldest first) both by `now` and by the start of the newest index's day, i.e.
    never the newest index, and never one of the retention_days counting back from it; those past
    retention by `now` alone are held back. With the clock right and events coming, the newest index is
    today's (or, with events published up to a day ahead, tomorrow's), and nothing is held back that the
    lifecycle policy would delete; a stream quiet for days keeps its indices that many days longer."""
    listed = list(names)
    days = [day for day in (index_day(name, prefix) for name in listed) if day is not None]
    if not days:
        return [], [], None
    newest = max(days)
    by_clock = expired_indices(listed, prefix, retention_days, now)
    by_newest = set(expired_indices(listed, prefix, retention_days, day_start(newest)))
    by_newest.discard(events_index(prefix, day_start(newest)))  # already so with retention_days >= 1
    due = [name for name in by_clock if name in by_newest]
    return due, [name for name in by_clock if name not in by_newest], newest


class EventsRetention:
    """Deletes `<prefix>-events-YYYY.MM.DD` indices whose day is `retention_days` or more before now, and
    as many before the newest such index present (`deletable_indices`: a clock ahead deletes nothing
    recent; one held back for it is said once per run at WARNING).

    A refusal (401, 403: credentials without the `delete_index` privilege, or `view_index_metadata` to
    list the indices) is said once per run at WARNING, and at DEBUG after that; other failures (the server
    unavailable) once per outage. None of them is raised: the labeler goes on, and the next pass tries
    again."""

    def __init__(
        self,
        client: Elasticsearch,
        prefix: str,
        retention_days: int,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention_days = retention_days
        self.stop = stop
        self.pattern = f"{prefix}-events-*"
        self._said: set[str] = set()
        self._outage = False

    def run_once(self, now: datetime | None = None) -> list[str]:
        """One pass; returns the indices it deleted (not those another labeler deleted first)."""
        moment = now if now is not None else datetime.now(UTC)
        try:
            names = self._list()
            if names is None:
                return []
            due, held, newest = deletable_indices(names, self.prefix, self.retention_days, moment)
            if held and newest is not None and moment - day_start(newest) >= CLOCK_AHEAD:
                self._say_once(
                    "clock",
                    "expired event indices %s: the clock here (%s) is %.1f days past the start of the "
                    "newest event index's day (%s); %d indices past elasticsearch.retention_days (%d) by "
                    "this clock are kept, as finsent keeps %d days of indices counting back from the "
                    "newest one (a clock ahead must not delete recent events). Check this host's clock; "
                    "if the stream was only quiet, they are deleted as new days' indices come (said once "
                    "per run): %s",
                    self.pattern,
                    moment.isoformat(timespec="seconds"),
                    (moment - day_start(newest)).total_seconds() / 86400,
                    events_index(self.prefix, day_start(newest)),
                    len(held),
                    self.retention_days,
                    self.retention_days,
                    ", ".join(held[:5]) + (", ..." if len(held) > 5 else ""),
                )
            deleted: list[str] = []
            for name in due:
                if self.stop is not None and self.stop.is_set():
                    break
                outcome = self._delete(name)
                if outcome is None:  # refused: every other index would be refused the same way
                    break
                if outcome:
                    deleted.append(name)
        except (ApiError, TransportError) as e:
            self._unavailable(e)
            return []
        except Exception:  # never ends the thread: the next pass tries again
            self._say_once("unexpected", "expired event indices: the cleanup failed", exc_info=True)
            return []
        if self._outage:
            log.info("expired event indices %s: the cleanup works again", self.pattern)
            self._outage = False
        return deleted

    def _list(self) -> list[str] | None:
        """The concrete indices matching the template's pattern (never an alias: `GET <pattern>/_alias`
        answers with indices only); None when the listing is refused."""
        try:
            answer = self.client.indices.get_alias(index=self.pattern)
        except ApiError as e:
            if e.meta.status == 404:
                return []
            if e.meta.status in (401, 403):
                self._refused("listing the indices", "view_index_metadata", e)
                return None
            raise
        return [str(name) for name in answer.body]

    def _delete(self, name: str) -> bool | None:
        """True once deleted, False where it was gone already (another labeler), None when refused."""
        try:
            self.client.indices.delete(index=name)
        except ApiError as e:
            if e.meta.status == 404:
                log.debug("index %s: already deleted (by another labeler)", name)
                return False
            if e.meta.status in (401, 403):
                self._refused(f"deleting index {name}", "delete_index", e)
                return None
            if 400 <= e.meta.status < 500 and e.meta.status not in (408, 429):
                self._say_once(
                    f"delete:{name}",
                    "index %s is past elasticsearch.retention_days (%d) but Elasticsearch refused to "
                    "delete it (%s); it is kept: delete it by hand",
                    name,
                    self.retention_days,
                    error_summary(e),
                )
                return False
            raise
        log.info(
            "deleted index %s: its day is %d or more days ago (elasticsearch.retention_days; this server has "
            "no index lifecycle management, so finsent deletes expired event indices itself)",
            name,
            self.retention_days,
        )
        return True

    def _refused(self, what: str, privilege: str, error: ApiError) -> None:
        fix = (
            "the credentials (elasticsearch.api_key or username) were not accepted"
            if error.meta.status == 401
            else f"give the credentials (elasticsearch.api_key or username) the {privilege} privilege on "
            f"{self.pattern}"
        )
        self._say_once(
            f"refused:{privilege}",
            "Elasticsearch refused %s (%s): this server has no index lifecycle management, and finsent "
            "cannot delete the event indices older than elasticsearch.retention_days (%d) itself, so they "
            "are kept: %s, or delete them by hand (said once per run; tried again every %.0f min)",
            what,
            error_summary(error),
            self.retention_days,
            fix,
            CLEANUP_INTERVAL_S / 60,
        )

    def _unavailable(self, error: Exception) -> None:
        if not self._outage:
            log.warning(
                "expired event indices %s: the cleanup failed (%s); trying again in %.0f min",
                self.pattern,
                error_summary(error) if isinstance(error, ApiError) else error,
                CLEANUP_INTERVAL_S / 60,
            )
        else:
            log.debug("expired event indices %s: the cleanup failed again (%s)", self.pattern, error)
        self._outage = True

    def _say_once(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        level = logging.DEBUG if key in self._said else logging.WARNING
        self._said.add(key)
        log.log(level, message, *args, exc_info=exc_info)


def own_retention_needed(settings: ElasticsearchSettings, *, lifecycle_in_force: bool) -> bool:
    """Whether finsent must delete its expired event indices itself: the lifecycle is asked for
    (`lifecycle_enabled`) but the server has none. With `lifecycle_enabled=false` nothing is deleted, as
    documented (`max_age_days` bounds the days instead)."""
    return settings.lifecycle_enabled and not lifecycle_in_force


def start_events_retention(
    client: Elasticsearch,
    settings: ElasticsearchSettings,
    stop: threading.Event,
    *,
    lifecycle_in_force: bool,
    interval_s: float = CLEANUP_INTERVAL_S,
) -> threading.Thread | None:
    """Where `own_retention_needed`: a daemon thread deleting expired event indices at once, then every
    `interval_s` until `stop` is set (the worker's stop). None otherwise."""
    if not own_retention_needed(settings, lifecycle_in_force=lifecycle_in_force):
        return None
    retention = EventsRetention(client, settings.index_prefix, settings.retention_days, stop=stop)

    def loop() -> None:
        while not stop.is_set():
            retention.run_once()
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=loop, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread
