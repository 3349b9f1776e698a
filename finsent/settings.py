"""finsent's settings: the one documented place for every knob.

Read once at start-up from (highest first) keyword arguments, environment variables (`FINSENT_` prefix,
`__` between nested names, e.g. `FINSENT_KAFKA__BOOTSTRAP_SERVERS`), and an optional YAML file named by
`FINSENT_CONFIG` or `--config`. The resulting objects are frozen and passed inward; stages never read the
environment themselves."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pydantic_settings
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.config import AlertSettings, receiver_url_problem
from finsent.log_redaction import mask_secrets_in_log
from inference.config import ModelSettings
from ingest.sources.config import SourcesSettings
from ingest.topic_names import TopicName
from ingest.yaml_errors import yaml_problem

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """Settings that cannot be read (a missing or malformed YAML file, a value the model rejects), with a
    one-paragraph message naming the setting and its environment variable: the CLI prints it instead of a
    traceback."""


def unset_if_empty(value: Any) -> Any:
    """An empty value of an optional file or secret means "not set": `FINSENT_KAFKA__SSL_CAFILE=` was
    Path('.'), which counts as set and was handed to TLS, and an empty API key was sent as one."""
    return None if isinstance(value, str) and not value.strip() else value


_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$")


def _valid_host_port(entry: str) -> bool:
    """`host`, `host:port` or `[ipv6]:port`, the port (when given) 1-65535."""
    match = _HOST_PORT.fullmatch(entry)
    return match is not None and (match[1] is None or 1 <= int(match[1]) <= 65535)


def _valid_es_url(url: str) -> bool:
    """An HTTP URL finsent can send to (the notifiers' check), with the port the Elasticsearch client
    also requires."""
    return receiver_url_problem(url) is None and urlsplit(url).port is not None


class KafkaSettings(BaseModel):
    """Connection to the Kafka cluster (shared by consumers and producers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(
        "", description="Comma-separated host:port list. Empty: `finsent demo` starts a local broker."
    )
    client_id: str = Field("finsent", description="Client id sent to the brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(None, description="CA bundle used to verify the brokers.")
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    group_instance_id: str | None = Field(
        None,
        description="Static group membership (e.g. the pod name): a restarted worker takes its partitions "
        "back at once instead of waiting for the group to expire its old session.",
    )
    compression_type: Literal["none", "gzip", "lz4", "zstd"] = Field(
        "lz4",
        description="Compression of the labeled events and dead letters (and of `finsent produce`). lz4 "
        "costs little CPU and cut the local broker's CPU per message by 40 % in bench/pipeline.py.",
    )
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(
        3_000, ge=100, description="Below session_timeout_ms (Kafka recommends a third of it at most)."
    )
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    request_timeout_ms: int = Field(
        30_000, ge=1000, lt=540_000, description="Below kafka-python's idle-connection limit (540 s)."
    )
    reconnect_backoff_max_ms: int = Field(
        1_000,
        ge=50,
        le=60_000,
        description="Longest wait between attempts to reach a broker that keeps refusing (the Java client's "
        "default; kafka-python's own is 30 s, a worker then took up to 30 s to notice a restarted broker).",
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="What the workers' consumers read of transactional producers' records: only committed "
        "ones (an exactly-once producer upstream, Kafka Streams or Flink, aborts and retries: its aborted "
        "records would be labeled, indexed and counted too), or everything (Kafka's own default).",
    )
    fetch_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Most bytes one fetch request may bring back, all its partitions together (one request "
        "per broker): how much of a backlog a worker holds at a time (kafka-python's default is 50 MiB). A "
        "record batch larger than this still comes back whole, so no message is stuck. A broker that "
        "ignores it (the local noida-db does) answers with the whole backlog, and kafka-python refuses "
        "answers over 100 MB: see docs/performance.md.",
    )
    max_partition_fetch_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Most bytes one fetch may bring back from one partition (Kafka's default, 1 MiB).",
    )

    _empty_is_unset = field_validator(
        "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", mode="before"
    )(unset_if_empty)

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        """Checked here: kafka-python refuses it only when a worker connects, after the model has loaded."""
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below session_timeout_ms "
                f"({self.session_timeout_ms})"
            )
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        """Checked here, as a settings error: kafka-python failed on `host:notaport` with a traceback."""
        for entry in (e.strip() for e in value.split(",")):
            if entry and not _valid_host_port(entry):
                raise ValueError(f"{entry!r} is not host:port (a comma-separated list is expected)")
        return value

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python keyword arguments common to consumers, producers and admin clients."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            kw["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            kw["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            kw["ssl_keyfile"] = str(self.ssl_keyfile)
        if self.ssl_password:
            kw["ssl_password"] = self.ssl_password.get_secret_value()
        return kw

    def consumer_kwargs(self) -> dict[str, Any]:
        """`client_kwargs` plus the consumer-only bounds on what one fetch brings into memory, and the
        isolation level."""
        return {
            **self.client_kwargs(),
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "isolation_level": self.isolation_level,
        }


class ElasticsearchSettings(BaseModel):
    """Where labeled documents and alerts are indexed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    url: str = Field("", description="e.g. https://es:9200. Empty disables Elasticsearch output.")
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = Field(None, description="CA bundle for TLS verification.")

    verify_certs: bool = True
    index_prefix: str = Field("finsent", description="Indices are <prefix>-events-YYYY.MM.DD etc.")
    request_timeout_s: float = Field(30.0, gt=0)
    lifecycle_enabled: bool = Field(
        True,
        description="Delete daily event indices after retention_days: through an ILM policy, or, where "
        "the server has no ILM (Elasticsearch Serverless, noida-db), by finsent run itself, at start and "
        "hourly. Off: nothing deletes them.",
    )
    retention_days: int = Field(
        90,
        ge=1,
        description="Daily event indices are deleted this many days after the day they hold (with "
        "lifecycle_enabled); messages published earlier than that are dead-lettered (schema) instead of "
        "indexed.",
    )
    max_age_days: int = Field(
        400,
        ge=1,
        description="With the lifecycle off, messages published more than this many days ago are "
        "dead-lettered (schema) instead of indexed: each publication day is an index of its own, and days "
        "without a bound (a bad clock, crafted input) would run the cluster into its shard limit, which "
        "stops every write. With the lifecycle on, retention_days is the bound.",
    )
    number_of_shards: int = Field(1, ge=1)
    number_of_replicas: int = Field(1, ge=0)
    retry_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest wait between retries while Elasticsearch is unavailable."
    )

    _empty_is_unset = field_validator("api_key", "password", "ca_certs", mode="before")(unset_if_empty)

    @field_validator("url")
    @classmethod
    def _http_url_with_port(cls, value: str) -> str:
        """The client needs scheme, host and port (`https://es:9200`); without them it failed with a
        traceback, after the model had loaded. The value is not echoed: it may hold a password."""
        if value.strip() and not _valid_es_url(value.strip()):
            raise ValueError("must be http(s)://host:port[/path] (value not shown: it may hold credentials)")
        return value


class MetricsSettings(BaseModel):
    """The Prometheus metrics + health HTTP endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    host: str = Field("127.0.0.1", description="Bind address; use 0.0.0.0 in containers.")
    port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="/metrics, /healthz, /readyz. Workers sharing a host (`finsent run` and `finsent "
        "alerts` on one VM) each need their own.",
    )


class PipelineSettings(BaseModel):
    """The labeling pipeline: topics, batching, limits and outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_topics: tuple[TopicName, ...] = Field(
        ("finsent.raw",),
        description="Topics read (at least one). Every topic setting (these, alerts.state_topic, "
        "sources.topic, a source's topic) takes 1-249 of a-z A-Z 0-9 . _ -, as Kafka does; another name "
        "stops the command at start-up.",
    )
    group_id: str = "finsent-labelers"
    labeled_topic: TopicName = Field("finsent.labeled", description="Labeled events, one per alert key.")

    dead_letter_topic: TopicName = Field(
        "finsent.dead-letter", description="Records that could not be labeled, with the reason in headers."
    )
    labeled_topic_enabled: bool = True
    batch_max_messages: int = Field(
        256,
        ge=1,
        description=(
            "Largest micro-batch. Batches fill up only while the model is busy (a backlog): then a bigger "
            "window sorts more texts by length (less padding) and spreads each request's cost over more "
            "messages. On a GPU use 1024-4096."
        ),
    )
    batch_max_wait_ms: int = Field(
        200, ge=0, description="While the model is busy, a partial batch waits at most this long."
    )
    batch_linger_ms: int = Field(
        50,
        ge=0,
        description="While the model is idle, and was busy less than 0.6 of the last 2 s, a partial batch "
        "waits this long for more messages (at most batch_max_wait_ms, to which the default is cut): "
        "fewer, larger batches at low load, so less CPU per message, for up to this much latency; 0: at "
        "once. bench/pipeline.py --lingers compares values (docs/performance.md).",
    )
    max_message_bytes: int = Field(1_000_000, ge=1)
    max_text_chars: int = Field(100_000, ge=1)
    max_batches_in_flight: int = Field(
        3, ge=1, description="Batches labeled or being written at once; beyond it consuming pauses."
    )
    idle_backoff_max_ms: int = Field(
        200,
        ge=0,
        description="While the input is empty, polls are at most this far apart (5 ms, doubling while "
        "empty). It bounds the extra latency of the first message after a quiet spell.",
    )
    watermark_interval_s: float = Field(
        5.0,
        ge=0,
        description="How often the labeler tells the alert workers until when its input is labeled (a "
        "watermark record in every labeled partition); 0 turns it off.",
    )
    shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM/revoke, wait this long for in-flight batches, then drop them. With the 5 s "
        "a revoke's commit may take, it must fit in `kafka.max_poll_interval_ms`.",
    )
    metrics_tickers: tuple[str, ...] = Field(
        (), description="Tickers with their own series in finsent_ticker_labels_total; others are `other`."
    )
    pseudonymize_authors: bool = Field(
        False, description="Replace `author` by a keyed hash (HMAC-SHA256) before storage."
    )
    store_authors: bool = Field(
        True,
        description="Store each message's `author` in its Elasticsearch document (as given, or "
        "pseudonymised). Off: documents have no author (the raw and dead-letter topics keep it as produced).",
    )
    pseudonymize_key: SecretStr | None = Field(
        None, description="Secret key for author pseudonyms; required when pseudonymize_authors is on."
    )

    @field_validator("input_topics")
    @classmethod
    def _reads_a_topic(cls, topics: tuple[str, ...]) -> tuple[str, ...]:
        if not topics:
            raise ValueError("is empty: name at least one topic to read")
        return topics

    @model_validator(mode="after")
    def _linger_within_the_wait(self) -> PipelineSettings:
        """The default linger is capped at a shorter batch_max_wait_ms; one set explicitly must fit."""
        if "batch_linger_ms" in self.model_fields_set and self.batch_linger_ms > self.batch_max_wait_ms:
            raise ValueError(
                f"pipeline.batch_linger_ms ({self.batch_linger_ms}) is longer than "
                f"pipeline.batch_max_wait_ms ({self.batch_max_wait_ms}), the longest any partial batch waits"
            )
        return self

    @model_validator(mode="after")
    def _key_when_pseudonymizing(self) -> PipelineSettings:
        # blank counts as missing: an empty Secret value (`--from-literal=key=`) stored authors in clear
        key = self.pseudonymize_key.get_secret_value().strip() if self.pseudonymize_key else ""
        if self.pseudonymize_authors and not key:
            raise ValueError(
                "pipeline.pseudonymize_authors needs pipeline.pseudonymize_key (a non-empty secret)"
            )
        return self


LABELER_COMMIT_TIMEOUT_S = 5.0
"""The longest the labeler waits for an offset commit (in its loop and at a revoke): a hanging broker must
not hold the consume loop, or a rebalance, for the client's request timeout."""

CLIENT_CLOSE_TIMEOUT_S = 5.0
"""The longest a worker's stop waits for a Kafka client to close (a consumer leaving its group, a producer
sending what it holds): left to kafka-python, a slow broker held each for its request timeout (30 s), and
the stop ran past the deploy files' grace periods."""


class Settings(BaseSettings):
    """All of finsent's settings."""

    model_config = SettingsConfigDict(
        env_prefix="FINSENT_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    metrics: MetricsSettings = MetricsSettings()
    pipeline: PipelineSettings = PipelineSettings()
    model: ModelSettings = ModelSettings()
    alerts: AlertSettings = AlertSettings()
    sources: SourcesSettings = SourcesSettings()

    @model_validator(mode="after")
    def _revoke_fits_the_rebalance(self) -> Settings:
        """A revoke waits `shutdown_timeout_s` for in-flight batches, then up to LABELER_COMMIT_TIMEOUT_S
        for its commit, before the labeler rejoins; the group waits for it at most `max_poll_interval_ms`
        (kafka-python's rebalance timeout). A longer revoke gets the labeler dropped from the new
        generation: its commits are refused and the group rebalances once more."""
        revoke_s = self.pipeline.shutdown_timeout_s + LABELER_COMMIT_TIMEOUT_S
        if revoke_s > self.kafka.max_poll_interval_ms / 1000:
            raise ValueError(
                f"pipeline.shutdown_timeout_s ({self.pipeline.shutdown_timeout_s:g} s) plus the "
                f"{LABELER_COMMIT_TIMEOUT_S:g} s a revoke's commit may take must fit in "
                f"kafka.max_poll_interval_ms ({self.kafka.max_poll_interval_ms} ms), how long the group "
                "waits for a member to rejoin a rebalance"
            )
        return self

    @model_validator(mode="after")
    def _senders_have_their_secrets(self) -> Settings:
        """`finsent run` sends alerts itself when `alerts.enabled`; without it (a labeler beside alert
        workers, sharing their config file) the channels' secrets are theirs only, and `finsent alerts`
        checks them at its start."""
        missing = self.alerts.notifiers.missing_credentials() if self.alerts.enabled else []
        if missing:
            needed = "needed when the channel is enabled (alerts.enabled is on)"
            raise ValueError(f"{with_env_vars(missing)}: {needed}")
        return self

    @model_validator(mode="after")
    def _idle_clock_has_watermarks(self) -> Settings:
        if self.alerts.idle_clock == "labeler" and self.pipeline.watermark_interval_s == 0:
            raise ValueError(
                "pipeline.watermark_interval_s: 0 turns the labelers' watermarks off, but alerts.idle_clock: "
                "labeler waits for them (quiet alert windows would never close); set alerts.idle_clock: wall"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, file_secret_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by FINSENT_CONFIG (lowest priority)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("FINSENT_CONFIG")
        if not path:
            return {}
        missing = f"settings file {path} (--config or FINSENT_CONFIG) does not exist"
        data = read_yaml(Path(path), missing) or {}
        if not isinstance(data, dict):
            raise SettingsError(
                f"{path}: the settings file must hold a mapping at the top level (sections such as kafka:, "
                f"pipeline:), not a {type(data).__name__}"
            )
        return data


def read_yaml(path: Path, missing: str) -> Any:
    """The YAML document in a settings file; SettingsError with a one-line reason (`missing` when there is
    no such file) when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SettingsError(missing) from e
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"cannot read the settings file {path}: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SettingsError(f"{path} is not valid YAML: {yaml_problem(e)}") from e


EXTERNAL_ENV_PREFIXES = ("FINSENT_TEST_",)
"""`FINSENT_*` variables read outside the settings model (the test suite's server addresses): never reported
as unknown settings."""


def unknown_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """(variable, closest known name or None) for each `FINSENT_*` variable the settings model does not
    read: pydantic-settings silently ignores a misspelled section (`FINSENT_ELASTICSERCH__URL`) or a single
    `_` where `__` belongs (`FINSENT_PIPELINE_BATCH_MAX_MESSAGES`)."""
    from finsent.commands.ops import env_names  # imported here: ops reads Settings lazily, no cycle

    known = sorted(env_names(Settings))
    known_set = set(known)
    unknown: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith("FINSENT_") or upper.startswith(EXTERNAL_ENV_PREFIXES):
            continue
        if upper in known_set or any(upper.startswith(k + "__") for k in known):  # keys of a map setting
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        unknown.append((name, close[0] if close else None))
    return unknown


def warn_unknown_env(environ: Mapping[str, str]) -> None:
    """Log a warning per `FINSENT_*` variable that no setting reads (a typo would otherwise be silent).
    A warning, not an error: tools and tests set variables of their own under the same prefix."""
    for name, close in unknown_env_vars(environ):
        hint = f" (did you mean {close}?)" if close else ""
        log.warning("environment variable %s is not a finsent setting and is ignored%s", name, hint)


def describe_validation_error(error: ValidationError, section: tuple[str, ...] = ()) -> str:
    """One line per problem, `dotted.name (FINSENT_ENV__NAME): message`, joined into one paragraph. Input
    values are left out: a misspelled secret's value must not reach the terminal or the logs."""
    problems = []
    for e in error.errors(include_url=False):
        loc = (*section, *(str(part) for part in e["loc"]))
        names = [p for p in loc if not p.isdigit()]
        where = ".".join(loc)
        leaf = bool(names) and not _setting_names(loc)  # a whole section's check names no variable
        env = "FINSENT_" + "__".join(names).upper() if leaf else ""
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "not a known setting"
            siblings = _setting_names(loc[:-1])
            close = difflib.get_close_matches(loc[-1], siblings, n=1, cutoff=0.6) if loc else []
            if close:
                msg += f" (did you mean {'.'.join((*loc[:-1], close[0]))}?)"
        if env:
            problems.append(f"{where} ({env}): {msg}")
        else:  # a check of the whole settings (loc empty) names its settings itself
            problems.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(problems)


def with_env_vars(settings: Sequence[str]) -> str:
    """`a.b (FINSENT_A__B), c.d (FINSENT_C__D)`: the settings named, each with the variable that sets it."""
    return ", ".join(f"{name} ({env_var(name)})" for name in settings)


def env_var(setting: str) -> str:
    """The environment variable of a dotted setting name (`kafka.ssl_cafile` -> FINSENT_KAFKA__SSL_CAFILE)."""
    return "FINSENT_" + "__".join(setting.split(".")).upper()


def _setting_names(path: tuple[str, ...]) -> list[str]:
    """Field names of the settings section at `path` (empty if it is not a section)."""
    from finsent.commands.ops import nested_model

    model = nested_model(_annotation_at(path))
    return list(model.model_fields) if model is not None else []


def _annotation_at(path: Sequence[str]) -> Any:
    """The annotation of the setting or section at `path` (field names; Settings for none), or None."""
    from finsent.commands.ops import nested_model

    annotation: Any = Settings
    for part in path:
        model = nested_model(annotation)
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once; `config_file` wins over FINSENT_CONFIG. Every reason they cannot be read
    raises SettingsError (a ValueError) with a readable message. From then on their secrets are masked in
    the log, whatever writes them (`finsent.log_redaction`: kafka-python's DEBUG lines quote its password)."""
    if config_file is not None:
        os.environ["FINSENT_CONFIG"] = str(config_file)
    warn_unknown_env(os.environ)
    source = os.environ.get("FINSENT_CONFIG")
    origin = f" (from the environment or {source})" if source else " (from the environment)"
    try:
        settings = Settings(**overrides)
        mask_secrets_in_log(settings)
        return settings
    except ValidationError as e:
        raise SettingsError(f"invalid settings{origin}: {describe_validation_error(e)}") from e
    except pydantic_settings.SettingsError as e:
        culprits = non_json_collection_vars(os.environ)
        where = ", ".join(culprits) if culprits else str(e)
        example = json_example(culprits[0]) if culprits else 'FINSENT_PIPELINE__INPUT_TOPICS=\'["a","b"]\''
        raise SettingsError(
            f"{where}: lists and maps are given as JSON, e.g. {example} "
            f"({type(e.__cause__).__name__}: {e.__cause__})"
            if e.__cause__
            else str(e)
        ) from e


def json_example(name: str) -> str:
    """`NAME='["a","b"]'` (or a map's `{"name":"value"}`) for a list or map variable given as plain
    text. Placeholders, not the value given: it may hold a secret."""
    annotation = _annotation_at(name.upper().removeprefix("FINSENT_").lower().split("__"))
    return f"""{name}='{{"name":"value"}}'""" if _is_map(annotation) else f"""{name}='["a","b"]'"""


def _is_map(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_map(a) for a in typing.get_args(annotation))
    return (typing.get_origin(annotation) or annotation) is dict


def non_json_collection_vars(environ: Mapping[str, str]) -> list[str]:
    """The `FINSENT_*` variables of list, set or map settings whose value is not JSON: pydantic-settings'
    error names only the top section (`field "alerts"`), not the variable."""
    found = []
    for name, value in sorted(environ.items()):
        parts = name.upper().removeprefix("FINSENT_").lower().split("__")
        if not name.upper().startswith("FINSENT_") or not _is_collection(_annotation_at(parts)):
            continue
        try:
            json.loads(value)
        except ValueError:
            found.append(name)
    return found


def _is_collection(annotation: Any) -> bool:
    """Whether a setting's type is one pydantic-settings reads as JSON (a list, set, tuple or map)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_collection(a) for a in typing.get_args(annotation))
    return (typing.get_origin(annotation) or annotation) in (list, set, frozenset, tuple, dict)


def settings_env(settings: Settings) -> dict[str, str]:
    """`FINSENT_*` variables that give a child process (`python -m finsent run`) the same settings: one per
    field whose value differs from its default. Top-level secrets are written in clear (the child needs
    them); keep the result out of logs. The benches and tests start workers with it."""
    env: dict[str, str] = {}
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            if value != field.get_default(call_default_factory=True):
                env[f"FINSENT_{section_name.upper()}__{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(_plain(value))


def _plain(value: Any) -> Any:
    """JSON-ready form that keeps secrets (pydantic's own dump masks them)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return to_jsonable_python(value)
