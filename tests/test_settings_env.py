"""settings_env: a child process reading the FINSENT_* variables gets the same settings back."""

from __future__ import annotations

from pathlib import Path

import pytest

from finsent.settings import Settings, settings_env


def roundtrip(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    return Settings()


def test_defaults_need_no_variables() -> None:
    assert settings_env(Settings()) == {}


def test_scalars_lists_paths_and_secrets_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        kafka={
            "bootstrap_servers": "k1:9092,k2:9092",
            "sasl_password": "s3cret",
            "ssl_cafile": "/etc/ca.pem",
        },
        elasticsearch={"enabled": False, "request_timeout_s": 2.5},
        pipeline={"input_topics": ["a", "b"], "batch_max_messages": 16, "metrics_tickers": ["AAPL"]},
        alerts={"keys": ["ticker", "topic"]},
    )
    env = settings_env(settings)
    assert env["FINSENT_KAFKA__SASL_PASSWORD"] == "s3cret"
    assert env["FINSENT_ELASTICSEARCH__ENABLED"] == "false"
    back = roundtrip(settings, monkeypatch)
    assert back == settings
    assert back.kafka.ssl_cafile == Path("/etc/ca.pem")
    assert back.kafka.sasl_password is not None and back.kafka.sasl_password.get_secret_value() == "s3cret"


def test_nested_models_keep_their_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        alerts={"notifiers": {"webhook": {"url": "https://hooks.example/x", "secret": "k"}, "timeout_s": 3}}
    )
    back = roundtrip(settings, monkeypatch)
    webhook = back.alerts.notifiers.webhook
    assert webhook.url is not None and webhook.url.get_secret_value() == "https://hooks.example/x"
    assert webhook.secret is not None and webhook.secret.get_secret_value() == "k"
    assert back == settings
