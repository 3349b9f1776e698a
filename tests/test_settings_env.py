"""settings_env: a child process reading the FINSENT_* variables gets the same settings back."""

from __future__ import annotations

from pathlib import Path

import pytest

from finsent.settings import Settings, SettingsError, load_settings, settings_env


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


def test_an_empty_file_or_secret_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`FINSENT_MODEL__DIR=` became Path('.'): "not a finsent model directory", where the docs promise the
    shipped model; an empty CA file counted as set and went to TLS; an empty API key was sent."""
    for name in (
        "FINSENT_MODEL__DIR",
        "FINSENT_KAFKA__SSL_CAFILE",
        "FINSENT_KAFKA__SASL_PASSWORD",
        "FINSENT_ELASTICSEARCH__CA_CERTS",
        "FINSENT_ELASTICSEARCH__API_KEY",
    ):
        monkeypatch.setenv(name, "")
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    s = Settings()
    assert s.model.dir is None and s.kafka.ssl_cafile is None and s.kafka.sasl_password is None
    assert s.elasticsearch.ca_certs is None and s.elasticsearch.api_key is None


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:notaport", "is not host:port"),
        ("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:99999", "'k2:99999' is not host:port"),
        ("FINSENT_ELASTICSEARCH__URL", "es-host:9200", "must be http(s)://host:port"),
        ("FINSENT_ELASTICSEARCH__URL", "https://elastic:s3cret@es", "value not shown"),
    ],
)
def test_malformed_addresses_are_settings_errors(
    name: str, value: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepted before, they failed later with a traceback (Elasticsearch's after the model had loaded)."""
    monkeypatch.setenv(name, value)
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert words in str(e.value) and "s3cret" not in str(e.value)


@pytest.mark.parametrize("channel", ["ALERTMANAGER", "SLACK", "WEBHOOK", "EMAIL"])
def test_a_channel_switched_on_without_its_address_is_a_settings_error(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It passed `check-config`, then `finsent alerts` died with a traceback and `finsent run`'s alert
    worker restarted for ever, alerting dead while labeling went on."""
    monkeypatch.setenv(f"FINSENT_ALERTS__NOTIFIERS__{channel}__ENABLED", "true")
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    with pytest.raises(SettingsError, match="needed when the channel is enabled"):
        load_settings()


@pytest.mark.parametrize(
    ("channel", "setting"),
    [("SLACK", "alerts.notifiers.slack.webhook_url"), ("WEBHOOK", "alerts.notifiers.webhook.url")],
)
def test_a_labeler_without_alerting_starts_without_the_channels_secrets(
    channel: str, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A labeler shares the alert workers' config file (deploy/k8s) with a channel on, but runs no alert
    worker (alerts.enabled false) and is not given the channel's secret: it exited 2 at every start."""
    monkeypatch.setenv(f"FINSENT_ALERTS__NOTIFIERS__{channel}__ENABLED", "true")
    monkeypatch.setenv("FINSENT_ALERTS__ENABLED", "false")
    monkeypatch.delenv("FINSENT_CONFIG", raising=False)
    settings = load_settings()
    assert settings.alerts.notifiers.missing_credentials() == [setting]
    monkeypatch.setenv(
        f"FINSENT_ALERTS__NOTIFIERS__{channel}__{setting.rsplit('.', 1)[1].upper()}", "ftp://hooks.example"
    )
    with pytest.raises(SettingsError, match="must start with http"):
        load_settings()  # a secret given but unusable is an error wherever it is read
