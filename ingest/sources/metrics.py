"""Prometheus metrics of `finsent sources` (names fixed in docs/CONTRACTS.md), on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ERROR_KINDS = (
    # failed runs
    "timeout",
    "connect",
    "http_status",
    "rate_limited",
    "redirects",
    "too_large",
    "content_type",
    "parse",
    "cancelled",
    "not_found",
    # skipped items
    "empty_text",
    "schema",
    "not_object",
    "invalid_json",
    "invalid_utf8",
    "oversized",
    "unreadable",
    # publishing and the service itself
    "publish",
    "rejected_by_broker",
    "internal",
)
"""The `kind` values of finsent_source_errors_total (docs/sources.md lists them): each source exports all
of them at zero from the start, or increase() would miss the first error of a kind."""


class SourceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.fetched = Counter(
            "finsent_source_items_fetched_total",
            "Items read from a source, valid or not.",
            ["source"],
            registry=registry,
        )
        self.published = Counter(
            "finsent_source_items_published_total",
            "Items acknowledged by Kafka.",
            ["source"],
            registry=registry,
        )
        self.duplicates = Counter(
            "finsent_source_duplicates_total",
            "Items dropped as already published (same id, URL or content within the horizon) or older "
            "than the horizon.",
            ["source"],
            registry=registry,
        )
        self.errors = Counter(
            "finsent_source_errors_total",
            "Failed fetches and unusable items, by kind (timeout, http_status, parse, invalid_json, ...).",
            ["source", "kind"],
            registry=registry,
        )
        self.last_success = Gauge(
            "finsent_source_last_success_timestamp_seconds",
            "Unix time of the last fetch whose items were all published.",
            ["source"],
            registry=registry,
        )
        self.fetch_seconds = Histogram(
            "finsent_source_fetch_seconds",
            "Time to fetch and parse a source.",
            ["source"],
            buckets=FETCH_BUCKETS,
            registry=registry,
        )

    def init_source(self, source: str, now: float) -> None:
        """Export zeroes for a source so that rates and absence alerts work from the start; the last
        success starts at `now` (the start), so FinsentSourceSilent also fires for a source that has not
        succeeded once since then."""
        self.fetched.labels(source)
        self.published.labels(source)
        self.duplicates.labels(source)
        self.fetch_seconds.labels(source)
        for kind in ERROR_KINDS:
            self.errors.labels(source, kind)
        self.last_success.labels(source).set(now)
