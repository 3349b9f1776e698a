"""`finsent backtest`: replay labeled events from a file, print alerts, draw a chart per alerted key."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerts.backtest import run_backtest
from alerts.config import AlertSettings
from alerts.events import MAX_TS, LabeledEvent
from alerts.model import rfc3339
from alerts.plot import safe_name
from alerts.synthetic import make_events
from finsent.cli import main
from finsent.commands import alerting
from finsent.commands.alerting import (
    _model_settings,
    backtest_base_settings,
    backtest_settings,
    changed_settings,
)
from tests.test_alerts_worker import labeled_json

W = 60


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from the caller's environment (the backtest reads FINSENT_* as `finsent alerts` does).
    `--config` makes load_settings set FINSENT_CONFIG: setting it first has monkeypatch remove it again."""
    monkeypatch.setenv("FINSENT_CONFIG", "")
    for name in list(os.environ):
        if name.upper().startswith("FINSENT_") and not name.upper().startswith("FINSENT_TEST_"):
            monkeypatch.delenv(name)


def write_stream(path: Path) -> None:
    normal = {"ticker:ACME": (60, 0.1), "topic:Earnings": (80, 0.2)}
    spike = {"ticker:ACME": (60, 0.6), "topic:Earnings": (80, 0.2)}
    events = make_events([normal] * 12 + [spike] * 3 + [normal] * 6, seed=21, window_s=W)
    lines = [json.dumps(labeled_json(e)) for e in events]
    lines.insert(5, "this is not json")
    lines.insert(9, json.dumps({"key_type": "ticker", "key": "X"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("fmt", ["png", "html"])
def test_backtest_prints_alerts_and_draws_charts(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)
    plots = tmp_path / "plots"
    args = ["backtest", str(stream), "--plots", str(plots), "--format", fmt]
    args += ["--set", f"window_s={W}", "--set", "allowed_lateness_s=0", "--set", "volume_rule=false"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if "ticker:ACME" in line]
    assert [line.split()[0] for line in lines] == ["FIRING", "RESOLVED"]
    assert "negative_share" in lines[0] and "vs baseline" in lines[0]
    assert "1 alerts fired, 1 resolved" in out
    assert "line 6: skipped (invalid_json" in err and "line 10: skipped (schema" in err
    (chart,) = plots.iterdir()
    assert chart.name == f"{safe_name('ticker:ACME')}.{fmt}" and chart.name.startswith("ticker_ACME-")
    data = chart.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    else:
        assert b"data:image/png;base64," in data and b"negative_share" in data


def test_a_line_nested_too_deep_is_skipped_as_invalid_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)
    with stream.open("a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")  # json.loads raises RecursionError, not ValueError
    last = len(stream.read_text(encoding="utf-8").splitlines())
    assert main(["backtest", str(stream), "--set", f"window_s={W}"]) == 0
    assert f"line {last}: skipped (invalid_json" in capsys.readouterr().err


def test_backtest_json_output_and_yaml_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)
    config = tmp_path / "finsent.yaml"
    config.write_text(f"alerts:\n  window_s: {W}\n  allowed_lateness_s: 0\n  keys: [topic]\n")
    assert main(["backtest", str(stream), "--config", str(config), "--json"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == ""  # only the topic key is watched and it never spikes


def test_backtest_settings_overrides_are_validated(tmp_path: Path) -> None:
    s = backtest_settings(None, ["alerts.min_effect=0.2", "notifiers.max_retries=1"])
    assert s.min_effect == 0.2 and s.notifiers.max_retries == 1
    with pytest.raises(ValueError):
        backtest_settings(None, ["min_effect=2"])
    assert main(["backtest", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.parametrize("published_at", ["NaN", "Infinity", "-Infinity", "-1e400", "1e20", "1e300"])
def test_backtest_reports_a_far_away_or_non_finite_time_as_invalid(published_at: str) -> None:
    # one such line used to crash the backtest (NaN, inf) or hang it (1e20 with the default window)
    line = '{"event_id": "b", "key_type": "all", "key": "*", "sentiment": "negative", "published_at": %s}'
    records = [
        (1, {"event_id": "a", "key_type": "all", "key": "*", "sentiment": "neutral", "published_at": 1.7e9}),
        (2, json.loads(line % published_at)),
        (
            3,
            {
                "event_id": "c",
                "key_type": "all",
                "key": "*",
                "sentiment": "neutral",
                "published_at": 1.7e9 + 100,
            },
        ),
    ]
    result = run_backtest(AlertSettings(), records)
    assert dict(result.outcomes) == {"accepted": 2}
    assert [(n, why.split(":")[0]) for n, why in result.invalid] == [(2, "schema")]


# ---- settings: as `finsent alerts` reads them, then --set ------------------------------------------------


def test_backtest_settings_come_from_the_environment_and_the_settings_file_then_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "finsent.yaml"
    config.write_text("alerts:\n  min_effect: 0.2\n  critical_effect: 0.3\n")
    monkeypatch.setenv("FINSENT_CONFIG", str(config))
    monkeypatch.setenv("FINSENT_ALERTS__WINDOW_S", "120")
    s = backtest_settings(None, [])
    assert (s.window_s, s.min_effect) == (120, 0.2)
    s = backtest_settings(None, ["window_s=60", "alerts.allowed_lateness_s=0"])
    assert (s.window_s, s.allowed_lateness_s, s.min_effect) == (60, 0, 0.2)
    assert changed_settings(s) == [
        "window_s=60",
        "allowed_lateness_s=0",
        "min_effect=0.2",
        "critical_effect=0.3",
    ]
    with pytest.raises(ValueError, match=r"^with --set: alerts\.min_effect"):
        backtest_settings(None, ["min_effect=2"])
    monkeypatch.setenv("FINSENT_ALERTS__WINDOW_S", "0")
    with pytest.raises(ValueError, match=r"FINSENT_ALERTS__WINDOW_S"):
        backtest_settings(None, [])


def test_backtest_prints_the_settings_it_ran_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)
    monkeypatch.setenv("FINSENT_ALERTS__WINDOW_S", str(W))
    assert main(["backtest", str(stream), "--set", "allowed_lateness_s=0", "--json"]) == 0
    out, err = capsys.readouterr()
    assert (
        "finsent backtest: alerts settings: differing from the defaults: window_s=60, allowed_lateness_s=0"
        in err
    )
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["ACME", "ACME"]


def test_raw_messages_are_labeled_with_the_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_MODEL__THREADS", "1")
    base = backtest_base_settings(None)
    assert _model_settings(base, None).threads == 1
    chosen = _model_settings(base, Path("/models/x"))
    assert chosen.dir == Path("/models/x") and chosen.threads == 1


# ---- raw messages ---------------------------------------------------------------------------------------


def test_raw_json_output_is_only_json_and_a_message_without_published_at_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "raw.jsonl"
    start = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
    lines = [
        {
            "id": f"m{i}",
            "source": "newswire",
            "text": f"ACME ships order {i}",
            "published_at": rfc3339(start + 30 * i),
        }
        for i in range(40)
    ]
    lines.insert(3, {"id": "undated", "source": "newswire", "text": "ACME ships an undated order"})
    stream.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert main(["backtest", str(stream), "--json", "--set", "keys=[source]"]) == 0
    out, err = capsys.readouterr()
    assert out == ""  # stdout: the alerts only (none here: the key is still warming up)
    assert "labeling 41 raw messages with the model" in err
    assert "line 4: skipped (no_published_at" in err
    assert "key-events: accepted 40; invalid 1 of 41 lines" in err  # the undated one, not dated now


def test_labeling_raw_messages_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 raw messages took 8 s without a word; a file ten times that, over a minute."""
    monkeypatch.setattr(alerting, "RAW_PROGRESS_S", 0.0)  # a line before every chunk of 64
    stream = tmp_path / "raw.jsonl"
    start = datetime(2024, 3, 4, tzinfo=UTC).timestamp()
    rows = [
        {"id": f"m{i}", "source": "s", "text": f"ACME order {i}", "published_at": rfc3339(start + i)}
        for i in range(130)
    ]
    stream.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["backtest", str(stream), "--set", "keys=[source]"]) == 0
    err = capsys.readouterr().err
    assert "finsent backtest: labeled 64 of 130 messages (" in err and "labeled 128 of 130" in err


def test_a_model_that_cannot_be_loaded_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "raw.jsonl"
    stream.write_text(
        json.dumps({"id": "a", "source": "s", "text": "x", "published_at": "2024-01-01T00:00:00Z"})
    )
    assert main(["backtest", str(stream), "--model-dir", str(tmp_path / "none")]) == 2
    assert "finsent backtest: cannot load the model: " in capsys.readouterr().err


# ---- output and exit status -----------------------------------------------------------------------------


def test_a_file_whose_events_are_all_ignored_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)  # ticker and topic events
    assert main(["backtest", str(stream), "--set", "keys=[source]"]) == 2
    out, err = capsys.readouterr()
    assert "key-events: ignored " in out
    assert "no usable event in" in err and "key-events of key types not in alerts.keys were ignored" in err


def test_arrival_order_warns_when_many_events_are_late(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labeled.jsonl"
    write_stream(stream)
    lines = stream.read_text(encoding="utf-8").splitlines()
    stream.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")  # newest first
    args = ["backtest", str(stream), "--set", f"window_s={W}", "--set", "allowed_lateness_s=0"]
    assert main([*args, "--arrival-order"]) == 0
    out, err = capsys.readouterr()
    assert "0 alerts fired" in out and "finsent backtest: warning: " in err and "--arrival-order" in err
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "1 alerts fired" in out and "warning" not in err


@pytest.mark.parametrize("value", ["0", "-1", "six"])
def test_partitions_must_be_a_positive_whole_number(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["backtest", str(tmp_path / "x.jsonl"), "--partitions", value])
    assert exc.value.code == 2 and "--partitions" in capsys.readouterr().err


def test_json_output_of_an_alert_in_the_last_window_before_the_year_10000(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    normal, spike = {"ticker:A": (50, 0.1)}, {"ticker:A": (50, 0.9)}
    events = make_events([normal] * 12 + [spike], window_s=W, seed=1, start=MAX_TS - 12 * W - 30)
    stream = tmp_path / "y9999.jsonl"
    stream.write_text("".join(json.dumps(labeled_json(e)) + "\n" for e in events), encoding="utf-8")
    assert (
        main(["backtest", str(stream), "--json", "--set", f"window_s={W}", "--set", "allowed_lateness_s=0"])
        == 0
    )
    (doc,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert doc["status"] == "firing" and doc["window_end"] == "9999-12-31T23:59:59Z"


def _documents(events: list[LabeledEvent]) -> list[dict[str, object]]:
    """The events index's documents of these (ticker) events: one per message, no key fields."""
    docs: dict[str, dict[str, object]] = {}
    for e in events:
        doc = {k: v for k, v in labeled_json(e).items() if k not in ("event_id", "key_type", "key")}
        docs.setdefault(e.message_id, {**doc, "source": "wire", "topic": "Earnings", "tickers": [e.key]})
    return list(docs.values())


@pytest.mark.parametrize("form", ["source", "hit", "hit-gzip-bom"])
def test_an_elasticsearch_export_is_replayed_with_its_stored_labels(
    tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export of the events index (documents, no key fields) was taken for raw messages and labeled by
    the model again: the analyst's labels were thrown away, and no alert fired. Whole hits (`_source`)
    failed every line with "field 'source' is required", and a gzip file or a BOM was read as bad JSON."""
    normal, spike = {"ticker:ACME": (60, 0.1)}, {"ticker:ACME": (60, 0.6)}
    docs = _documents(make_events([normal] * 12 + [spike] * 3 + [normal] * 6, seed=21, window_s=W))
    lines = [
        json.dumps({"_index": "finsent-events-x", "_id": d["id"], "_source": d} if form != "source" else d)
        for d in docs
    ]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "export.jsonl"
    if form == "hit-gzip-bom":
        path.write_bytes(gzip.compress(("\ufeff" + text).encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    args = ["backtest", str(path), "--set", f"window_s={W}", "--set", "allowed_lateness_s=0"]
    assert main([*args, "--set", "volume_rule=false", "--set", "keys=[ticker, all]"]) == 0
    out, err = capsys.readouterr()
    assert "labeled documents (an Elasticsearch export): their stored labels are used" in err
    assert "labeling" not in err and "skipped" not in err
    assert [line.split()[0] for line in out.splitlines() if "ticker:ACME" in line] == ["FIRING", "RESOLVED"]
    assert f"accepted {2 * len(docs)}; invalid 0 of {len(docs)} lines" in out  # a ticker and `all` each


def test_plots_are_capped_with_the_keys_left_out_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay that alerted 1,000 keys wrote 1,000 charts (2 min 39 s, 60 MB) with no cap and no word."""
    normal = {f"ticker:K{i}": (60, 0.1) for i in range(3)}
    spike = {f"ticker:K{i}": (60, 0.6) for i in range(3)}
    events = make_events([normal] * 12 + [spike] * 3 + [normal] * 6, seed=21, window_s=W)
    stream = tmp_path / "labeled.jsonl"
    stream.write_text("\n".join(json.dumps(labeled_json(e)) for e in events) + "\n", encoding="utf-8")
    plots = tmp_path / "plots"
    args = ["backtest", str(stream), "--plots", str(plots), "--plots-max", "2", "--set", f"window_s={W}"]
    assert main([*args, "--set", "allowed_lateness_s=0", "--set", "volume_rule=false"]) == 0
    _, err = capsys.readouterr()
    assert len(list(plots.iterdir())) == 2
    assert "3 keys alerted; charting the 2 with the most alerts (--plots-max), 1 left out" in err


def test_a_raw_message_among_labeled_events_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was skipped as "schema: key_type None is not one of ...", which hid what it was."""
    stream = tmp_path / "mixed.jsonl"
    write_stream(stream)
    with stream.open("a", encoding="utf-8") as f:
        f.write(
            json.dumps({"id": "r1", "source": "s", "text": "ACME", "published_at": "2024-01-01T00:00:00Z"})
        )
    main(["backtest", str(stream), "--set", f"window_s={W}"])
    assert "skipped (raw: a raw message among labeled events (not labeled: replay it apart))" in (
        capsys.readouterr().err
    )


_WHOLE = gzip.compress(b'{"a": 1}\n' * 1000)


@pytest.mark.parametrize("content", [b"\x1f\x8bnot gzip at all", _WHOLE[: len(_WHOLE) // 2]])
def test_a_broken_gzip_file_is_one_line_not_a_traceback(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reading gzip exports came with this session; a file cut short raised EOFError out of the command."""
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(content)
    assert main(["backtest", str(path)]) == 2
    (line,) = [
        x for x in capsys.readouterr().err.splitlines() if not x.startswith("finsent backtest: alerts")
    ]
    assert line.startswith(f"finsent backtest: {path}: cannot read it (")
