"""`finsent backtest` reads its file as a stream: a 200,000-event export held every decoded line, the parsed
events and a sorted copy at once (741 MB), so a month of events did not fit a laptop. The file is now read
twice, once for its kind and once for its events, and only the packed events are held for the sort."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts import backtest
from alerts.backtest import (
    DOCUMENTS,
    LABELED,
    RAW,
    FileKind,
    JsonlFile,
    Replayed,
    UnreadableFile,
    decoded,
    documents_as_events,
    file_kind,
    in_replay_order,
    parse_records,
    run_backtest,
)
from alerts.config import AlertSettings
from alerts.events import MAX_TS, LabeledEvent
from alerts.model import rfc3339
from alerts.synthetic import make_events
from finsent.cli import main
from finsent.commands import alerting
from tests.test_alerts_worker import labeled_json

W = 60
BASE = AlertSettings(window_s=W, allowed_lateness_s=0, volume_rule=False)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from the caller's environment (the backtest reads FINSENT_* as `finsent alerts` does)."""
    monkeypatch.setenv("FINSENT_CONFIG", "")
    for name in list(os.environ):
        if name.upper().startswith("FINSENT_") and not name.upper().startswith("FINSENT_TEST_"):
            monkeypatch.delenv(name)


def spike_lines(seed: int = 21) -> list[str]:
    normal = {"ticker:ACME": (60, 0.1), "topic:Earnings": (80, 0.2)}
    spike = {"ticker:ACME": (60, 0.6), "topic:Earnings": (80, 0.2)}
    events = make_events([normal] * 12 + [spike] * 3 + [normal] * 6, seed=seed, window_s=W)
    return [json.dumps(labeled_json(e)) for e in events]


class Pulled:
    """An iterator over `items` that counts how many were taken from it."""

    def __init__(self, items: list[Any]) -> None:
        self.items = iter(items)
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self.items)
        self.taken += 1
        return item


class Tracked(dict[str, Any]):
    """A decoded line that counts how many of its kind are alive at once (CPython frees on the last
    reference), to show that the records are let go as they are read."""

    live = 0
    peak = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Tracked.live += 1
        Tracked.peak = max(Tracked.peak, Tracked.live)

    def __del__(self) -> None:
        Tracked.live -= 1


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> type[Tracked]:
    """Every object the backtest decodes from a file is a Tracked one."""
    Tracked.live = Tracked.peak = 0
    unwrap = backtest.unwrapped_hit

    def tracked_hit(obj: Any) -> Any:
        obj = unwrap(obj)
        return Tracked(obj) if isinstance(obj, dict) else obj

    monkeypatch.setattr(backtest, "unwrapped_hit", tracked_hit)
    return Tracked


# ---- nothing is taken before it is needed ------------------------------------------------------------


def test_decoding_parsing_and_fanning_out_take_one_record_at_a_time() -> None:
    lines = spike_lines()[:10]
    source = Pulled(list(enumerate(lines, start=1)))
    records = decoded(source)
    assert source.taken == 0
    lineno, obj = next(records)
    assert source.taken == 1 and lineno == 1 and obj["key"] in ("ACME", "Earnings")
    invalid: list[tuple[int, str]] = []
    events = parse_records(BASE, records, invalid)
    next(events)
    assert source.taken == 2
    doc = {k: v for k, v in json.loads(lines[0]).items() if k not in ("key_type", "key", "event_id")}
    docs = Pulled([(1, {**doc, "tickers": ["A", "B"]}), (2, doc)])
    fanned = documents_as_events(docs, ["ticker", "all"])
    assert [e["key"] for _, e in [next(fanned), next(fanned), next(fanned)]] == ["A", "B", "*"]
    assert docs.taken == 1


@pytest.mark.parametrize("sort", [True, False])
def test_a_replay_holds_no_decoded_record(sort: bool, tracked: type[Tracked]) -> None:
    lines = spike_lines()
    records = ((n, backtest.decode_line(line)) for n, line in enumerate(lines, start=1))
    result = run_backtest(BASE, records, sort=sort)
    assert dict(result.outcomes) == {"accepted": len(lines)}
    assert tracked.peak <= 2 and tracked.live == 0  # one being parsed, one being decoded


@pytest.mark.parametrize("form", ["labeled", "documents", "raw"])
def test_the_command_holds_no_decoded_line_of_any_kind_of_file(
    form: str, tmp_path: Path, tracked: type[Tracked], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{form}.jsonl"
    rows = [json.loads(line) for line in spike_lines()]
    if form == "documents":
        rows = [{k: v for k, v in r.items() if k not in ("event_id", "key_type", "key")} for r in rows]
        rows = [{"_index": "finsent-events-x", "_id": r.pop("id"), "_source": r} for r in rows]
    elif form == "raw":
        rows = [{k: r[k] for k in ("id", "source", "text", "published_at")} for r in rows[:200]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = ["backtest", str(path), "--set", f"window_s={W}", "--set", "allowed_lateness_s=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"invalid 0 of {len(rows)} lines" in out
    assert tracked.peak <= 3 and tracked.live == 0


# ---- the first pass: which kind of file --------------------------------------------------------------


def test_the_kind_of_a_file_of_labeled_events_is_told_from_its_first_labeled_line() -> None:
    lines = ["not json", json.dumps({"id": "r", "text": "raw"}), *spike_lines()[:5]]
    source = Pulled(list(enumerate(lines, start=1)))
    assert file_kind(source) == FileKind(LABELED) and source.taken == 3


def test_a_labeled_event_anywhere_makes_the_file_labeled_escaped_keys_too() -> None:
    doc = {"id": "d", "text": "x", "sentiment": "negative", "published_at": 1.7e9}
    raw = {"id": "r", "text": "x", "source": "s"}
    labeled = {"key_type": "all", "key": "*", "sentiment": "neutral", "id": "e", "published_at": 1.7e9}
    escaped = json.dumps(labeled).replace("key_type", "key\\u005ftype")
    assert json.loads(escaped) == labeled  # the same object, with no "key_type" in the line
    for later in (json.dumps(labeled), escaped):
        lines = [json.dumps(doc)] * 3 + [json.dumps(raw), later]
        assert file_kind(enumerate(lines, start=1)).kind == LABELED
    assert file_kind(enumerate([json.dumps(raw), json.dumps(doc), json.dumps(raw)])).kind == DOCUMENTS
    sentiment_escaped = json.dumps(doc).replace('"sentiment"', '"sentim\\u0065nt"')
    assert file_kind(enumerate([json.dumps(raw), sentiment_escaped])).kind == DOCUMENTS
    assert file_kind(enumerate([json.dumps(raw), "not json"])).kind == RAW
    assert file_kind(iter([])) == FileKind(LABELED)  # nothing to label: no model is loaded


def test_raw_messages_are_counted_in_the_first_pass_until_a_document_is_seen() -> None:
    raw = json.dumps({"id": "r", "text": "x", "source": "s"})
    doc = json.dumps({"id": "d", "text": "x", "sentiment": "negative"})
    asked: list[int] = []

    def count(lineno: int, obj: Any) -> bool:
        asked.append(lineno)
        return lineno % 2 == 1

    assert file_kind(enumerate([raw] * 5, start=1), count) == FileKind(RAW, 3)
    asked.clear()
    assert file_kind(enumerate([raw, raw, doc, raw], start=1), count).kind == DOCUMENTS
    assert asked == [1, 2]


def test_the_second_pass_counts_every_line_of_a_file_the_first_pass_left_early(tmp_path: Path) -> None:
    path = tmp_path / "labeled.jsonl"
    lines = spike_lines()
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")  # blank lines are not counted
    source = JsonlFile(path)
    assert file_kind(source).kind == LABELED and source.lines == 1
    assert [n for n, _ in source][:3] == [1, 3, 5] and source.lines == len(lines)


# ---- the sort: packed events ---------------------------------------------------------------------------


def _event(ts: float, **changes: Any) -> LabeledEvent:
    fields: dict[str, Any] = {
        "event_id": "m1|ticker:ACME",
        "key_type": "ticker",
        "key": "ACME",
        "ts": ts,
        "negative": True,
        "negative_prob": 0.8125,
        "text": "ACME falls",
        "url": "https://example.com/1",
        "message_id": "m1",
    }
    return LabeledEvent(**{**fields, **changes})


@pytest.mark.parametrize(
    "item",
    [
        Replayed(7, _event(1.7e9), 1.7e9 + 1),
        Replayed(1, _event(0.0, text="", url="", message_id=""), None),
        Replayed(2**40, _event(MAX_TS, text="Ölpreis \x00 fällt \U0001f4c9 " * 50, key="Δ"), 0.0),
        Replayed(3, _event(-0.0, text="half an emoji \ud83d", negative=False, negative_prob=0.0)),
    ],
    ids=["plain", "empty-strings", "unicode-nul-long", "lone-surrogate"],
)
def test_a_packed_event_unpacks_to_the_same_event(item: Replayed) -> None:
    packed = item.pack(seq=5)
    assert Replayed.unpack(packed) == item
    strings = [v for v in dataclasses.astuple(item.event) if isinstance(v, str)]
    assert len(packed) <= 100 + sum(len(v.encode("utf-8", "surrogatepass")) for v in strings)


def test_every_field_of_the_event_is_kept_through_the_sort() -> None:
    """The sort packs the events: a field it did not know of (LabeledEvent grows) would come back as its
    default, and the detector would replay sorted files without it."""
    assert not backtest._NOT_PACKED  # else the sort holds the objects: the memory this file is about
    values = {"str": "some value", "float": 0.25, "bool": True}
    fields = dataclasses.fields(LabeledEvent)
    event = LabeledEvent(**{f.name: values[str(f.type)] for f in fields})
    assert all(getattr(event, f.name) != f.default for f in fields if f.default is not dataclasses.MISSING)
    item = Replayed(1, event, 2.0)
    assert Replayed.unpack(item.pack(seq=0)) == item


def test_packed_events_sort_as_the_stable_sort_by_arrival_then_time() -> None:
    rng = random.Random(5)
    times = [0.0, -0.0, 5e-324, 1e-300, 1.0, 1.7e9, 1.7e9 + 0.5, MAX_TS]
    items = []
    for n in range(400):
        ts = rng.choice(times) if n % 3 else rng.uniform(0, 2e9)
        labeled_at = rng.choice([None, ts, ts - 3600, rng.uniform(0, 2e9)])
        items.append(Replayed(n, _event(ts, event_id=f"e{n}"), labeled_at))
    expected = sorted(items, key=Replayed.order)  # labeled_at, else its own time; then its own time
    assert list(in_replay_order(iter(items), BASE.max_future_s)) == expected


def test_an_event_field_that_cannot_be_packed_has_the_events_sorted_as_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [Replayed(n, _event(float(ts), event_id=f"e{n}")) for n, ts in enumerate([3, 1, 2, 1])]
    monkeypatch.setattr(backtest, "_NOT_PACKED", ("tags",))
    with pytest.raises(TypeError, match="tags"):
        items[0].pack(0)
    assert [i.lineno for i in in_replay_order(items, 300)] == [1, 3, 2, 0]


def test_the_per_key_series_are_kept_only_when_asked_for() -> None:
    records = [(n, json.loads(line)) for n, line in enumerate(spike_lines(), start=1)]
    with_series = run_backtest(BASE, records)
    without = run_backtest(BASE, records, trace=False)
    assert with_series.stats and not without.stats
    assert without.alerts == with_series.alerts and without.outcomes == with_series.outcomes


# ---- what the command says, read as a stream ---------------------------------------------------------


def _gzip_of_labeled_lines(count: int) -> bytes:
    rows = [json.loads(line) for line in spike_lines()[:count]]
    rng = random.Random(2)
    for row in rows:  # texts that do not compress to nothing, so the file is read in many pieces
        row["text"] = "".join(rng.choice("abcdefghij ") for _ in range(120))
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def _only_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if not x.startswith("finsent backtest: alerts settings")]
    return line


def test_a_gzip_file_cut_short_after_its_first_labeled_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first pass stops at the first labeled line: the cut is found by the second one, mid-replay."""
    whole = _gzip_of_labeled_lines(2000)
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert file_kind(JsonlFile(path)).kind == LABELED  # the first pass does not see it
    assert main(["backtest", str(path)]) == 2
    line = _only_line(capsys.readouterr().err)
    assert line.startswith(f"finsent backtest: {path}: cannot read it (Compressed file ended")


def test_a_gzip_file_with_corrupt_data_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Corrupt deflate data is zlib.error, neither OSError nor EOFError: it was a traceback."""
    whole = _gzip_of_labeled_lines(2000)
    broken = None
    for at in range(len(whole) // 3, len(whole), 997):
        candidate = whole[:at] + b"\x07" * 64 + whole[at + 64 :]
        try:
            gzip.decompress(candidate)
        except zlib.error:
            broken = candidate
            break
        except OSError:
            continue
    assert broken is not None
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(broken)
    with pytest.raises(UnreadableFile) as exc:
        list(JsonlFile(path))
    assert isinstance(exc.value.__cause__, zlib.error)
    assert main(["backtest", str(path)]) == 2
    line = _only_line(capsys.readouterr().err)
    assert line.startswith(f"finsent backtest: {path}: cannot read it (Error -3 while decompressing")


def test_raw_progress_counts_the_messages_to_label_not_the_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerting, "RAW_PROGRESS_S", 0.0)  # a line before every chunk of 64
    start = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
    rows = [
        json.dumps(
            {"id": f"m{i}", "source": "s", "text": f"ACME order {i}", "published_at": rfc3339(start + i)}
        )
        for i in range(130)
    ]
    rows[10:10] = ["not json", json.dumps({"id": "undated", "source": "s", "text": "ACME"})]
    stream = tmp_path / "raw.jsonl"
    stream.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["backtest", str(stream), "--set", "keys=[source]"]) == 0
    out, err = capsys.readouterr()
    assert "labeling 132 raw messages with the model" in err
    assert "finsent backtest: labeled 64 of 130 messages (" in err and "labeled 128 of 130" in err
    assert "line 11: skipped (invalid_json" in err and "line 12: skipped (no_published_at" in err
    assert "key-events: accepted 130; invalid 2 of 132 lines" in out
