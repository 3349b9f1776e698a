"""The configured secrets never reach the log: at DEBUG kafka-python wrote `sasl_plain_password` in its
configuration dump (and the SASL request's bytes) on every connection; a masked filter on the root
logger's handlers replaces them, whatever logs them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from finsent.log_redaction import MASK, installed_mask, mask_secrets_in_log, secret_values
from finsent.settings import Settings, load_settings
from ingest.sources.config import load_sources
from tests.servers import Noida


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """The root logger at DEBUG into a buffer, as `finsent --log-level DEBUG` writes to stderr."""
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def settings_with_secrets() -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": "127.0.0.1:9",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "finsent",
            "sasl_password": "s3cr3tKAFKA-pw",
        },
        elasticsearch={"url": "https://ops:s3cr3t%40ES@es.example:9200"},
        alerts={
            "notifiers": {
                "webhook": {"enabled": True, "url": "https://hooks.example/T0/s3cr3tHOOK"},
                "alertmanager": {"url": "http://am:s3cr3tAMURL@am:9093", "password": "s3cr3tAMPW"},
            }
        },
    )


def test_every_secret_of_the_settings_is_found_urls_passwords_included() -> None:
    found = set(secret_values(settings_with_secrets()))
    assert {"s3cr3tKAFKA-pw", "https://hooks.example/T0/s3cr3tHOOK", "s3cr3tAMPW"} <= found
    assert {"s3cr3t%40ES", "s3cr3t@ES", "s3cr3tAMURL"} <= found  # passwords of plain-text URLs


def test_a_sources_secret_headers_and_params_are_masked_not_its_plain_ones(tmp_path: Path) -> None:
    """All of a source's headers and params are SecretStr; masking `lang: en` or `User-Agent: finsent`
    would garble every line naming them."""
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n  - name: wire\n    kind: rss\n    url: https://reader:s3cr3tFEEDPW@feed.example/rss\n"
        "    headers: {Authorization: Bearer s3cr3tBEARER, User-Agent: finsent-agent}\n"
        "    params: {apikey: s3cr3tAPIKEY, category: markets}\n"
    )
    found = set(secret_values(load_sources(path)))
    assert {"Bearer s3cr3tBEARER", "s3cr3tBEARER", "s3cr3tAPIKEY", "s3cr3tFEEDPW"} <= found
    assert not {"finsent-agent", "markets"} & found


def test_kafka_pythons_configuration_dump_at_debug_shows_no_password(
    noida: Noida, debug_log: io.StringIO
) -> None:
    settings = settings_with_secrets()
    mask_secrets_in_log(settings)
    password = settings.kafka.sasl_password
    assert password is not None
    admin = KafkaAdminClient(
        bootstrap_servers=noida.kafka,
        sasl_plain_password=password.get_secret_value(),
        request_timeout_ms=10000,
    )
    admin.close()
    text = debug_log.getvalue()
    assert "Starting KafkaAdminClient with configuration" in text  # the real library's dump, at DEBUG
    assert "s3cr3tKAFKA-pw" not in text and f"'sasl_plain_password': '{MASK}'" in text


def test_messages_arguments_and_tracebacks_are_masked(debug_log: io.StringIO) -> None:
    mask_secrets_in_log(settings_with_secrets())
    log = logging.getLogger("some.library")
    log.debug("auth_bytes=%r", b"finsent\x00finsent\x00s3cr3tKAFKA-pw")
    try:
        raise ConnectionError("cannot reach https://ops:s3cr3t@ES@es.example:9200/")
    except ConnectionError:
        log.exception("request failed")
    log.info("short values are left alone: %s", "pw")
    text = debug_log.getvalue()
    assert "s3cr3t" not in text
    assert f"auth_bytes=b'finsent\\x00finsent\\x00{MASK}'" in text
    assert "ConnectionError: cannot reach https://ops:" in text and "request failed" in text
    assert "short values are left alone: pw" in text


def test_reading_the_settings_masks_their_secrets_in_the_log(
    monkeypatch: pytest.MonkeyPatch, debug_log: io.StringIO
) -> None:
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__API_KEY", "s3cr3tAPIKEY-from-env")
    load_settings()
    assert "s3cr3tAPIKEY-from-env" in installed_mask().secrets
    logging.getLogger("some.client").warning("ApiKey s3cr3tAPIKEY-from-env refused")
    assert debug_log.getvalue() == f"ApiKey {MASK} refused\n"


def test_escaped_forms_are_masked_and_a_bad_log_call_is_not_raised_into_its_caller(
    debug_log: io.StringIO,
) -> None:
    """kafka-python logs the SASL request's bytes with %r (a non-ASCII password as \\xc3\\xa4...) and its
    configuration as a dict repr (a backslash doubled); a call whose arguments do not fit its format
    raised TypeError in the caller once the filter formatted it."""
    settings = Settings(
        kafka={"sasl_password": "pässwört-Kafka"},
        elasticsearch={"url": "http://es:9200", "password": "Back\\slash9"},
    )
    mask_secrets_in_log(settings)
    log = logging.getLogger("some.library")
    log.debug("auth_bytes=%r", "u\x00u\x00pässwört-Kafka".encode())
    log.debug("configuration: %s", {"password": "Back\\slash9"})
    bad = logging.LogRecord("some.library", logging.INFO, __file__, 1, "%d items", ("x",), None)
    assert installed_mask().filter(bad)  # left to the handler, which reports it ("--- Logging error ---")
    text = debug_log.getvalue()
    assert "p\\xc3\\xa4ssw" not in text and "slash9" not in text
    assert text.count(MASK) == 2
