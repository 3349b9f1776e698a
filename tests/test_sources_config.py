"""The sources file: validation with errors naming the entry, defaults, secrets from the environment,
schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ingest.sources.config import (
    FeedSource,
    FilesSource,
    HttpJsonSource,
    SourcesConfigError,
    SourcesSettings,
    load_sources,
    parse_sources,
)
from ingest.sources.http import without_query
from ingest.sources.schedule import build_trigger, parse_duration

FIXTURES = Path(__file__).parent / "fixtures" / "sources"


def test_example_file_loads_with_defaults_and_secret_from_env() -> None:
    sl = load_sources(FIXTURES / "sources.yaml", env={"EXAMPLE_API_TOKEN": "s3cret"})
    wire, api, drops = sl.sources
    assert isinstance(wire, FeedSource) and wire.interval_s == 300 and wire.jitter_s == 20
    assert wire.timeout_s == 15 and wire.retries == 3 and wire.lang == "en"
    assert isinstance(api, HttpJsonSource)
    assert api.cron == "*/10 * * * *" and api.every is None  # own cron replaces the default interval
    assert api.headers["Authorization"].get_secret_value() == "Bearer s3cret"
    assert "s3cret" not in repr(api)  # secrets never show in logs or reprs
    assert api.pagination.type == "cursor" and api.fields.title == "headline"
    assert isinstance(drops, FilesSource) and drops.interval_s == 30
    assert not hasattr(drops, "timeout_s")  # defaults only apply to fields a kind has


def test_a_secret_files_trailing_newline_is_dropped_and_a_line_break_inside_is_named_not_shown() -> None:
    """httpx refused the header with an error quoting its whole value into the logs, secret included."""
    api = load_sources(FIXTURES / "sources.yaml", env={"EXAMPLE_API_TOKEN": "s3cret\n"}).sources[1]
    assert isinstance(api, HttpJsonSource)
    assert api.headers["Authorization"].get_secret_value() == "Bearer s3cret"
    with pytest.raises(SourcesConfigError) as e:
        load_sources(FIXTURES / "sources.yaml", env={"EXAMPLE_API_TOKEN": "s3c\nret"})
    assert "header 'Authorization' holds a control character" in str(e.value)
    assert "s3c" not in str(e.value)


def test_urls_in_logs_lose_their_query_and_password() -> None:
    assert without_query("https://user:pw@news.example/api?key=K#f") == "https://news.example/api"


def test_missing_env_var_names_entry_and_variable() -> None:
    with pytest.raises(SourcesConfigError) as e:
        load_sources(FIXTURES / "sources.yaml", env={})
    assert "sources[1] ('example-api')" in str(e.value)
    assert "EXAMPLE_API_TOKEN is not set" in str(e.value)


def test_every_bad_entry_is_reported_at_once() -> None:
    data = {
        "sources": [
            {"name": "ok", "kind": "rss", "url": "https://x.example/rss"},
            {"name": "no-url", "kind": "atom"},
            {"name": "bad-kind", "kind": "ftp"},
            {"name": "both", "kind": "rss", "url": "https://x", "every": "5m", "cron": "* * * * *"},
            {"name": "bad-cron", "kind": "rss", "url": "https://x", "cron": "61 * * * *"},
            {"name": "bad-path", "kind": "http_json", "url": "https://x", "records": "a[?"},
            {"name": "bad-every", "kind": "files", "path": "/tmp", "every": "soon"},
            {"name": "ok", "kind": "stdin"},
            {"name": "ftp-url", "kind": "rss", "url": "ftp://x"},
            {"name": "typo", "kind": "rss", "url": "https://x", "timout_s": 3},
            "not a mapping",
        ]
    }
    with pytest.raises(SourcesConfigError) as e:
        parse_sources(data)
    msg = str(e.value)
    assert "sources[1] ('no-url'): url: Field required" in msg
    assert "sources[2] ('bad-kind'): kind:" in msg
    assert "sources[3] ('both')" in msg and "either `every` or `cron`" in msg
    assert "sources[4] ('bad-cron')" in msg and "invalid cron" in msg
    assert "sources[5] ('bad-path'): records: invalid JMESPath" in msg
    assert "sources[6] ('bad-every'): every: not a duration" in msg
    assert "sources[7] ('ok'): duplicate name" in msg
    assert "sources[8] ('ftp-url'): url: must start with http" in msg
    assert "sources[9] ('typo'): timout_s: Extra inputs are not permitted" in msg
    assert "sources[10]: must be a mapping" in msg
    assert "sources[0] (" not in msg  # the valid entry is not blamed


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sources": []}, "non-empty list"),
        ({"feeds": []}, "unknown top-level keys"),
        ("just text", "expected a mapping"),
        ({"defaults": [1], "sources": [{"name": "a", "kind": "stdin"}]}, "`defaults` must be a mapping"),
    ],
)
def test_file_shape_errors(data: object, needle: str) -> None:
    with pytest.raises(SourcesConfigError, match=needle):
        parse_sources(data)


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(SourcesConfigError, match="cannot read"):
        load_sources(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n  - name: a\n  kind", encoding="utf-8")
    with pytest.raises(SourcesConfigError, match="not valid YAML"):
        load_sources(bad)
    # PyYAML quoted the offending line over several lines: a header's token with it
    bad.write_text("sources:\n  - headers: {Authorization: Bearer SECRETTOKEN42, X: [}\n", encoding="utf-8")
    with pytest.raises(SourcesConfigError) as exc:
        load_sources(bad)
    assert str(exc.value).startswith(f"{bad}: not valid YAML: line 2, column ")
    assert "SECRETTOKEN42" not in str(exc.value) and "\n" not in str(exc.value)


def test_bare_list_and_disabled_sources() -> None:
    sl = parse_sources([{"name": "a", "kind": "stdin"}, {"name": "b", "kind": "stdin", "enabled": False}])
    assert [s.name for s in sl.enabled()] == ["a"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("1d", 86400.0), ("1500ms", 1.5)],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [0, -5, "0s", "5 minutes", True, None, "m"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_triggers() -> None:
    interval = build_trigger(every_s=60, cron=None, timezone="UTC", jitter_s=5)
    assert isinstance(interval, IntervalTrigger) and interval.interval.total_seconds() == 60
    assert interval.jitter == 5
    cron = build_trigger(every_s=300, cron="*/10 9-17 * * mon-fri", timezone="America/New_York", jitter_s=0)
    assert isinstance(cron, CronTrigger) and cron.jitter is None
    assert str(cron.timezone) == "America/New_York"


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(SourcesConfigError, match="timezone"):
        parse_sources([{"name": "a", "kind": "stdin", "cron": "* * * * *", "timezone": "Mars/Base"}])


def test_sources_settings_are_frozen_and_strict() -> None:
    s = SourcesSettings()
    assert s.topic == "finsent.raw" and s.dedup_horizon_hours == 168
    with pytest.raises(ValueError):
        SourcesSettings(unknown=1)  # type: ignore[call-arg]


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "sources.md").read_text(encoding="utf-8")
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    sl = parse_sources(yaml.safe_load(block), env={"EXAMPLE_API_TOKEN": "t"})
    assert [s.name for s in sl.enabled()] == ["example-wire", "company-press", "example-api", "drops"]
    assert [s.kind for s in sl.sources] == ["rss", "atom", "http_json", "files", "stdin"]


def test_a_source_topic_a_broker_refuses_is_reported() -> None:
    data = {"sources": [{"name": "feed", "kind": "rss", "url": "https://x.example/rss", "topic": "raw news"}]}
    with pytest.raises(SourcesConfigError, match=r"sources\[0\] \('feed'\).*not a Kafka topic name"):
        parse_sources(data, env={})
