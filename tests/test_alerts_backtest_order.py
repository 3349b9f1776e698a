"""`finsent backtest` replays the events in the order the live worker got them: `labeled_at`, which the
pipeline writes into every labeled event, else their own time; and a bad date far beyond the bulk of the
file is skipped instead of closing every window.

Found in review: a source labeled 20-25 minutes after publication (a slow RSS feed) had all its events
late in the live worker, but the backtest sorted by event time counted them all, fired an alert live never
fired, and said nothing; with --arrival-order it matched live, but the warning advised leaving the flag out.
And one line dated 2062 in a file without `labeled_at` resolved an alert still firing at the end of the
data, "no messages for 3 windows" 45 minutes after the data ended."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerts.backtest import (
    FAR_FUTURE_S,
    BacktestResult,
    Replayed,
    in_replay_order,
    one_partition,
    run_backtest,
)
from alerts.config import AlertSettings
from alerts.detector import LATE
from alerts.model import Alert, rfc3339
from alerts.synthetic import make_events
from finsent.cli import main
from finsent.commands.alerting import late_warning
from tests.test_alerts_delivery import Clock, MemoryStateStore, Receiver, start_worker, webhook_dispatcher
from tests.test_alerts_worker import labeled_json

Records = list[tuple[int, dict[str, Any]]]
Lag = Callable[[random.Random, str], float]

# the reviewer's scenario: tickers A, B, C at 40 messages a window; A spikes, later B spikes
W = 300
START = 1_700_000_000.0
SLOW = AlertSettings(
    window_s=W, allowed_lateness_s=300, keys=["ticker"], idle_clock="wall", volume_rule=False
)
NORMAL = {k: (40, 0.1) for k in ("ticker:A", "ticker:B", "ticker:C")}
PLANS = (
    [NORMAL] * 30
    + [{**NORMAL, "ticker:A": (40, 0.6)}] * 3
    + [NORMAL] * 10
    + [{**NORMAL, "ticker:B": (40, 0.7)}] * 4
    + [NORMAL] * 20
)


def slow_b(rng: random.Random, key: str) -> float:
    """B's source is labeled 20-25 minutes after publication, the others' within 30 s."""
    return rng.uniform(1200, 1500) if key == "B" else rng.uniform(0, 30)


def on_time(rng: random.Random, key: str) -> float:
    return rng.uniform(0, 30)


def arrivals(lag: Lag) -> list[tuple[float, dict[str, Any]]]:
    """(labeled_at, labeled event) of the scenario, in the order the pipeline wrote them."""
    rng = random.Random(7)
    out = []
    for e in make_events(PLANS, window_s=W, start=START, seed=3):
        labeled_at = e.ts + lag(rng, e.key)
        out.append((labeled_at, {**labeled_json(e), "labeled_at": rfc3339(labeled_at)}))
    out.sort(key=lambda r: r[0])
    return out


def numbered(rows: list[dict[str, Any]]) -> Records:
    return list(enumerate(rows, start=1))


def live(settings: AlertSettings, rows: list[tuple[float, dict[str, Any]]]) -> tuple[list[Alert], float]:
    """What the live worker fires when the events reach it as they were labeled (a poll every 5 s), and
    how many key-events it found late."""
    clock = Clock(START)
    registry = CollectorRegistry()
    dispatcher = webhook_dispatcher(Receiver(clock), clock)
    worker, consumer = start_worker(settings, dispatcher, clock, MemoryStateStore(), registry=registry)
    seen: list[Alert] = []
    worker.on_alert = seen.append
    i, t = 0, START
    end = rows[-1][0] + 3 * (settings.window_s + settings.allowed_lateness_s)
    while t < end:
        t += 5
        batch = []
        while i < len(rows) and rows[i][0] <= t:
            batch.append(json.dumps(rows[i][1]).encode())
            i += 1
        if batch:
            consumer.feed(batch)
        clock.now = t
        worker.step()
    late = registry.get_sample_value("finsent_alert_events_skipped_total", {"reason": "late"}) or 0.0
    return seen, late


def transitions(alerts: list[Alert]) -> list[tuple[Any, ...]]:
    return [(a.status, a.severity, a.key, a.starts_at, a.window_end, a.ends_at) for a in alerts]


def fired(result: BacktestResult) -> list[str]:
    return [a.key for a in result.alerts if a.status == "firing"]


def late_of(result: BacktestResult, key_id: str) -> int:
    return result.late_keys.get(key_id, (0, None))[0]


@pytest.fixture(scope="module")
def slow() -> list[tuple[float, dict[str, Any]]]:
    return arrivals(slow_b)


@pytest.fixture(scope="module")
def slow_live(slow: list[tuple[float, dict[str, Any]]]) -> tuple[list[Alert], float]:
    return live(SLOW, slow)


# ---- labeled_at: the order the live worker got the events ----------------------------------------------


def test_a_slow_source_is_late_in_the_default_replay_as_live(
    slow: list[tuple[float, dict[str, Any]]], slow_live: tuple[list[Alert], float]
) -> None:
    live_alerts, live_late = slow_live
    assert [a.key for a in live_alerts if a.status == "firing"] == ["A"]  # B's spike: all of it late
    b_events = sum(1 for _, r in slow if r["key"] == "B")
    assert live_late == b_events
    result = run_backtest(SLOW, numbered([r for _, r in slow]), route=one_partition)
    assert transitions(result.alerts) == transitions(live_alerts)  # was: B fired too, nothing late
    assert fired(result) == ["A"]
    assert result.outcomes[LATE] == late_of(result, "ticker:B")  # only B's events are late
    # all of B's but those of its last two windows: live, the wall clock closes them after the data
    # ends; the replay has no clock beyond the last labeled_at (docs/alerting.md#backtest)
    assert late_of(result, "ticker:B") >= b_events - 2 * 40
    assert result.with_labeled_at == result.key_events()


def test_the_late_warning_says_the_events_were_late_as_live_not_to_sort_the_file(
    slow: list[tuple[float, dict[str, Any]]],
) -> None:
    result = run_backtest(SLOW, numbered([r for _, r in slow]), route=one_partition)
    warning = late_warning(result, arrival_order=False, allowed_lateness_s=SLOW.allowed_lateness_s)
    assert warning is not None
    late = result.outcomes[LATE]
    assert warning.startswith(
        f"finsent backtest: warning: {late} of {result.key_events()} key-events "
        f"({result.late_share():.0%}) came after their window had closed, as they would have live"
    )
    assert "labeled more than alerts.allowed_lateness_s (300 s) after their window's end" in warning
    assert f"most: ticker:B ({late}, labeled up to 25 min after its time)" in warning
    assert "A slow source needs a larger allowed_lateness_s" in warning
    assert "sort" not in warning and "--arrival-order" not in warning  # was: "leave out --arrival-order"

    in_file_order = run_backtest(SLOW, numbered([r for _, r in slow]), route=one_partition, sort=False)
    assert transitions(in_file_order.alerts) == transitions(result.alerts)  # the file is in arrival order
    warning = late_warning(in_file_order, arrival_order=True, allowed_lateness_s=300)
    assert warning is not None and "in file order (--arrival-order)" in warning
    assert "Without --arrival-order they are replayed in the order they were labeled (labeled_at" in warning


@pytest.mark.parametrize("order", ["newest_first", "by_key", "shuffled"])
def test_an_export_in_any_order_with_labeled_at_replays_as_live(
    order: str, slow: list[tuple[float, dict[str, Any]]], slow_live: tuple[list[Alert], float]
) -> None:
    rows = [r for _, r in slow]
    if order == "newest_first":  # as Kibana exports
        rows = sorted(rows, key=lambda r: r["published_at"], reverse=True)
    elif order == "by_key":  # one partition dumped after another
        rows = sorted(rows, key=lambda r: r["key"])
    else:
        random.Random(1).shuffle(rows)
    in_arrival_order = run_backtest(SLOW, numbered([r for _, r in slow]), route=one_partition)
    result = run_backtest(SLOW, numbered(rows), route=one_partition)
    assert transitions(result.alerts) == transitions(slow_live[0])
    assert dict(result.outcomes) == dict(in_arrival_order.outcomes)
    assert fired(result) == ["A"] and result.outcomes[LATE] == late_of(result, "ticker:B")


def test_with_no_slow_source_the_default_replay_has_no_late_event_and_matches_live() -> None:
    rows = arrivals(on_time)
    live_alerts, live_late = live(SLOW, rows)
    newest_first = sorted((r for _, r in rows), key=lambda r: r["published_at"], reverse=True)
    result = run_backtest(SLOW, numbered(newest_first), route=one_partition)
    assert live_late == 0 and dict(result.outcomes) == {"accepted": len(rows)}
    assert transitions(result.alerts) == transitions(live_alerts)
    assert fired(result) == ["A", "B"]
    assert late_warning(result, arrival_order=False) is None


def test_a_labeler_batch_sharing_one_labeled_at_is_replayed_in_publication_order() -> None:
    """The pipeline writes one labeled_at per batch; a newest-first export lists a batch backwards, and
    in file order its older events (a backlog: a batch spans minutes) came after their window closed."""
    normal = {"ticker:A": (30, 0.1)}
    events = make_events([normal] * 12 + [{"ticker:A": (30, 0.8)}] * 2 + [normal] * 4, window_s=60, seed=2)
    settings = AlertSettings(window_s=60, allowed_lateness_s=0, keys=["ticker"], volume_rule=False)
    rows = []
    for n, e in enumerate(events):  # batches of 100 (over 3 windows), labeled when the batch ends
        batch_end = events[min(len(events) - 1, n // 100 * 100 + 99)].ts
        rows.append({**labeled_json(e), "labeled_at": rfc3339(batch_end + 5)})
    newest_first = list(reversed(rows))
    result = run_backtest(settings, numbered(newest_first))
    assert dict(result.outcomes) == {"accepted": len(rows)}
    assert fired(result) == ["A"]
    assert transitions(result.alerts) == transitions(run_backtest(settings, numbered(rows)).alerts)


# ---- without labeled_at: the events' own time, as before ---------------------------------------------


def _without_labeled_at(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "labeled_at"} for r in rows]


def test_a_file_without_labeled_at_is_replayed_in_event_time_order(
    slow: list[tuple[float, dict[str, Any]]],
) -> None:
    rows = _without_labeled_at([r for _, r in slow])  # in the order B's slow source arrived
    by_time = sorted(rows, key=lambda r: r["published_at"])
    result = run_backtest(SLOW, numbered(rows), route=one_partition)
    assert dict(result.outcomes) == {"accepted": len(rows)}  # nothing to tell it was late: counted
    assert fired(result) == ["A", "B"]
    assert result.alerts == run_backtest(SLOW, numbered(by_time), route=one_partition).alerts
    items = [Replayed(n, replace(_event(), ts=ts, event_id=f"e{n}")) for n, ts in enumerate([5, 3, 5, 1, 3])]
    assert [i.lineno for i in in_replay_order(items, SLOW.max_future_s)] == [3, 1, 4, 0, 2]


def test_in_a_file_where_some_events_have_labeled_at_the_others_count_as_arrived_at_their_time(
    slow: list[tuple[float, dict[str, Any]]],
) -> None:
    """An older labeler wrote no labeled_at: its events arrive at their own time, merged in between."""
    rows = [r for _, r in slow]
    mixed = [r if r["key"] == "B" or n % 2 else _without_labeled_at([r])[0] for n, r in enumerate(rows)]
    random.Random(2).shuffle(mixed)
    result = run_backtest(SLOW, numbered(mixed), route=one_partition)
    assert 0 < result.with_labeled_at < result.key_events()
    assert fired(result) == ["A"] and result.outcomes[LATE] == late_of(result, "ticker:B")  # B still late
    items = [
        Replayed(1, replace(_event(), ts=100.0), 400.0),  # labeled 300 s after its time
        Replayed(2, replace(_event(), ts=200.0)),  # none: as if labeled at 200
        Replayed(3, replace(_event(), ts=150.0), 160.0),
    ]
    assert [i.lineno for i in in_replay_order(items, SLOW.max_future_s)] == [3, 2, 1]


def _event() -> Any:
    return make_events([{"ticker:A": (1, 0.5)}], window_s=60)[0]


# ---- a bad date far beyond the bulk of the file --------------------------------------------------------


def _typo_file() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reviewer's file: A spikes in the last 6 windows (still firing at its end), no labeled_at."""
    normal = {"ticker:A": (60, 0.1), "ticker:B": (60, 0.1)}
    spike = {**normal, "ticker:A": (60, 0.6)}
    events = make_events([normal] * 40 + [spike] * 6, window_s=900, start=1_781_000_000.0, seed=1)
    rows = _without_labeled_at([labeled_json(e) for e in events])
    bad = {**rows[5], "published_at": "2062-06-15T12:00:00Z", "event_id": "typo|ticker:B", "id": "typo"}
    return rows, {**bad, "key": "B"}


TYPO_SETTINGS = AlertSettings(keys=["ticker"], volume_rule=False)


@pytest.mark.parametrize("where", ["last", "first", "middle"])
def test_one_line_dated_decades_ahead_is_skipped_and_changes_no_alert(where: str) -> None:
    rows, bad = _typo_file()
    clean = run_backtest(TYPO_SETTINGS, numbered(rows), route=one_partition)
    assert [(a.key, a.status) for a in clean.alerts] == [("A", "firing")]  # firing at the end of the data
    at = {"last": len(rows), "first": 0, "middle": len(rows) // 2}[where]
    with_typo = [*rows[:at], bad, *rows[at:]]
    result = run_backtest(TYPO_SETTINGS, numbered(with_typo), route=one_partition)
    assert result.alerts == clean.alerts  # was: resolved "no messages for 3 windows" 45 min after the end
    assert result.outcomes == clean.outcomes
    ((lineno, reason),) = result.invalid
    assert lineno == at + 1 and reason.startswith("far_future: dated 2062-06-15T12:00:00Z, well after")


def test_a_far_future_line_is_reported_as_skipped_by_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FINSENT_") and not name.upper().startswith("FINSENT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FINSENT_CONFIG", "")
    rows, bad = _typo_file()
    path = tmp_path / "typo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, bad]), encoding="utf-8")
    args = ["backtest", str(path), "--set", "keys=[ticker]", "--set", "volume_rule=false"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "ticker:A  2026-06-09T20:00:00Z -> still firing at the end of the file" in out
    assert "RESOLVED" not in out and f"invalid 1 of {len(rows) + 1} lines" in out
    assert f"line {len(rows) + 1}: skipped (far_future: dated 2062-06-15T12:00:00Z" in err


def test_data_after_a_pause_of_days_is_no_bad_date() -> None:
    """The bulk of the file is its 1st to 99th percentile; a time is far ahead only beyond the bulk's end
    by a day and by as long as the bulk spans: a month of data resumed after a long weekend is kept."""
    normal = {"ticker:A": (50, 0.1)}
    first = make_events([normal] * 60, window_s=3600, seed=1)
    later = make_events([normal] * 3, window_s=3600, seed=2, start=first[-1].ts + 4 * 86400)
    rows = _without_labeled_at([labeled_json(e) for e in first + later])  # 3 of 63 hours: ~5 % after
    result = run_backtest(AlertSettings(keys=["ticker"], volume_rule=False), numbered(rows))
    assert not result.invalid and dict(result.outcomes) == {"accepted": len(rows)}
    assert FAR_FUTURE_S == 86_400


def test_an_event_dated_decades_ahead_of_its_labeled_at_is_clamped_as_live_not_skipped() -> None:
    rows, bad = _typo_file()
    with_clock = [{**r, "labeled_at": r["published_at"]} for r in rows]
    bad = {**bad, "labeled_at": rows[-1]["published_at"]}  # a source's clock off, the labeler's right
    clean = run_backtest(TYPO_SETTINGS, numbered(with_clock), route=one_partition)
    result = run_backtest(TYPO_SETTINGS, numbered([*with_clock, bad]), route=one_partition)
    assert not result.invalid and result.key_events() == clean.key_events() + 1
    assert result.alerts == clean.alerts  # counted at labeled_at, as the worker clamps it
