"""Settings: env and YAML composition for the pipeline's sections; check-config masks secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from finsent.cli import main
from finsent.runner import COMMIT_TIMEOUT_MS
from finsent.settings import LABELER_COMMIT_TIMEOUT_S, Settings, load_settings


def test_env_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipeline:\n  batch_max_messages: 8\n  input_topics: [a, b]\nkafka:\n  client_id: y\n")
    monkeypatch.setenv("FINSENT_CONFIG", str(cfg))
    monkeypatch.setenv("FINSENT_KAFKA__CLIENT_ID", "from-env")
    s = Settings()
    assert s.pipeline.batch_max_messages == 8
    assert s.pipeline.input_topics == ("a", "b")
    assert s.kafka.client_id == "from-env"


def test_pseudonymising_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="pseudonymize_key"):
        Settings(pipeline={"pseudonymize_authors": True})
    for blank in ("", "  "):  # an empty Secret value: the authors were stored in clear
        with pytest.raises(ValidationError, match="non-empty secret"):
            Settings(pipeline={"pseudonymize_authors": True, "pseudonymize_key": blank})
    s = Settings(pipeline={"pseudonymize_authors": True, "pseudonymize_key": "k"})
    assert s.pipeline.pseudonymize_key is not None


def test_turning_watermarks_off_needs_the_wall_clock_for_idle_alert_windows() -> None:
    with pytest.raises(ValidationError, match=r"set alerts\.idle_clock: wall"):
        Settings(pipeline={"watermark_interval_s": 0})
    settings = Settings(pipeline={"watermark_interval_s": 0}, alerts={"idle_clock": "wall"})
    assert settings.alerts.idle_clock == "wall"


def test_the_linger_fits_in_the_longest_batch_wait() -> None:
    with pytest.raises(ValidationError, match=r"batch_linger_ms \(300\) is longer than"):
        Settings(pipeline={"batch_linger_ms": 300})
    assert Settings(pipeline={"batch_linger_ms": 200}).pipeline.batch_linger_ms == 200
    assert Settings(pipeline={"batch_max_wait_ms": 20}).pipeline.batch_max_wait_ms == 20  # default capped


def test_a_revoke_must_fit_in_the_rebalance_timeout() -> None:
    """The group waits `max_poll_interval_ms` for a member to rejoin; a labeler whose revoke (waiting for
    its batches, then committing) takes longer is dropped from the new generation."""
    with pytest.raises(ValidationError, match=r"must fit in kafka\.max_poll_interval_ms \(30000 ms\)"):
        Settings(kafka={"max_poll_interval_ms": 30_000}, pipeline={"shutdown_timeout_s": 26})
    fits = Settings(kafka={"max_poll_interval_ms": 30_000}, pipeline={"shutdown_timeout_s": 25})
    assert fits.pipeline.shutdown_timeout_s + LABELER_COMMIT_TIMEOUT_S == 30
    assert COMMIT_TIMEOUT_MS == LABELER_COMMIT_TIMEOUT_S * 1000  # the runner waits what is checked here


def test_check_config_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("FINSENT_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__API_KEY", "es-secret")
    monkeypatch.setenv("FINSENT_PIPELINE__METRICS_TICKERS", '["ACME"]')
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__URL", "https://finsent:pw-in-url@es.internal:9200")
    assert main(["check-config", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "es-secret" not in out and "pw-in-url" not in out
    data = json.loads(out)
    assert data["elasticsearch"]["url"] == "https://finsent:**********@es.internal:9200"
    assert data["kafka"]["sasl_password"] == "**********"
    assert data["elasticsearch"]["api_key"] == "**********"
    assert data["pipeline"]["metrics_tickers"] == ["ACME"]
    assert main(["check-config"]) == 0
    assert "hunter2" not in capsys.readouterr().out


def test_check_config_masks_the_whole_password_and_tokens_in_urls() -> None:
    from finsent.commands.pipeline import _redact

    # clients split the user info at its last `@`: the password here is `p@ss`, and `ss` was shown
    assert _redact("https://elastic:p@ss@es:9200") == "https://elastic:**********@es:9200"
    assert _redact("https://ghp_0123456789abcdefghijklmn@git.example/x") == "https://**********@git.example/x"
    assert (
        _redact("https://grafana/d/x?orgId=1&auth_token=abc123")
        == "https://grafana/d/x?orgId=1&auth_token=**********"
    )
    assert _redact("https://elastic@es:9200") == "https://elastic@es:9200"  # a user name alone is no secret
    assert (
        _redact("https://am/x?auth=s3cr3t&credentials=c")
        == "https://am/x?auth=**********&credentials=**********"
    )


def test_load_settings_with_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings sets FINSENT_CONFIG; setting it first makes monkeypatch restore (remove) it afterwards
    monkeypatch.setenv("FINSENT_CONFIG", "")
    monkeypatch.delenv("FINSENT_CONFIG")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("elasticsearch:\n  index_prefix: demo\n")
    assert load_settings(cfg).elasticsearch.index_prefix == "demo"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (
            {"pipeline": {"labeled_topic": "labeled events"}},
            r"pipeline\.labeled_topic\n.*not a Kafka topic name: 'labeled events' has",
        ),
        (
            {"pipeline": {"input_topics": ["ok", "x" * 250]}},
            r"input_topics\.1\n.*not a Kafka topic name: it is longer than 249",
        ),
        ({"pipeline": {"input_topics": []}}, r"input_topics\n.*is empty: name at least one topic to read"),
        (
            {"pipeline": {"dead_letter_topic": ""}},
            r"dead_letter_topic\n.*not a Kafka topic name: it is empty",
        ),
        (
            {"alerts": {"state_topic": ".."}},
            r"alerts\.state_topic\n.*not a Kafka topic name: it cannot be '\.\.'",
        ),
        (
            {"sources": {"topic": "raw/news"}},
            r"sources\.topic\n.*not a Kafka topic name: 'raw/news' has",
        ),
    ],
)
def test_topic_names_a_broker_refuses_fail_at_start_up(settings: dict[str, Any], needle: str) -> None:
    """kafka-python raises a ValueError at the first send to such a topic, which the writer's retry loop
    would meet again and again; the settings name the culprit instead."""
    with pytest.raises(ValidationError, match=needle):
        Settings(**settings)
    assert Settings(pipeline={"labeled_topic": "a.B_c-9"}).pipeline.labeled_topic == "a.B_c-9"


def test_publication_age_is_bounded_whenever_documents_are_indexed() -> None:
    """Each publication day is an index of its own: with the lifecycle off, input dated any day since 1970
    made one index per day (about 500 crafted messages reach a one-node cluster's 1,000-shard limit, and
    every write stops there). Now `max_age_days` bounds it; with the lifecycle on, the retention does."""
    from finsent.runner import decode_limits

    url = {"url": "http://es:9200"}
    assert decode_limits(Settings(elasticsearch=url), elasticsearch=True).max_age_s == 90 * 86_400
    off = Settings(elasticsearch={**url, "lifecycle_enabled": False})
    assert decode_limits(off, elasticsearch=True).max_age_s == 400 * 86_400
    shorter = Settings(elasticsearch={**url, "lifecycle_enabled": False, "max_age_days": 30})
    assert decode_limits(shorter, elasticsearch=True).max_age_s == 30 * 86_400
    assert decode_limits(off, elasticsearch=False).max_age_s is None  # no indices, no bound
