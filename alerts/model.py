"""Alerts as plain values: what fired, for which key, with which evidence; stable fingerprints."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

RULE_SHARE = "negative_share"
RULE_VOLUME = "negative_volume"
RULES = (RULE_SHARE, RULE_VOLUME)
# Severities from the least to the most urgent; one this version does not know ranks below them all.
SEVERITY_RANK = {"warning": 0, "critical": 1}
ALERT_NAMES = {RULE_SHARE: "FinsentNegativeSentimentSpike", RULE_VOLUME: "FinsentNegativeVolumeSpike"}


def fingerprint(rule: str, key_type: str, key: str) -> str:
    """Stable across restarts, hosts and versions: a hash of (rule, key type, key) only."""
    return hashlib.sha256(f"{rule}\x1f{key_type}\x1f{key}".encode()).hexdigest()[:16]


# The span `datetime` can hold. An event time may be as late as 9999-12-31T23:59:59Z (parse_event), so the
# end of its window may lie in year 10000, which no datetime (nor RFC 3339 with four digits) can hold.
_FIRST_TS = datetime.min.replace(tzinfo=UTC).timestamp()
_LAST_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def utc_datetime(ts: float) -> datetime:
    """Epoch seconds -> an aware UTC datetime, clamped to years 1..9999 so that it never raises: a window
    that ends past the end of year 9999 is shown as ending at its last second."""
    clamped = min(max(ts, _FIRST_TS), _LAST_TS) if math.isfinite(ts) else (_LAST_TS if ts > 0 else _FIRST_TS)
    return datetime.fromtimestamp(clamped, tz=UTC)


def rfc3339(ts: float | None) -> str | None:
    """Epoch seconds -> `2024-01-02T03:04:05Z` (milliseconds kept when present; clamped to years 1..9999)."""
    if ts is None:
        return None
    dt = utc_datetime(ts)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Example:
    """One of the most negative messages of the alerting window."""

    text: str
    url: str
    negative_prob: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        """Tolerant of fields added or dropped by other versions, like `Alert.from_dict`."""
        return cls(
            text=str(data.get("text", "")),
            url=str(data.get("url", "")),
            negative_prob=_float(data.get("negative_prob", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert (firing or resolved) and the evidence of its latest anomalous window."""

    rule: str
    key_type: str
    key: str
    status: str
    severity: str
    starts_at: float
    ends_at: float | None
    window_start: float
    window_end: float
    count: int
    negative_count: float
    negative_share: float
    baseline_share: float
    expected_negative: float
    p_value: float
    summary: str
    dashboard_url: str = ""
    examples: tuple[Example, ...] = field(default_factory=tuple)
    # Set on the firing transition that raised an open episode's severity: the severity it had before.
    escalated_from: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.key_type, self.key)

    @property
    def alert_id(self) -> str:
        """`<fingerprint>:<starts_at>`: the Elasticsearch id; firing and resolved share it."""
        return f"{self.fingerprint}:{rfc3339(self.starts_at)}"

    @property
    def escalation(self) -> bool:
        """A firing transition of an episode already open, which raised its severity (`escalated_from`)."""
        return self.status == "firing" and self.escalated_from not in ("", self.severity)

    @property
    def opens_episode(self) -> bool:
        """A firing transition that opens an episode (not an escalation of one already open)."""
        return self.status == "firing" and not self.escalation

    @property
    def alertname(self) -> str:
        return ALERT_NAMES.get(self.rule, "FinsentAlert")

    def resolved(self, ends_at: float) -> Alert:
        return replace(self, status="resolved", ends_at=ends_at, escalated_from="")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (snapshots, outbox, webhooks)."""
        data = asdict(self)
        data["examples"] = [asdict(e) for e in self.examples]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        """Read a stored alert (snapshot, outbox) written by this or another version.

        Unknown fields are ignored and missing evidence gets a neutral default, so a field added or
        dropped by a rolling upgrade does not make the whole stored state unusable. What identifies the
        alert (`ALERT_REQUIRED`) must be there: KeyError, or ValueError/TypeError when malformed (also for
        numbers no later step could write: infinite, NaN, or a count beyond 64 bits)."""
        missing = [name for name in ALERT_REQUIRED if name not in data]
        if missing:
            raise KeyError(f"stored alert lacks {', '.join(missing)}")
        starts_at = _float(data["starts_at"])
        defaults: dict[str, Any] = {"window_start": starts_at, "window_end": starts_at, **_ALERT_DEFAULTS}
        values = {**defaults, **{f.name: data[f.name] for f in fields(cls) if f.name in data}}
        if values["escalated_from"] is None:
            values["escalated_from"] = ""
        for name in _ALERT_FLOATS:
            values[name] = _float(values[name])
        for name in _ALERT_STRINGS:
            values[name] = str(values[name])
        values["count"] = int(values["count"])
        if not 0 <= values["count"] < 2**63:
            raise ValueError(f"stored alert has a count of {str(values['count'])[:30]}")
        values["ends_at"] = None if values["ends_at"] is None else _float(values["ends_at"])
        values["examples"] = tuple(_examples(values["examples"]))
        return cls(**values)

    def es_document(self) -> dict[str, Any]:
        """The `<prefix>-alerts` document (fields fixed in docs/CONTRACTS.md)."""
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "key_type": self.key_type,
            "key": self.key,
            "status": self.status,
            "severity": self.severity,
            "escalated_from": self.escalated_from,
            "starts_at": rfc3339(self.starts_at),
            "ends_at": rfc3339(self.ends_at),
            "summary": self.summary,
            "p_value": self.p_value,
            "negative_share": self.negative_share,
            "baseline_share": self.baseline_share,
            "count": self.count,
            "negative_count": self.negative_count,
            "window_start": rfc3339(self.window_start),
            "window_end": rfc3339(self.window_end),
            "dashboard_url": self.dashboard_url,
        }


def transition_counts(alerts: Iterable[Alert]) -> tuple[int, int, int]:
    """(episodes opened, escalations, the rest: resolves) among transitions, as summaries count them."""
    opened = escalated = resolved = 0
    for a in alerts:
        if a.opens_episode:
            opened += 1
        elif a.escalation:
            escalated += 1
        else:
            resolved += 1
    return opened, escalated, resolved


ALERT_REQUIRED = ("rule", "key_type", "key", "status", "starts_at")
# neutral evidence for fields a stored alert may lack (window bounds default to its start)
_ALERT_DEFAULTS: dict[str, Any] = {
    "severity": "warning",
    "ends_at": None,
    "count": 0,
    "negative_count": 0.0,
    "negative_share": 0.0,
    "baseline_share": 0.0,
    "expected_negative": 0.0,
    "p_value": 1.0,
    "summary": "",
    "dashboard_url": "",
    "examples": (),
    "escalated_from": "",
}
_ALERT_FLOATS = (
    "starts_at",
    "window_start",
    "window_end",
    "negative_count",
    "negative_share",
    "baseline_share",
    "expected_negative",
    "p_value",
)
_ALERT_STRINGS = (
    "rule",
    "key_type",
    "key",
    "status",
    "severity",
    "summary",
    "dashboard_url",
    "escalated_from",
)


def _float(value: Any) -> float:
    """A stored number as a finite float; ValueError otherwise (float() of an integer too large for a
    float raises OverflowError, and NaN or infinities would fail every later save)."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"stored number out of range: {str(value)[:30]}") from None
    if not math.isfinite(number):
        raise ValueError(f"stored number is not finite: {number}")
    return number


def _examples(raw: Any) -> list[Example]:
    """The usable examples of a stored alert; a malformed one is only evidence, so it is dropped."""
    out: list[Example] = []
    for item in raw if isinstance(raw, list | tuple) else ():
        try:
            out.append(Example.from_dict(item))
        except (AttributeError, TypeError, ValueError):
            continue
    return out
