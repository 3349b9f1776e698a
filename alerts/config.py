"""Settings of the alerting stage (section `alerts`): detector thresholds, lifecycle, notifiers, state.

Every knob that changes when an alert fires is here, so `finsent backtest` can replay history with exactly
the settings that will run live."""

from __future__ import annotations

import string
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.topic_names import TopicName

KeyType = Literal["ticker", "topic", "source", "all"]
# What `alerts.dashboard_url_template` may name; the detector fills them in (Detector._dashboard).
DASHBOARD_PLACEHOLDERS = ("key_type", "key", "ticker", "topic", "rule", "start_ms", "end_ms")


UNFILLED_LINKS = "alert links are sent as written, unfilled"


def dashboard_template_problem(template: str) -> str | None:
    """Why `template` cannot be filled in, or None; an alert then carries the template itself, unfilled,
    as its link. Reported by `finsent check-config` and logged by the alert worker at start, not refused
    with the settings: they are every command's, and a template an earlier release took as it was (a
    Grafana Explore link with JSON in it) must not stop the labeler."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a format string ({exc}; write a literal brace as {{{{ or }}}})"
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in DASHBOARD_PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in DASHBOARD_PLACEHOLDERS)
            return f"names an unknown placeholder {{{name}}} (known: {known})"
        if spec or conversion:
            return f"gives placeholder {{{name}}} a format or conversion, which it does not take"
    return None


def receiver_url_problem(url: str) -> str | None:
    """Why finsent cannot POST to `url`, or None. Checked when the settings are read (for an enabled
    channel): at send time the error would come back on every try, and its message would quote the URL,
    which may hold a token. The words here never quote it."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds whitespace or a control character"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        return "cannot be parsed"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    return None


def check_receiver_url(name: str, url: str) -> None:
    """Raise ValueError naming the setting `name` (never the URL) when an enabled channel cannot POST to
    `url`, or has none: caught when the settings are read (`finsent check-config` too), not as a
    traceback at start, or, in `finsent run`'s alert worker, as restarts for ever. A URL that is a
    secret is checked only when given (see NotifierSettings.missing_credentials)."""
    if not url:
        raise ValueError(f"{name} is needed when the channel is enabled")
    problem = receiver_url_problem(url)
    if problem is not None:
        raise ValueError(f"{name} {problem} (value not shown: it may hold a token)")


def stripped_secret(value: SecretStr | None) -> SecretStr | None:
    """A secret (URL, token, password) without surrounding whitespace: the newline of a secret file would
    make every request fail (httpx refuses a header with a line break) or every signature and login wrong."""
    return None if value is None else SecretStr(value.get_secret_value().strip())


def stripped_text(value: str | None) -> str | None:
    """A user name without surrounding whitespace (the newline of a secret file)."""
    return None if value is None else value.strip()


def check_header_value(name: str, value: SecretStr | None) -> None:
    """Raise ValueError naming the setting `name` (never its value, a credential) when it cannot go in an
    HTTP header: a line break or other control character inside it, or a non-ASCII character. Sent, it
    would fail every request, and no retry could help."""
    if value is not None and any(not " " <= c <= "~" for c in value.get_secret_value()):
        raise ValueError(
            f"{name} holds a line break, control character or non-ASCII character, which an HTTP header "
            "cannot carry (value not shown: it is a credential)"
        )


class AlertmanagerChannel(BaseModel):
    """Prometheus Alertmanager, API v2 (`POST /api/v2/alerts`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    url: str = Field("", description="Base URL, e.g. http://alertmanager:9093")
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    resend_interval_s: float = Field(60.0, gt=0, description="Firing alerts are re-sent this often.")
    ends_at_factor: float = Field(
        4.0,
        ge=1.0,
        description="While firing, endsAt = now + factor x resend interval (auto-resolve if we die)",
    )
    generator_url: str = Field("", description="generatorURL sent with alerts; default: the dashboard link.")
    rate_limit_per_minute: float = Field(120.0, gt=0)

    @field_validator("url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("password", "bearer_token")
    @classmethod
    def _strip_secret(cls, v: SecretStr | None) -> SecretStr | None:
        return stripped_secret(v)

    @field_validator("username")
    @classmethod
    def _strip_username(cls, v: str | None) -> str | None:
        return stripped_text(v)

    @model_validator(mode="after")
    def _usable_url(self) -> AlertmanagerChannel:
        if self.enabled:
            check_receiver_url("url", self.url)
            check_header_value("bearer_token", self.bearer_token)
        return self


class SlackChannel(BaseModel):
    """A Slack incoming webhook (Slack's format only). Text is escaped for Slack's mrkdwn, not for the
    Markdown of Mattermost or Rocket.Chat, where a headline could post a disguised link or an @channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    webhook_url: SecretStr | None = Field(None, description="The webhook URL is a credential.")
    rate_limit_per_minute: float = Field(6.0, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _strip(cls, v: SecretStr | None) -> SecretStr | None:
        return stripped_secret(v)

    @model_validator(mode="after")
    def _usable_url(self) -> SlackChannel:
        if self.enabled and self.webhook_url is not None and self.webhook_url.get_secret_value():
            check_receiver_url("webhook_url", self.webhook_url.get_secret_value())
        return self


class WebhookChannel(BaseModel):
    """A generic JSON webhook; the body is signed with HMAC-SHA256 when `secret` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    url: SecretStr | None = None
    secret: SecretStr | None = Field(None, description="Signs the body: X-Finsent-Signature: sha256=<hex>.")
    authorization: SecretStr | None = Field(None, description="Sent verbatim as the Authorization header.")
    rate_limit_per_minute: float = Field(60.0, gt=0)

    @field_validator("url", "secret", "authorization")
    @classmethod
    def _strip(cls, v: SecretStr | None) -> SecretStr | None:
        return stripped_secret(v)

    @model_validator(mode="after")
    def _usable_url(self) -> WebhookChannel:
        if self.enabled:
            if self.url is not None and self.url.get_secret_value():
                check_receiver_url("url", self.url.get_secret_value())
            check_header_value("authorization", self.authorization)
        return self


class EmailChannel(BaseModel):
    """SMTP e-mail (plain text + HTML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    host: str = "localhost"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "finsent@localhost"
    recipients: tuple[str, ...] = ()
    subject_prefix: str = "[finsent]"
    timeout_s: float = Field(10.0, gt=0)
    rate_limit_per_minute: float = Field(2.0, gt=0)

    @field_validator("password")
    @classmethod
    def _strip_password(cls, v: SecretStr | None) -> SecretStr | None:
        return stripped_secret(v)

    @field_validator("username")
    @classmethod
    def _strip_username(cls, v: str | None) -> str | None:
        return stripped_text(v)

    @model_validator(mode="after")
    def _no_password_in_clear(self) -> EmailChannel:
        if self.enabled and not self.recipients:
            raise ValueError("recipients are needed when the channel is enabled")
        if self.enabled and self.password is not None and self.security == "none":
            raise ValueError(
                "a password with security 'none' would cross the network in clear text: "
                "use security 'starttls' or 'ssl'"
            )
        return self


class LogChannel(BaseModel):
    """Alerts written to the process log (always useful, on by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    rate_limit_per_minute: float = Field(600.0, gt=0)
    examples: bool = Field(
        False,
        description="Log each alert's example texts and links too (max_examples of them). Off: the texts "
        "are strangers' posts, and the log store keeps them outside finsent's retention and erasure.",
    )


class NotifierSettings(BaseModel):
    """Where alerts go, and how hard we try."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alertmanager: AlertmanagerChannel = AlertmanagerChannel()
    slack: SlackChannel = SlackChannel()
    webhook: WebhookChannel = WebhookChannel()
    email: EmailChannel = EmailChannel()
    log: LogChannel = LogChannel()
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per request.")
    max_retries: int = Field(
        3,
        ge=0,
        description="Failed tries in a row before a transient failure (connection, 5xx, 408, 429) is "
        "reported (ERROR log, outcome failed); the notification stays queued and is retried.",
    )
    backoff_initial_s: float = Field(  # > 0: a wait of 0 tries a failing channel at every step
        0.5, gt=0, description="Wait before a channel that failed is tried again."
    )
    backoff_max_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait between tries of a failing channel (the wait doubles from "
        "backoff_initial_s); a receiver that hangs costs timeout_s of the worker's thread per try.",
    )
    rate_limit_burst: int = Field(3, ge=1, description="Messages a channel may send at once before limiting.")
    digest_min_alerts: int = Field(
        3, ge=2, description="This many alerts due at once on a channel go out as one digest message."
    )
    max_pending: int = Field(
        1000,
        ge=1,
        description="Notifications queued per channel (rate-limited or waiting for a retry); beyond this "
        "the oldest is dropped.",
    )
    max_examples: int = Field(3, ge=0, description="Example texts shown per alert.")

    def missing_credentials(self) -> list[str]:
        """The enabled channels whose address is a secret not given. Only a process that sends needs it
        (`finsent alerts`, or `finsent run` with `alerts.enabled`): a labeler sharing the alert workers'
        config file without the channels' secrets must still start."""
        missing = []
        if self.slack.enabled and not (self.slack.webhook_url and self.slack.webhook_url.get_secret_value()):
            missing.append("alerts.notifiers.slack.webhook_url")
        if self.webhook.enabled and not (self.webhook.url and self.webhook.url.get_secret_value()):
            missing.append("alerts.notifiers.webhook.url")
        return missing


class AlertSettings(BaseModel):
    """The spike detector, the alert lifecycle and the alert worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Run the alert worker inside `finsent run` / `finsent demo`.")
    keys: tuple[KeyType, ...] = Field(
        ("ticker", "topic", "source", "all"), description="Key types watched; events of others are ignored."
    )
    negative_label: str = Field("negative", description="The sentiment label counted as negative.")

    # windows
    window_s: int = Field(900, ge=1, description="Tumbling event-time window size, seconds.")
    allowed_lateness_s: int = Field(300, ge=0, description="A window closes this long after its end.")
    max_future_s: int = Field(
        300, ge=0, description="Event times further ahead of the wall clock are clamped to it (bad clocks)."
    )
    idle_advance_s: float = Field(
        60.0, gt=0, description="With no events for this long, event time advances with the wall clock."
    )
    idle_clock: Literal["labeler", "wall"] = Field(
        "labeler",
        description="How far idle event time may advance: `labeler`, only as far as the labelers' "
        "watermarks say the input is read and labeled (a stopped labeler holds windows open); `wall`, "
        "with the wall clock alone (for a labeled topic that finsent's labeler does not write).",
    )
    key_ttl_windows: int = Field(
        2_000, ge=1, description="A key with no events for this many windows is forgotten (bounded memory)."
    )
    max_keys: int = Field(
        10_000,
        ge=100,
        description="Most keys one labeled partition keeps: past it, at each window close keys are "
        "forgotten (counted in finsent_alert_keys_evicted_total), those still in warm-up first, then "
        "established ones, seen longest ago first; never a firing key or one with events in an open window. "
        "An open window takes events of at most max(max_keys / 10, 100, max_keys - keys kept) keys new "
        'to the partition (finsent_alert_events_skipped_total{reason="key_cap"} counts the others), so '
        "posts full of made-up cashtags cannot grow it without bound. A kept key costs about 1.4 KB of "
        "Python heap (6.4 KB of process memory after a restore) and 0.64 KB of JSON (44 bytes compressed) "
        "in the state record, and a save takes about 0.1 ms of CPU per key (python bench/alert_memory.py): "
        "at the default, 60,000 keys over 6 partitions (more than the US-listed tickers), an alert worker "
        "owning all 6 held 459 MiB and peaked at 487 MiB during a save, within the 768 MiB of "
        "deploy/k8s/alerts.yaml (50,000 per partition: 388 MiB for one partition alone).",
    )

    # baseline
    ewma_alpha: float = Field(0.05, gt=0, le=1, description="EWMA weight of each new normal window.")
    anomalous_ewma_alpha: float = Field(
        0.01, ge=0, le=1, description="EWMA weight of an anomalous window (slow adaptation to level shifts)."
    )
    suspicious_p: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Windows with an uncorrected p-value below this update the baseline slowly.",
    )
    min_baseline_share: float = Field(0.02, gt=0, lt=1, description="Floor of the baseline negative share.")
    warmup_windows: int = Field(8, ge=1, description="Windows with messages needed before a key may alert.")
    model_change: Literal["relearn", "keep"] = Field(
        "relearn",
        description="What a partition's detector does when the labeled events' `model_version` changes (a "
        "version it has not seen among the last 4, or one back after another labeled alone for over an "
        "hour: a rollback; an old and a new version taking turns in a rolling update is one change): "
        "`relearn`, every key re-enters warm-up (no alert for `warmup_windows` windows with messages, its "
        "baseline learned anew from the new model's labels) and its firing alerts resolve, noted "
        '"model changed to <version>: baseline re-learning"; `keep`, baselines learned under the old '
        "model are kept and a shift in the new model's labels is learned only slowly "
        "(`anomalous_ewma_alpha`), alerting meanwhile. Events without `model_version` change nothing.",
    )

    # share rule
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level for the whole family of keys.")
    correction: Literal["bonferroni", "bh", "none"] = Field(
        "bh", description="Multiple-testing correction across keys closing in the same window."
    )
    min_family_size: int = Field(
        10, ge=1, description="Correct for at least this many keys per window (few keys: stay strict)."
    )
    pair_weight: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Share of the level given to the two-window look (the rest: the current window alone).",
    )
    min_effect: float = Field(0.10, gt=0, lt=1, description="Share must exceed the baseline by this much.")
    min_effect_p: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The excess counts as below min_effect only when a binomial test says so at this level.",
    )
    min_count: int = Field(30, ge=1, description="A window with fewer messages never alerts.")
    critical_effect: float = Field(0.25, gt=0, lt=1, description="Share excess that makes an alert critical.")

    # volume rule
    volume_rule: bool = Field(True, description="Also alert on negative-message counts far above usual.")
    volume_min_ratio: float = Field(3.0, gt=1, description="Count must be this many times the usual rate.")
    volume_min_negative: int = Field(10, ge=1, description="Minimum negative messages for the volume rule.")
    volume_critical_ratio: float = Field(6.0, gt=1)

    # lifecycle
    resolve_windows: int = Field(3, ge=1, description="Consecutive normal windows before resolving.")
    resolve_effect_ratio: float = Field(
        0.5, ge=0, le=1, description="A window is normal below ratio x the firing threshold (hysteresis)."
    )
    cooldown_windows: int = Field(
        4,
        ge=0,
        description="Normal windows after a resolve before the key re-alerts; as many anomalous windows in "
        "a row (at least 3) fire a new episode sooner.",
    )
    confidence_weighted: bool = Field(
        False, description="Count P(negative) of each message instead of 1 for an argmax negative."
    )
    repeated_texts: Literal["once", "each"] = Field(
        "once",
        description="`once`: a text counts once per key and window, whatever the number of messages "
        "that carry it, so a copy-paste campaign from many accounts or one story syndicated by several "
        "sources is one voice, not a spike (the copies are counted in "
        'finsent_alert_events_skipped_total{reason="repeated"}); `each`: every message counts. Texts are '
        "compared by their words, lower-cased, without links, @handles, a leading RT, digits, punctuation, "
        "emoji and invisible characters, other letter forms (fullwidth, math bold) read as letters "
        "(accents are kept: they tell words apart in many languages); texts that differ by a word are "
        "different texts, and texts of fewer than 6 words are never repeats (a crowd's short reactions are "
        "many voices).",
    )

    # presentation
    dashboard_url_template: str = Field(
        "",
        description="Link in alerts. Placeholders, URL-encoded: {key_type}, {key}, {rule}; {ticker} and "
        "{topic}: the key when the key type is ticker (topic), else empty; {start_ms}, {end_ms}: the "
        "time range in epoch ms, from four windows before the alert started to one after its window. A "
        "query parameter that is one placeholder left empty (var-topic={topic} in a ticker alert) is left "
        "out, so its Grafana variable keeps its default. A template with another placeholder is sent as "
        "written (finsent check-config notes it); a literal brace is written {{ or }}.",
    )
    max_examples: int = Field(3, ge=0, le=20, description="Most negative example texts kept per key-window.")

    # worker
    group_id: str = "finsent-alerts"
    state_topic: TopicName = Field(
        "finsent.alert-state", description="Compacted topic of detector snapshots."
    )
    state_interval_s: float = Field(
        5.0,
        gt=0,
        description="Snapshot + offset commit at most this often (or ten times the CPU time of the last "
        "save, when longer: a save encodes every key of each changed partition).",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts (earliest: learn baselines from history)."
    )
    notify_max_age_s: float = Field(
        3600.0,
        gt=0,
        description="A transition whose window could close (its end + allowed_lateness_s, in event time) "
        "longer ago than this by the wall clock is not notified: it comes from replayed history.",
    )
    notifiers: NotifierSettings = NotifierSettings()

    @model_validator(mode="after")
    def _check(self) -> AlertSettings:
        if not self.keys:
            raise ValueError("alerts.keys must name at least one key type")
        if self.critical_effect < self.min_effect:
            raise ValueError("alerts.critical_effect must be >= alerts.min_effect")
        if not self.negative_label.strip():
            raise ValueError("alerts.negative_label must not be empty")
        return self
