"""`finsent backtest`'s replay as the live worker would see it: any file order, a clock from `labeled_at`,
one detector per labeled-topic partition, and the text, chart and time helpers of its output."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.backtest import (
    DEFAULT_PARTITIONS,
    LATE_WARN_SHARE,
    BacktestResult,
    Replayed,
    in_replay_order,
    run_backtest,
    transition_time,
)
from alerts.config import AlertSettings
from alerts.detector import LATE, WindowStat
from alerts.events import MAX_TS
from alerts.model import RULE_SHARE, Alert, rfc3339, utc_datetime
from alerts.plot import GAP, alert_span, figure, safe_name, with_gaps
from alerts.synthetic import make_events
from finsent.commands.alerting import (
    NO_PUBLISHED_AT,
    _decoded,
    _raw_to_labeled,
    alert_lines,
    footer,
    late_warning,
    partition_router,
)
from finsent.outputs.partitioner import CachedKeyPartitioner
from finsent.settings import Settings
from tests.test_alerts_worker import labeled_json

W = 60
BASE = AlertSettings(window_s=W, allowed_lateness_s=0, volume_rule=False)
REPO = Path(__file__).resolve().parent.parent

Records = list[tuple[int, dict[str, Any]]]


def as_records(events: list[Any]) -> Records:
    """Labeled events as the pipeline writes them (`labeled_at` one second after `published_at`)."""
    return [(n, labeled_json(e)) for n, e in enumerate(events, start=1)]


def spike_records(seed: int = 1) -> Records:
    normal = {"ticker:A": (50, 0.1), "ticker:B": (50, 0.1)}
    spike = {"ticker:A": (50, 0.5), "ticker:B": (50, 0.1)}
    return as_records(make_events([normal] * 20 + [spike] * 3 + [normal] * 15, window_s=W, seed=seed))


def firing(result: BacktestResult) -> list[str]:
    return [a.key for a in result.alerts if a.status == "firing"]


# ---- order ----------------------------------------------------------------------------------------------


def _reordered(records: Records, order: str) -> Records:
    if order == "newest_first":  # as Kibana exports
        return sorted(records, key=lambda r: r[1]["published_at"], reverse=True)
    if order == "by_key":  # one partition dumped after another
        return sorted(records, key=lambda r: r[1]["key"])
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    return shuffled


@pytest.mark.parametrize("order", ["newest_first", "by_key", "shuffled"])
def test_a_file_in_any_order_gives_the_alerts_of_the_time_ordered_file(order: str) -> None:
    records = spike_records()
    expected = run_backtest(BASE, records)
    assert firing(expected) == ["A"]
    got = run_backtest(BASE, _reordered(records, order))
    assert dict(got.outcomes) == {"accepted": len(records)}  # none late
    assert got.alerts == expected.alerts


def test_arrival_order_replays_the_file_as_it_is_and_the_late_events_are_warned_of() -> None:
    records = _reordered(spike_records(), "newest_first")
    result = run_backtest(BASE, records, sort=False)
    assert result.outcomes[LATE] > 0.9 * len(records) and not result.alerts
    assert result.late_share() > LATE_WARN_SHARE
    warning = late_warning(result, arrival_order=True)
    assert warning is not None and f"{result.outcomes[LATE]} of {len(records)} key-events" in warning
    assert late_warning(run_backtest(BASE, records), arrival_order=False) is None


def test_events_of_the_same_time_keep_their_file_order() -> None:
    event = make_events([{"ticker:A": (1, 0.5)}], window_s=W)[0]
    items = [Replayed(n, replace(event, event_id=f"e{n}")) for n in (3, 1, 2)]
    items.insert(1, Replayed(9, replace(event, event_id="earlier", ts=event.ts - 1)))
    assert [i.lineno for i in in_replay_order(items, BASE.max_future_s)] == [9, 3, 1, 2]


# ---- clock ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sort", [False, True])
def test_an_event_dated_far_ahead_of_its_labeled_at_is_counted_at_labeled_at(sort: bool) -> None:
    records = spike_records()
    ts = datetime.fromisoformat(records[50][1]["published_at"]).timestamp()
    ahead = dict(records[50][1], event_id="ahead|ticker:B", key="B", id="ahead", text="ahead of time")
    ahead["published_at"] = rfc3339(ts + 20 * 3600)  # a source clock 20 h fast; labeled_at stays ts + 1
    records.insert(51, (0, ahead))
    result = run_backtest(BASE, records, sort=sort)
    assert dict(result.outcomes) == {"accepted": len(records)}  # not one late (was: all after it)
    assert firing(result) == ["A"]
    last = max(datetime.fromisoformat(r[1]["published_at"]).timestamp() for r in records if r[0])
    assert max(s.window_end for s in result.stats) <= last // W * W + W  # no window 20 h later


def test_without_labeled_at_a_quiet_stretch_is_not_taken_for_a_clock_running_ahead() -> None:
    normal = {"ticker:A": (50, 0.1)}
    first = make_events([normal] * 10, window_s=W, seed=1)
    later = make_events([normal] * 10, window_s=W, seed=2, start=first[0].ts + 3 * 86400)
    records = [(n, {k: v for k, v in r.items() if k != "labeled_at"}) for n, r in as_records(first + later)]
    result = run_backtest(BASE, records)
    assert dict(result.outcomes) == {"accepted": 1000}
    starts = sorted({s.window_start for s in result.stats})
    assert len(starts) == 20 and starts[-1] - starts[0] > 3 * 86400  # counted at their own times


# ---- partitions -----------------------------------------------------------------------------------------


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(6))


def test_keys_are_routed_to_the_partition_the_pipeline_producer_writes_them_to() -> None:
    route = partition_router(6)
    producer = CachedKeyPartitioner()
    keys = [f"ticker:K{i}" for i in range(50)] + ["all:*", "topic:Earnings", "source:newswire"]
    for key in keys:
        assert route(key) == producer.partition("finsent.labeled", None, key.encode(), None, None, _Cluster())
    assert len({route(k) for k in keys}) == 6


def test_the_default_partition_count_is_the_deployed_labeled_topic_s() -> None:
    docs = yaml.safe_load_all((REPO / "deploy/k8s/kafka-topics.yaml").read_text(encoding="utf-8"))
    labeled = Settings.model_fields["pipeline"].default.labeled_topic
    (topic,) = [d for d in docs if d and d["metadata"]["name"] == labeled]
    assert topic["spec"]["partitions"] == DEFAULT_PARTITIONS


def test_each_partition_has_a_detector_of_its_own_as_live() -> None:
    # 20 keys, one spiking: live, K0 is corrected only with the keys of its partition; in one detector
    # with all 20 it is not significant (Bonferroni over the family of keys closing together)
    settings = AlertSettings(window_s=W, allowed_lateness_s=0, correction="bonferroni", volume_rule=False)
    normal = {f"ticker:K{i}": (40, 0.1) for i in range(20)}
    spike = {**normal, "ticker:K0": (40, 0.3)}
    records = as_records(make_events([normal] * 10 + [spike] + [normal] * 3, window_s=W, seed=0))
    route = partition_router(6)
    got = run_backtest(settings, records, route=route)
    alone: list[Alert] = []
    for p in range(6):
        alone += run_backtest(settings, [r for r in records if route(f"ticker:{r[1]['key']}") == p]).alerts
    assert got.alerts == sorted(alone, key=transition_time)
    assert firing(got) == ["K0"]
    assert firing(run_backtest(settings, records)) == []  # what one detector for all keys said


def test_a_file_dumped_partition_by_partition_has_no_late_events_in_arrival_order() -> None:
    route = partition_router(6)
    a, b = (
        "ticker:K0",
        next(f"ticker:K{i}" for i in range(1, 50) if route(f"ticker:K{i}") != route("ticker:K0")),
    )
    events = make_events([{a: (30, 0.1), b: (30, 0.1)}] * 10, window_s=W, seed=4)
    records = sorted(as_records(events), key=lambda r: r[1]["key"] != a.split(":")[1])  # all of a, then b
    assert dict(run_backtest(BASE, records, route=route, sort=False).outcomes) == {"accepted": 600}
    assert run_backtest(BASE, records, sort=False).outcomes[LATE] > 0


# ---- raw messages ---------------------------------------------------------------------------------------


def test_a_raw_message_without_published_at_is_skipped_not_dated_now() -> None:
    skipped: list[tuple[int, str]] = []
    records: list[tuple[int, Any]] = [
        (1, {"id": "a", "text": "x", "source": "s", "published_at": "2024-01-01T00:00:00Z"}),
        (2, {"id": "b", "text": "y", "source": "s"}),
        (3, {"text": "no source"}),
    ]
    messages = _decoded(records, datetime.now(tz=UTC), skipped)
    assert [n for n, _ in messages] == [1]
    assert skipped[0] == (2, NO_PUBLISHED_AT) and skipped[1][0] == 3 and skipped[1][1].startswith("schema")


def test_a_raw_message_the_model_knows_no_word_of_is_skipped_as_the_pipeline_dead_letters_it() -> None:
    from inference.labeler import load_labeler

    skipped: list[tuple[int, str]] = []
    at = "2024-01-01T00:00:00Z"
    records: list[tuple[int, Any]] = [
        (1, {"id": "a", "text": "\U0001f680\U0001f680", "source": "s", "published_at": at}),
        (2, {"id": "b", "text": "Shares of ACME plunge", "source": "s", "published_at": at}),
    ]
    events = list(_raw_to_labeled(records, AlertSettings(), load_labeler(threads=1), skipped))
    assert {n for n, _ in events} == {2}
    assert (
        len(skipped) == 1
        and skipped[0][0] == 1
        and skipped[0][1].startswith("unreadable: the model knows no")
    )


# ---- text output ----------------------------------------------------------------------------------------


def _alert(**changes: Any) -> Alert:
    base = Alert.from_dict(
        {
            "rule": RULE_SHARE,
            "key_type": "ticker",
            "key": "A",
            "status": "firing",
            "severity": "critical",
            "starts_at": 1_700_000_000.0,
            "window_end": 1_700_000_060.0,
            "negative_share": 0.5,
            "baseline_share": 0.1,
            "count": 50,
            "negative_count": 25,
            "summary": "Negative share for ticker A is 50% vs baseline 10%",
        }
    )
    return replace(base, **changes)


def test_a_firing_line_says_when_the_same_run_resolves_it_and_a_resolve_reads_as_one() -> None:
    first, second = _alert(), _alert(starts_at=1_700_010_000.0, window_end=1_700_010_060.0)
    done = first.resolved(1_700_000_300.0)
    fired, resolved, still = alert_lines([first, done, second])
    assert "-> 2023-11-14T22:18:20Z (resolved)" in fired and "still firing" not in fired
    assert resolved.startswith("RESOLVED") and "is back to normal" in resolved and "is 50% vs" not in resolved
    assert "still firing at the end of the file" in still


def test_the_footer_counts_key_events_and_lines_apart() -> None:
    result = BacktestResult(alerts=[_alert(), _alert().resolved(1_700_000_300.0)])
    result.outcomes.update({"accepted": 30, "ignored": 10})
    text = footer(result, lines=20, invalid=2)
    assert text == "1 alerts fired, 1 resolved; key-events: accepted 30, ignored 10; invalid 2 of 20 lines"


def test_an_escalation_is_counted_and_read_as_such_not_as_another_alert() -> None:
    opened = _alert(severity="warning")
    escalated = replace(
        opened, severity="critical", escalated_from="warning", window_end=opened.window_end + 60
    )
    result = BacktestResult(alerts=[opened, escalated, escalated.resolved(1_700_000_300.0)])
    assert footer(result, lines=20, invalid=0).startswith("1 alerts fired, 1 escalated, 1 resolved; ")
    line = alert_lines(result.alerts)[1]
    assert (
        line.startswith("FIRING   critical") and "Escalated from warning to critical: Negative share" in line
    )


# ---- charts ---------------------------------------------------------------------------------------------


def _stat(start: int, share: float = 0.1) -> WindowStat:
    return WindowStat(
        "ticker", "A", start, start + W, 50, 50 * share, share, 0.1, 5.0, 0.5, None, False, False
    )


def test_chart_lines_break_where_the_key_had_no_windows() -> None:
    t0 = 1_700_000_040
    xs, points = with_gaps([_stat(t0), _stat(t0 + W), _stat(t0 + 10 * W)])
    assert [p is GAP for p in points] == [False, False, True, False]
    assert xs[2] == utc_datetime(t0 + 2 * W)
    assert with_gaps([_stat(t0), _stat(t0 + W)])[1].count(GAP) == 0


def test_an_alert_firing_in_the_last_window_spans_that_window() -> None:
    t0 = 1_700_000_040
    series = [_stat(t0), _stat(t0 + W, 0.5)]
    start, stop = alert_span(_alert(starts_at=float(t0 + W), window_end=float(t0 + 2 * W)), series)
    assert (stop - start).total_seconds() == W
    done = _alert(starts_at=float(t0), window_end=float(t0 + W)).resolved(float(t0 + 4 * W))
    assert alert_span(done, series)[1] == utc_datetime(t0 + 4 * W)


def test_keys_that_read_the_same_as_file_names_get_charts_of_their_own() -> None:
    names = {safe_name(k) for k in ("ticker:A/B", "ticker:A_B", "ticker:A B", "x" * 120, "x" * 121)}
    assert len(names) == 5
    assert safe_name("ticker:ACME").startswith("ticker_ACME-")


def test_the_chart_says_its_times_are_utc() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    t0 = 1_700_000_040
    fig = figure("ticker:A", [_stat(t0), _stat(t0 + W)], [_alert(starts_at=float(t0))])
    try:
        assert "UTC" in fig.axes[1].get_xlabel()
    finally:
        plt.close(fig)


# ---- times past the year 9999 ---------------------------------------------------------------------------


def test_a_window_ending_after_the_year_9999_is_written_without_raising() -> None:
    end = MAX_TS + W  # the window of the last accepted event time ends in year 10000
    assert rfc3339(end) == "9999-12-31T23:59:59Z"
    assert rfc3339(float("inf")) == "9999-12-31T23:59:59Z" and rfc3339(-1e300) == "0001-01-01T00:00:00Z"
    doc = _alert(starts_at=MAX_TS - 30, window_end=end).resolved(end + W).es_document()
    assert doc["window_end"] == doc["ends_at"] == "9999-12-31T23:59:59Z"
