"""Settings of the source producers (section `sources`) and the per-source list read from its own YAML file.

The `sources` section of finsent's settings holds service-wide knobs (state dir, topic, dedup horizon); the
list of sources lives in a separate YAML file (`config_file`) so that a team can edit its feeds without
touching the deployment's settings. Every entry is validated on load and errors name the bad entry."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
import yaml
from jmespath.exceptions import JMESPathError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ingest.sources.schedule import parse_cron, parse_duration
from ingest.topic_names import TopicName
from ingest.yaml_errors import yaml_problem


class SourcesSettings(BaseModel):
    """Service-wide settings of `finsent sources`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_file: Path | None = Field(None, description="YAML file listing the sources.")
    state_dir: Path = Field(
        Path(".finsent/sources"), description="Checkpoints and the dedup index; must survive restarts."
    )
    topic: TopicName = Field(
        "finsent.raw", description="Raw topic items are published to (per-source override)."
    )
    dedup_horizon_hours: float = Field(
        168.0, gt=0, description="How long a URL / content hash is remembered; older items are skipped."
    )
    max_workers: int = Field(4, ge=1, description="Sources fetched at the same time.")
    user_agent: str = "finsent-sources/0.1 (+https://github.com/finsent)"
    flush_timeout_s: float = Field(30.0, gt=0, description="Wait for broker acks before a checkpoint.")


# ---------------------------------------------------------------------------------------------------------
# The per-source list


class SourcesConfigError(ValueError):
    """The sources file is invalid; the message names every bad entry."""


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """Replace `${NAME}` with the environment variable NAME; a missing variable is an error."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ValueError(f"environment variable {name} is not set")
        return env[name]

    return _ENV_REF.sub(repl, value)


def _env_from(info: ValidationInfo) -> Mapping[str, str]:
    ctx = info.context if isinstance(info.context, dict) else {}
    env = ctx.get("env")
    return env if isinstance(env, Mapping) else os.environ


def _check_jmespath(expr: str) -> str:
    try:
        jmespath.compile(expr)
    except JMESPathError as e:
        reason = str(getattr(e, "msg", "") or type(e).__name__).strip().rstrip(":")
        raise ValueError(f"invalid JMESPath expression {expr!r}: {reason}") from None
    return expr


class FieldMap(BaseModel):
    """Where each contract field is found in a record: JMESPath expressions (None: not mapped)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = "id"
    text: str | None = "text"
    title: str | None = "title"
    body: str | None = "body"
    url: str | None = "url"
    published_at: str | None = "published_at"
    tickers: str | None = "tickers"
    author: str | None = "author"
    lang: str | None = "lang"

    @field_validator("*")
    @classmethod
    def _valid(cls, v: str | None) -> str | None:
        return None if v is None else _check_jmespath(v)


class RateLimit(BaseModel):
    """At most `requests` requests per `per_s` seconds (token bucket)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int = Field(1, ge=1)
    per_s: float = Field(1.0, gt=0)


class _SourceBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Unique; it is the message `source` and the Kafka key.")
    enabled: bool = True
    topic: TopicName | None = Field(None, description="Overrides sources.topic.")
    every: float | None = Field(None, description="Interval in seconds, or '30s', '5m', '1h'.")
    cron: str | None = Field(None, description="5-field crontab, e.g. '*/5 * * * *' (UTC unless timezone).")
    timezone: str = Field("UTC", description="The zone of `cron` (not of the items' dates: dates_timezone).")
    dates_timezone: str = Field(
        "UTC",
        description="The zone of the items' dates written without one ('2026-06-15 09:30:00'), as an IANA "
        "name (America/New_York); dates with a zone or offset keep theirs.",
    )
    jitter_s: float = Field(0.0, ge=0)
    lang: str | None = Field(None, description="Declared language; else the item's own, else detected.")
    tickers: tuple[str, ...] = Field((), description="Tickers added to every item (e.g. a company's feed).")
    max_item_bytes: int = Field(100_000, ge=256, description="Longer texts are truncated to fit.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-100 characters of letters, digits, '_', '.', '-'")
        return v

    @field_validator("dates_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as America/New_York)") from None
        return v

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _one_schedule(self) -> _SourceBase:
        if self.every is not None and self.cron is not None:
            raise ValueError("set either `every` or `cron`, not both")
        if self.cron is not None:
            parse_cron(self.cron, self.timezone)
        return self

    @property
    def interval_s(self) -> float:
        """The polling interval when no cron is set (default five minutes)."""
        return self.every if self.every is not None else 300.0


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed inside a value


class HttpSourceBase(_SourceBase):
    url: str
    headers: dict[str, SecretStr] = Field({}, description="Values may use ${ENV_NAME}.")
    params: dict[str, SecretStr] = Field({}, description="Query parameters; values may use ${ENV_NAME}.")
    timeout_s: float = Field(20.0, gt=0)
    retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_s: float = Field(60.0, ge=0, description="Cap for backoff and Retry-After.")
    rate_limit: RateLimit | None = None
    max_response_bytes: int = Field(10_000_000, ge=1024)
    conditional: bool = Field(True, description="Send If-None-Match / If-Modified-Since.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        v = expand_env(v, _env_from(info))
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("headers", "params", mode="before")
    @classmethod
    def _expand(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict):
            return v
        env = _env_from(info)
        return {str(k): expand_env(str(val), env) for k, val in v.items()}

    @field_validator("headers")
    @classmethod
    def _header_values(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """Values without surrounding whitespace (a secret file's trailing newline, which HTTP does not
        count as part of the value), and with no control character left: the HTTP library refused one in
        an error message that quoted the whole value, secret included, into the logs. The error here
        names the header only."""
        cleaned: dict[str, SecretStr] = {}
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:100]!r} is not an HTTP token")
            text = value.get_secret_value().strip(" \t\r\n")
            if _HEADER_CONTROL.search(text):
                raise ValueError(f"the value of header {name!r} holds a control character (a line break?)")
            cleaned[name] = SecretStr(text)
        return cleaned


TickerCategories = Literal["prefixed", "all", "none"]


class FeedSource(HttpSourceBase):
    """An RSS 2.0 or Atom feed (the format is detected from the document)."""

    kind: Literal["feed", "rss", "atom"]
    ticker_categories: TickerCategories = Field(
        "prefixed",
        description="Categories used as ticker hints: 'prefixed' (NASDAQ:AAPL, $AAPL or a ticker/symbol "
        "domain), 'all' (any category that looks like a ticker), 'none'.",
    )


class Pagination(BaseModel):
    """How to get the next page of a JSON API."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["none", "cursor", "page"] = "none"
    cursor_path: str | None = Field(None, description="JMESPath to the next cursor in a response.")
    cursor_param: str = "cursor"
    page_param: str = "page"
    first_page: int = 1
    max_pages: int = Field(10, ge=1, description="Per fetch; stops earlier at a page of seen items.")
    resume: bool = Field(False, description="Cursor mode: start the next fetch from the last cursor.")

    @field_validator("cursor_path")
    @classmethod
    def _cp(cls, v: str | None) -> str | None:
        return None if v is None else _check_jmespath(v)

    @model_validator(mode="after")
    def _needs_path(self) -> Pagination:
        if self.type == "cursor" and not self.cursor_path:
            raise ValueError("cursor pagination needs `cursor_path`")
        return self


class HttpJsonSource(HttpSourceBase):
    """A generic HTTP JSON API: records found by JMESPath, fields mapped to the message contract."""

    kind: Literal["http_json"]
    records: str = Field("@", description="JMESPath to the list of records in a response.")
    fields: FieldMap = FieldMap()
    pagination: Pagination = Pagination()
    since_param: str | None = Field(None, description="Query parameter sent the newest published_at seen.")

    @field_validator("records")
    @classmethod
    def _rec(cls, v: str) -> str:
        return _check_jmespath(v)


class FilesSource(_SourceBase):
    """JSONL or CSV files dropped by other systems: a file or a folder, tailed by byte offset."""

    kind: Literal["files"]
    path: Path
    pattern: str = Field("*", description="Glob for files in a folder (ignored for a file).")
    format: Literal["auto", "jsonl", "csv"] = Field(
        "auto", description="auto: by extension (.csv, else JSONL)."
    )
    fields: FieldMap = FieldMap()
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    max_bytes_per_fetch: int = Field(8_000_000, ge=1024)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any, info: ValidationInfo) -> Any:
        return expand_env(v, _env_from(info)) if isinstance(v, str) else v


class StdinSource(_SourceBase):
    """Lines from standard input (JSON objects, or plain text with `format: text`), for ad-hoc use."""

    kind: Literal["stdin"]
    format: Literal["jsonl", "text"] = "jsonl"
    fields: FieldMap = FieldMap()


SourceConfig = Annotated[FeedSource | HttpJsonSource | FilesSource | StdinSource, Field(discriminator="kind")]
_SOURCE_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


class SourceList(BaseModel):
    """The validated content of the sources file."""

    model_config = ConfigDict(frozen=True)

    sources: tuple[SourceConfig, ...]

    def enabled(self) -> tuple[SourceConfig, ...]:
        return tuple(s for s in self.sources if s.enabled)


def _describe(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # Drop the discriminator tag pydantic inserts ('feed', 'http_json', ...).
        if loc and loc[0] in ("feed", "rss", "atom", "http_json", "files", "stdin"):
            loc = loc[1:]
        where = ".".join(loc) or ("kind" if e["type"].startswith("union_tag") else "(entry)")
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}")
    return out


def parse_sources(data: Any, *, env: Mapping[str, str] | None = None, origin: str = "sources") -> SourceList:
    """Validate the parsed YAML (`{defaults: {...}, sources: [...]}` or a bare list) into a SourceList."""
    if isinstance(data, list):
        data = {"sources": data}
    if not isinstance(data, dict):
        raise SourcesConfigError(
            f"{origin}: expected a mapping with `sources:` (a list), got {type(data).__name__}"
        )
    unknown = set(data) - {"defaults", "sources"}
    if unknown:
        raise SourcesConfigError(
            f"{origin}: unknown top-level keys {sorted(unknown)} (use defaults, sources)"
        )
    defaults = data.get("defaults") or {}
    raw = data.get("sources")
    if not isinstance(defaults, dict):
        raise SourcesConfigError(f"{origin}: `defaults` must be a mapping")
    if not isinstance(raw, list) or not raw:
        raise SourcesConfigError(f"{origin}: `sources` must be a non-empty list")
    ctx = {"env": os.environ if env is None else env}
    problems: list[str] = []
    parsed: list[SourceConfig] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        label = f"sources[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{label}: must be a mapping, got {type(entry).__name__}")
            continue
        if entry.get("name"):
            label += f" ({entry['name']!r})"
        kind = entry.get("kind")
        inherited = {k: v for k, v in defaults.items() if _accepts(kind, k)}
        if "cron" in entry or "every" in entry:  # an entry's own schedule replaces the default one
            inherited.pop("cron", None)
            inherited.pop("every", None)
        merged = {**inherited, **entry}
        try:
            source = _SOURCE_ADAPTER.validate_python(merged, context=ctx)
        except ValidationError as e:
            problems.extend(f"{label}: {msg}" for msg in _describe(e))
            continue
        except ValueError as e:
            problems.append(f"{label}: {e}")
            continue
        if source.name in seen:
            problems.append(f"{label}: duplicate name, already used by sources[{seen[source.name]}]")
            continue
        seen[source.name] = i
        parsed.append(source)
    if problems:
        raise SourcesConfigError(f"{origin}: invalid sources:\n  " + "\n  ".join(problems))
    return SourceList(sources=tuple(parsed))


_KIND_MODELS: dict[str, type[BaseModel]] = {
    "feed": FeedSource,
    "rss": FeedSource,
    "atom": FeedSource,
    "http_json": HttpJsonSource,
    "files": FilesSource,
    "stdin": StdinSource,
}


def _accepts(kind: Any, key: str) -> bool:
    """Defaults apply only to the fields a kind has (timeout_s means nothing to a files source)."""
    model = _KIND_MODELS.get(kind) if isinstance(kind, str) else None
    return model is None or key in model.model_fields


def load_sources(path: Path, *, env: Mapping[str, str] | None = None) -> SourceList:
    """Read and validate the sources YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourcesConfigError(f"{path}: cannot read the sources file: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SourcesConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    return parse_sources(data, env=env, origin=str(path))
