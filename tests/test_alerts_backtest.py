"""`finsent backtest`: replay labeled events from a file, print alerts, draw a chart per alerted key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alerts.backtest import run_backtest
from alerts.config import AlertSettings
from alerts.synthetic import make_events
from finsent.cli import main
from finsent.commands.alerting import backtest_settings
from tests.test_alerts_worker import labeled_json

W = 60


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
    assert chart.name == f"ticker_ACME.{fmt}"
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
