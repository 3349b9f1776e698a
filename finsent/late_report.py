"""A periodic summary of the labeled events that came after their window had closed: counted in
`finsent_alert_events_skipped_total{reason="late"}` without a key label (sources and tickers are
unbounded), so the log says which keys they were, how late, and how many, once a minute at most."""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.alert_text import lag_words

REPORT_EVERY_S = 60.0
MAX_KEYS = 1_000
"""Keys tallied between two reports; late events of further keys are counted in the total only."""
SHOWN = 3


@dataclass
class LateTally:
    """Late events since the last report: per key id, how many, and the longest delay (labeled - dated)."""

    total: int = 0
    by_key: dict[str, list[float]] = field(default_factory=dict)  # key id -> [count, longest delay s]
    since: float | None = None

    def add(self, key_id: str, delay_s: float, now: float) -> None:
        if self.since is None:
            self.since = now
        self.total += 1
        entry = self.by_key.get(key_id)
        if entry is not None:
            entry[0] += 1
            entry[1] = max(entry[1], delay_s)
        elif len(self.by_key) < MAX_KEYS:
            self.by_key[key_id] = [1, delay_s]

    def report(self, now: float, allowed_lateness_s: float) -> str | None:
        """The summary line when one is due (REPORT_EVERY_S after the first late event since the last
        report), and a fresh tally; None otherwise."""
        if self.since is None or now - self.since < REPORT_EVERY_S:
            return None
        line = late_summary(self.total, self.by_key, now - self.since, allowed_lateness_s)
        self.total, self.by_key, self.since = 0, {}, None
        return line


def late_summary(total: int, by_key: dict[str, list[float]], span_s: float, allowed_lateness_s: float) -> str:
    """One line: the count, and the keys with the most late events, sources first (a source whose clock
    or time zone is off makes every key of its messages late; its `source:` key names the culprit)."""
    sources = {k: v for k, v in by_key.items() if k.startswith("source:")}
    pool = sources or by_key
    top = sorted(pool.items(), key=lambda kv: (-kv[1][0], kv[0]))[:SHOWN]
    shown = ", ".join(f"{k} ({int(v[0])}, up to {lag_words(v[1])} after its date)" for k, v in top)
    return (
        f"{total} labeled event(s) in the last {span_s:.0f} s came after their window had closed "
        f"(alerts.allowed_lateness_s={allowed_lateness_s:g}) and were not counted; most: {shown}. A source "
        "dated hours off is a wrong time zone (sources: dates_timezone) or clock; a slow source needs a "
        "larger allowed_lateness_s"
    )
