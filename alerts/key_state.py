"""A key's history in the detector: its baseline (an EWMA of messages and negatives per window, with
its precision) and the lifecycle of each rule on it. Plain state with its JSON form; the decisions are
the detector's (alerts/detector.py)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from alerts.model import Alert
from alerts.stats import beta_binomial_sf, binomial_sf
from alerts.windows import UNREADABLE


@dataclass(slots=True)
class RuleState:
    """Lifecycle of one rule on one key."""

    alert: Alert | None = None
    normal_streak: int = 0
    cooldown: int = 0
    hit_streak: int = 0  # anomalous windows in a row during the cooldown
    quiet_streak: int = 0  # of `normal_streak`, the windows without any message for the key
    critical_streak: int = 0  # windows in a row, each critical on its own, during the cooldown

    def break_normal_run(self) -> None:
        """A window that was not normal: the run of normal (and empty) windows starts again."""
        self.normal_streak = self.quiet_streak = 0

    def break_hit_run(self) -> None:
        """A window that was no hit, or no longer comparable: the cooldown's runs start again."""
        self.hit_streak = self.critical_streak = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert": self.alert.to_dict() if self.alert else None,
            "normal_streak": self.normal_streak,
            "cooldown": self.cooldown,
            "hit_streak": self.hit_streak,
            "quiet_streak": self.quiet_streak,
            "critical_streak": self.critical_streak,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], warnings: list[str] | None = None) -> RuleState:
        """An alert this version cannot read is dropped (noted in `warnings`), not the whole state."""
        raw = data.get("alert")
        alert: Alert | None = None
        if raw:
            try:
                alert = Alert.from_dict(raw)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                if warnings is not None:
                    warnings.append(f"stored alert unusable ({exc!r}), dropped")
        return cls(
            alert=alert,
            normal_streak=int(data.get("normal_streak", 0)),
            cooldown=int(data.get("cooldown", 0)),
            hit_streak=int(data.get("hit_streak", 0)),
            quiet_streak=int(data.get("quiet_streak", 0)),
            critical_streak=int(data.get("critical_streak", 0)),
        )


def empty_pairs() -> array[float]:
    return array("d")


@dataclass(slots=True)
class KeyState:
    """History of one key: EWMA of messages and negatives per window, and its rules' lifecycles.

    Slots, and the resolve pool `recent` as one flat array of (messages, count) pairs: a quiet key's
    pool holds some 30 windows, which as a list of tuples took 2.7 KB of the key's 3.7 KB
    (`python bench/alert_memory.py`), times `alerts.max_keys` per partition."""

    key_type: str
    key: str
    ewma_n: float = 0.0
    ewma_neg: float = 0.0
    ewma_w2n: float = 0.0
    windows_seen: int = 0
    last_seen: int = 0
    prev_n: int = 0
    prev_count: float = 0.0
    prev_base: tuple[float, float, float] = (0.0, 0.0, 0.0)
    recent: array[float] = field(default_factory=empty_pairs)  # n0, count0, n1, count1, ...
    rules: dict[str, RuleState] = field(default_factory=dict)

    def baseline(self) -> Baseline:
        return Baseline(self.ewma_n, self.ewma_neg, self.ewma_w2n)

    def baseline_share(self, floor: float) -> float:
        return self.baseline().share(floor)

    def rule(self, name: str) -> RuleState:
        return self.rules.setdefault(name, RuleState())

    def firing(self) -> bool:
        return any(r.alert is not None for r in self.rules.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_type": self.key_type,
            "key": self.key,
            "ewma_n": self.ewma_n,
            "ewma_neg": self.ewma_neg,
            "ewma_w2n": self.ewma_w2n,
            "windows_seen": self.windows_seen,
            "last_seen": self.last_seen,
            "prev_n": self.prev_n,
            "prev_count": self.prev_count,
            "prev_base": list(self.prev_base),
            "recent": [[int(self.recent[i]), self.recent[i + 1]] for i in range(0, len(self.recent), 2)],
            "rules": {name: r.to_dict() for name, r in self.rules.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], warnings: list[str] | None = None) -> KeyState:
        ewma_n = float(data["ewma_n"])
        # snapshots before the effective-sample-size bookkeeping: assume a long-run EWMA (alpha 0.05)
        w2n = float(data.get("ewma_w2n", ewma_n * 0.05 / 1.95))
        prev_base = data.get("prev_base") or (ewma_n, float(data["ewma_neg"]), w2n)
        return cls(
            key_type=str(data["key_type"]),
            key=str(data["key"]),
            ewma_n=ewma_n,
            ewma_neg=float(data["ewma_neg"]),
            ewma_w2n=w2n,
            prev_base=(float(prev_base[0]), float(prev_base[1]), float(prev_base[2])),
            recent=array("d", [v for n, c in data.get("recent") or () for v in (int(n), float(c))]),
            windows_seen=int(data["windows_seen"]),
            last_seen=int(data["last_seen"]),
            prev_n=int(data.get("prev_n", 0)),
            prev_count=float(data.get("prev_count", 0.0)),
            rules={name: RuleState.from_dict(r, warnings) for name, r in (data.get("rules") or {}).items()},
        )

    def relearn(self) -> None:
        """Back to warm-up, as a new key, after the labeling model changed: a baseline learned from
        another model's labels would compare the new model's calibration with the old one's, not
        today's news with the usual. Its firing alerts are left for the detector to resolve; every
        rule's runs and cooldown start again (the next windows are warm-up, never tested)."""
        self.ewma_n = self.ewma_neg = self.ewma_w2n = 0.0
        self.windows_seen = 0
        self.prev_n, self.prev_count = 0, 0.0
        self.prev_base = (0.0, 0.0, 0.0)
        self.recent = empty_pairs()
        for rule in self.rules.values():
            rule.break_normal_run()
            rule.break_hit_run()
            rule.cooldown = 0

    def rescale(self, ratio: float) -> None:
        """Counts per window after the window size changed by `ratio` (new / old): a stream as busy as
        before must not look like a volume spike. Shares are ratios and stay; w2n scales by ratio^2 so the
        baseline stays worth as many messages as it saw. The previous window no longer lines up with
        the next one, so the pair look waits for a full new window."""
        self.ewma_n *= ratio
        self.ewma_neg *= ratio
        self.ewma_w2n *= ratio * ratio
        n, neg, w2n = self.prev_base
        self.prev_base = (n * ratio, neg * ratio, w2n * ratio * ratio)
        self.prev_n, self.prev_count = 0, 0.0
        for rule in self.rules.values():  # a streak of old-size windows would date a new episode wrongly
            rule.break_hit_run()


@dataclass(frozen=True, slots=True)
class Baseline:
    """A key's usual negative share, estimated from an EWMA over past windows, with its precision.

    `n` and `neg` are the weighted sums of messages and negatives per window (weights w_i of the EWMA),
    `w2n` the sum of w_i^2 n_i. Under a constant share p the estimate neg/n has variance
    p(1-p) w2n / n^2, so n^2 / w2n is the number of messages the baseline is worth: 1,000 after 20
    windows of 50 messages, about 39 windows' worth in the long run of an EWMA with alpha 0.05."""

    n: float
    neg: float
    w2n: float

    def share(self, floor: float) -> float:
        share = self.neg / self.n if self.n > 0 else 0.0
        return min(max(share, floor), 1.0 - 1e-9)

    def effective_messages(self) -> float:
        return self.n * self.n / self.w2n if self.w2n > 0 else 0.0

    def tail(self, count: float, n: int, floor: float) -> float:
        """P(count or more negatives in `n` messages) under this baseline, allowing for its own
        estimation error: the predictive beta-binomial of a Beta posterior (Jeffreys prior) over the
        share, centred on the (floored) estimate and as precise as the history behind it."""
        share = self.share(floor)
        m = self.effective_messages()
        if m <= 0:
            return binomial_sf(count, n, share)
        return beta_binomial_sf(count, n, share * m + 0.5, (1.0 - share) * m + 0.5)


def restore_keys(raw: dict[str, Any], warnings: list[str]) -> dict[str, KeyState]:
    """The key states of a snapshot that this version can read; the others are noted and dropped."""
    keys: dict[str, KeyState] = {}
    for key_id, data in raw.items():
        notes: list[str] = []
        try:
            keys[key_id] = KeyState.from_dict(data, notes)
        except UNREADABLE as exc:
            notes = [f"stored state unusable ({exc!r}), dropped"]
        warnings.extend(f"key {key_id}: {note}" for note in notes)
    return keys
