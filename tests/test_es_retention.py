"""Retention of the daily event indices on a server without index lifecycle management (noida-db, like
Elasticsearch Serverless): the lifecycle policy is skipped there, and nothing deleted
`<prefix>-events-YYYY.MM.DD`, texts and authors kept for ever. finsent deletes them itself, by the day in
the name as the policy counts, and nothing else."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from finsent.outputs.es_documents import events_index
from finsent.outputs.es_retention import (
    THREAD_NAME,
    EventsRetention,
    deletable_indices,
    expired,
    expired_indices,
    index_day,
    start_events_retention,
)
from finsent.settings import ElasticsearchSettings, Settings
from tests.pipeline_helpers import ForwardingProxy, reply

RETENTION = 30
NOW = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)


def es(url: str) -> Elasticsearch:
    return Elasticsearch(url, request_timeout=5, max_retries=0)


def day_index(prefix: str, day: date) -> str:
    return events_index(prefix, datetime(day.year, day.month, day.day, tzinfo=UTC))


def es_error(status: int, kind: str, reason: str) -> dict[str, Any]:
    return {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}}


def indices(client: Elasticsearch, pattern: str) -> set[str]:
    return set(client.indices.get_alias(index=pattern).body)


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class Family:
    """Daily indices of one prefix around the retention boundary, and look-alikes that are not finsent's."""

    def __init__(self, client: Elasticsearch, prefix: str, today: date) -> None:
        self.prefix = prefix
        boundary = today - timedelta(days=RETENTION)  # its retention ended at today's 00:00 UTC
        self.old = [day_index(prefix, d) for d in (boundary - timedelta(days=400), boundary)]
        self.kept = [day_index(prefix, d) for d in (boundary + timedelta(days=1), today)]
        ancient = "2001.01.01"
        self.others = [
            f"{prefix}-events-{ancient}-copy",  # a copy next to finsent's
            f"{prefix}-events-2001.02.30",  # no such day
            f"{prefix}-events-{ancient.replace('.', '-')}",  # another date format
            f"{prefix}-eventsx-{ancient}",
            f"{prefix}x-events-{ancient}",  # another prefix
            f"x{prefix}-events-{ancient}",
        ]
        for name in [*self.old, *self.kept, *self.others]:
            client.indices.create(index=name)
        client.indices.put_alias(index=self.kept[-1], name=f"{prefix}-events")
        client.indices.put_alias(index=self.old[0], name=f"{prefix}-events")  # as a bootstrap index was


def test_days_expire_as_the_lifecycle_policy_counts_them() -> None:
    """From the start (UTC) of the day in the name: the policy's `min_age` with parse_origination_date."""
    boundary = NOW.date() - timedelta(days=RETENTION)
    assert expired(boundary, RETENTION, NOW)
    assert expired(boundary, RETENTION, datetime(2026, 3, 15, tzinfo=UTC))  # from midnight on
    assert not expired(boundary, RETENTION, datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC))
    assert not expired(boundary + timedelta(days=1), RETENTION, datetime(2026, 3, 15, 23, 59, tzinfo=UTC))
    assert index_day(day_index("p", boundary), "p") == boundary
    for name in ("p-events", "p-events-2026.1.01", "p-events-2026.02.30", "q-events-2026.01.01", "p-events-"):
        assert index_day(name, "p") is None, name
    names = [day_index("p", boundary), day_index("p", boundary - timedelta(days=1)), "p-events"]
    assert expired_indices(names, "p", RETENTION, NOW) == names[1::-1]  # oldest first, alias never


def test_the_cleanup_deletes_exactly_finsent_s_expired_daily_indices(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = es(es_url)
    family = Family(client, f"r{unique}", NOW.date())
    caplog.set_level(logging.DEBUG, logger="finsent.outputs.es_retention")
    deleted = EventsRetention(client, family.prefix, RETENTION).run_once(NOW)
    assert deleted == family.old
    left = indices(client, f"*{family.prefix}*")
    assert left == {*family.kept, *family.others}
    assert set(client.indices.get_alias(name=f"{family.prefix}-events").body) == {family.kept[-1]}
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 2 and all(
        f"deleted index {name}" in m for name, m in zip(family.old, infos, strict=True)
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert EventsRetention(client, family.prefix, RETENTION).run_once(NOW) == []  # nothing left to do


def test_an_index_another_labeler_deleted_first_is_no_error(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = es(es_url)
    family = Family(client, f"g{unique}", NOW.date())
    gone = day_index(family.prefix, date(2020, 1, 1))  # listed, then deleted by another labeler
    retention = EventsRetention(client, family.prefix, RETENTION)
    listed = retention._list
    monkeypatch.setattr(retention, "_list", lambda: [*(listed() or []), gone])
    with caplog.at_level(logging.INFO, logger="finsent.outputs.es_retention"):
        assert retention.run_once(NOW) == family.old
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if gone in r.getMessage()]


class DeleteRefusals(ForwardingProxy):
    """A key without the delete_index privilege: every DELETE is a 403, the rest reaches noida-db."""

    def __init__(self, target: str) -> None:
        self.deletes = 0
        super().__init__(target)

    def answer(self, handler: Any, body: bytes) -> bool:
        if handler.command != "DELETE":
            return False
        self.deletes += 1
        reason = "action [indices:admin/delete] is unauthorized for API key id [k1] of user [finsent]"
        reply(handler, 403, es_error(403, "security_exception", reason))
        return True


def test_a_refused_delete_is_one_warning_per_run_naming_the_privilege(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = es(es_url)
    family = Family(client, f"d{unique}", NOW.date())
    proxy = DeleteRefusals(es_url)
    try:
        retention = EventsRetention(es(proxy.url), family.prefix, RETENTION)
        with caplog.at_level(logging.DEBUG, logger="finsent.outputs.es_retention"):
            for _ in range(3):  # three hourly passes
                assert retention.run_once(NOW) == []
    finally:
        proxy.close()
    assert proxy.deletes == 3  # one per pass: the others would be refused the same way
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "delete_index privilege" in warnings[0] and f"{family.prefix}-events-*" in warnings[0], warnings
    assert "403 security_exception" in warnings[0], warnings
    assert indices(client, f"{family.prefix}-events-*") >= set(family.old)  # kept, not crashed


def test_an_unavailable_server_is_said_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    retention = EventsRetention(es("http://127.0.0.1:9"), "u", RETENTION)  # nothing listens there
    with caplog.at_level(logging.DEBUG, logger="finsent.outputs.es_retention"):
        assert retention.run_once(NOW) == [] and retention.run_once(NOW) == []
    ours = [r.levelno for r in caplog.records if r.name == "finsent.outputs.es_retention"]
    assert ours == [logging.WARNING, logging.DEBUG]


def test_a_clock_far_ahead_deletes_nothing_recent() -> None:
    """The policy counts on the server's clock, finsent on the labeler host's: a host 91 days ahead, with
    90 days' retention, would delete every daily index, today's included. Only those past retention both
    by the clock and by the newest index present go: retention_days of them, counting back from the
    newest, are kept."""
    prefix, retention = "p", 90
    today = NOW.date()
    names = [day_index(prefix, today - timedelta(days=k)) for k in range(100)]  # today's first
    ahead = NOW + timedelta(days=91)
    assert expired_indices(names, prefix, retention, ahead) == names[::-1]  # by the clock alone: all
    due, held, newest = deletable_indices(names, prefix, retention, ahead)
    assert newest == today
    assert due == names[:89:-1]  # 90 .. 99 days old, oldest first: what the policy deletes today
    assert held == names[89::-1] and names[0] in held  # the last 90 days, today's included
    # with the clock right, the same as the policy
    assert deletable_indices(names, prefix, retention, NOW) == (due, [], today)
    # the newest index never goes, however old
    lone = [day_index(prefix, date(2020, 1, 1))]
    assert deletable_indices(lone, prefix, 1, NOW) == ([], lone, date(2020, 1, 1))
    assert deletable_indices(lone, prefix, 0, NOW) == ([], lone, date(2020, 1, 1))  # not even with none
    assert deletable_indices(["p-events", "q-events-2020.01.01"], prefix, 1, NOW) == ([], [], None)


class Listed:
    """A client's `indices` holding `names`: listing and deleting, nothing else."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.indices = self

    def get_alias(self, index: str) -> Any:
        return type("Answer", (), {"body": {name: {} for name in self.names}})()

    def delete(self, index: str) -> None:
        self.names.remove(index)


def test_indices_held_back_for_a_clock_ahead_are_one_warning_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    today = NOW.date()
    names = [day_index("p", today - timedelta(days=k)) for k in range(RETENTION + 5)]
    client = Listed(names)
    retention = EventsRetention(client, "p", RETENTION)  # type: ignore[arg-type]
    ahead = NOW + timedelta(days=91)
    with caplog.at_level(logging.DEBUG, logger="finsent.outputs.es_retention"):
        assert retention.run_once(ahead) == names[: RETENTION - 1 : -1]  # past retention from today
        assert retention.run_once(ahead) == []
    assert client.names == names[:RETENTION]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "91.5 days past the start of the newest event index's day (p-events-2026.03.15)" in warnings[0]
    assert f"{RETENTION} indices past elasticsearch.retention_days" in warnings[0], warnings
    assert "Check this host's clock" in warnings[0]
    # just after midnight, before today's first event: yesterday's index is the newest, and the one that
    # expired at midnight waits for today's first event, without a warning
    caplog.clear()
    yesterday = [day_index("p", today - timedelta(days=k)) for k in range(1, RETENTION + 2)]
    client = Listed(yesterday)
    retention = EventsRetention(client, "p", RETENTION)  # type: ignore[arg-type]
    midnight = datetime(2026, 3, 15, 0, 5, tzinfo=UTC)
    with caplog.at_level(logging.DEBUG, logger="finsent.outputs.es_retention"):
        assert retention.run_once(midnight) == yesterday[RETENTION:]
    assert day_index("p", today - timedelta(days=RETENTION)) in client.names
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def worker_settings(url: str, prefix: str, **extra: Any) -> Settings:
    es_settings = ElasticsearchSettings(
        url=url, index_prefix=prefix, number_of_replicas=0, retention_days=RETENTION, **extra
    )
    return Settings(elasticsearch=es_settings.model_dump())


def retention_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == THREAD_NAME}


def test_the_worker_start_deletes_expired_indices_where_the_server_has_no_lifecycle(
    es_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What `finsent run` calls (`build_runner` -> `setup_elasticsearch`): the setup's warning says that
    finsent deletes them itself, and it does at once, until the worker's stop."""
    from finsent.app import setup_elasticsearch

    client = es(es_url)
    family = Family(client, f"w{unique}", datetime.now(UTC).date())
    before = retention_threads()
    stop = threading.Event()
    try:
        with caplog.at_level(logging.INFO):
            assert setup_elasticsearch(worker_settings(es_url, family.prefix), stop) is not None
            started = retention_threads() - before
            assert len(started) == 1
            gone = wait_for(lambda: not indices(client, f"{family.prefix}-events-*") & set(family.old))
    finally:
        stop.set()
    assert gone, indices(client, f"{family.prefix}-events-*")
    assert set(family.kept) <= indices(client, f"{family.prefix}-events-*")
    assert set(family.others) <= indices(client, f"*{family.prefix}*")
    warning = next(
        r.getMessage() for r in caplog.records if "no index lifecycle management" in r.getMessage()
    )
    assert f"finsent deletes the indices {family.prefix}-events-YYYY.MM.DD" in warning, warning
    assert f"{RETENTION} or more days ago (elasticsearch.retention_days)" in warning, warning
    for thread in started:
        thread.join(timeout=5)
        assert not thread.is_alive()  # ended with the worker


def test_nothing_is_deleted_with_the_lifecycle_in_force_or_turned_off(es_url: str, unique: str) -> None:
    """With the server's lifecycle in force the policy deletes; with `lifecycle_enabled=false` the operator
    chose to run without retention (max_age_days bounds the days instead)."""
    from finsent.app import setup_elasticsearch

    client = es(es_url)
    stop = threading.Event()
    on = ElasticsearchSettings(url=es_url, index_prefix=f"n{unique}", retention_days=RETENTION)
    try:
        assert start_events_retention(client, on, stop, lifecycle_in_force=True) is None
        off = on.model_copy(update={"lifecycle_enabled": False})
        assert start_events_retention(client, off, stop, lifecycle_in_force=False) is None
        family = Family(client, f"o{unique}", datetime.now(UTC).date())
        before = retention_threads()
        settings = worker_settings(es_url, family.prefix, lifecycle_enabled=False)
        assert setup_elasticsearch(settings, stop) is not None
        assert retention_threads() - before == set()
        assert set(family.old) <= indices(client, f"{family.prefix}-events-*")
    finally:
        stop.set()
