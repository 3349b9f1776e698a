"""Deduplication decisions across sources and restarts (pure; persisted by the state store).

A message is a duplicate when any of its keys (id, canonical URL, content hash) was recorded or seen
again within the horizon. Items older than the horizon are skipped as stale, because the index no longer
remembers whether they were published; an item without a usable date cannot be, so seeing it again keeps
its keys: together this keeps a long-lived feed entry from coming back after a week."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ingest.sources.timeparse import parse_time

ID_KEY_PREFIX = "id:"
"""The key of an item's own id among its dedup keys (ingest.sources.normalize.dedup_keys)."""


@dataclass
class DedupIndex:
    """Key -> time recorded, or last seen again as a duplicate (Unix seconds)."""

    horizon_s: float
    entries: dict[str, float] = field(default_factory=dict)

    def is_duplicate(self, keys: Iterable[str], now: float) -> bool:
        cutoff = now - self.horizon_s
        return any((t := self.entries.get(k)) is not None and t >= cutoff for k in keys)

    def record(self, keys: Iterable[str], now: float) -> None:
        """Remember keys as published at `now`; a key past the horizon (not yet pruned) starts again."""
        cutoff = now - self.horizon_s
        for k in keys:
            t = self.entries.get(k)
            if t is None or t < cutoff:
                self.entries[k] = now

    def seen_again(self, keys: Iterable[str], now: float) -> bool:
        """Move a duplicate's own id key up to `now` when it is remembered, so that an entry a feed keeps
        listing is never forgotten while it is listed (one without a date is never stale either: it
        came back each horizon). Only the id: another item with the same text or link (a daily notice)
        must not keep the first one's content and URL keys alive, or that text would never be published
        again. Only a key older than half the horizon moves, so that the saved index is rewritten at most
        twice a horizon per entry, not at every fetch. True when it moved."""
        cutoff = now - self.horizon_s
        moved = False
        for k in keys:
            t = self.entries.get(k)
            if k.startswith(ID_KEY_PREFIX) and t is not None and cutoff <= t < now - self.horizon_s / 2:
                self.entries[k] = now
                moved = True
        return moved

    def prune(self, now: float) -> int:
        """Forget keys older than the horizon; returns how many were dropped."""
        cutoff = now - self.horizon_s
        old = [k for k, t in self.entries.items() if t < cutoff]
        for k in old:
            del self.entries[k]
        return len(old)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "entries": self.entries}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], horizon_s: float) -> DedupIndex:
        raw = data.get("entries", {})
        entries = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        return cls(horizon_s=horizon_s, entries=entries)


def is_stale(message: Mapping[str, Any], now: float, horizon_s: float) -> bool:
    """True when the message's published_at is older than the dedup horizon."""
    when: datetime | None = parse_time(message.get("published_at"))
    return when is not None and when.timestamp() < now - horizon_s
