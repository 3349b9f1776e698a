"""The pipeline's Prometheus metrics, created on a registry passed in (names fixed in docs/CONTRACTS.md)."""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.message import ERROR_CODES

# Up to an hour: publish-to-label latency in a backlog (a restart, an outage) is minutes, not seconds.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
# Up to 8192: pipeline.batch_max_messages is 1024-4096 on a GPU.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# From 0.1: the top probability of the 20-class topic head can be as low as 0.05.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
MAX_SOURCE_LABELS = 200
"""Sources are named by the producers: the first this many keep their name as a label value, later ones are
counted as `other`, so a producer inventing sources cannot blow up the series count."""


_CONSUMER_LAG: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()
_CONSUMER_LAG_LOCK = threading.Lock()


def consumer_lag(registry: CollectorRegistry) -> Gauge:
    """`finsent_consumer_lag_messages` on `registry`, made once per registry: in `finsent run` the
    pipeline and the alert worker beside it share one registry and each sets the gauge for its own input
    topic (a second Gauge of the same name would be refused as a duplicate)."""
    with _CONSUMER_LAG_LOCK:
        gauge = _CONSUMER_LAG.get(registry)
        if gauge is None:
            gauge = _CONSUMER_LAG[registry] = Gauge(
                "finsent_consumer_lag_messages",
                "Log-end offset minus the next offset to poll, per input partition owned.",
                ["topic", "partition"],
                registry=registry,
            )
        return gauge


class PipelineMetrics:
    """All series of `finsent run`; ticker labels are capped to `tracked_tickers` (others are `other`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        tracked_tickers: Iterable[str] = (),
        sentiments: Iterable[str] = (),
        topics: Iterable[str] = (),
    ) -> None:
        self.tracked_tickers = frozenset(t.upper() for t in tracked_tickers)
        self._sources: set[str] = set()
        self._sources_lock = threading.Lock()
        self.consumed = Counter(
            "finsent_messages_consumed", "Messages read from the input topics.", ["source"], registry=registry
        )
        self.labeled = Counter(
            "finsent_messages_labeled", "Messages labeled and written.", ["source"], registry=registry
        )
        self.dead_lettered = Counter(
            "finsent_messages_dead_lettered",
            "Messages sent to the dead-letter topic.",
            ["reason"],
            registry=registry,
        )
        self.labels = Counter("finsent_labels", "Labels given.", ["topic", "sentiment"], registry=registry)
        self.ticker_labels = Counter(
            "finsent_ticker_labels",
            "Sentiment labels per tracked ticker.",
            ["ticker", "sentiment"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "finsent_batch_size_messages", "Messages per batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.inference_seconds = Histogram(
            "finsent_inference_seconds", "Model time per batch.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.publish_to_label = Histogram(
            "finsent_publish_to_label_seconds",
            "From the Kafka record timestamp to the labeled output being durable.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.confidence = Histogram(
            "finsent_label_confidence",
            "Probability of the chosen label.",
            ["head"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.lag = consumer_lag(registry)
        self.lag_fallbacks = Counter(
            "finsent_consumer_lag_fallbacks",
            "Lag updates made from the last fetched high watermark because the brokers' end offsets did not "
            "come in time (the lag gauge may then read low while partitions are paused).",
            registry=registry,
        )
        self.inference_errors = Counter(
            "finsent_inference_errors", "Failed inference calls.", registry=registry
        )
        self.output_errors = Counter(
            "finsent_output_errors", "Failed output attempts (retried).", ["output"], registry=registry
        )
        self.batches = Counter("finsent_batches", "Batches written and committed.", registry=registry)
        self.last_batch = Gauge(
            "finsent_last_batch_timestamp_seconds",
            "Unix time of the last written batch (the worker's start until the first one).",
            registry=registry,
        )
        # From the start, so that FinsentNoData counts its 30 minutes from a restart, not from 1970.
        self.last_batch.set(time.time())
        self.model_info = Gauge(
            "finsent_model_info",
            "The model in use (value 1).",
            ["version", "device", "variant"],
            registry=registry,
        )
        for head in ("topic", "sentiment"):
            self.confidence.labels(head=head)
        for output in ("kafka", "elasticsearch"):
            self.output_errors.labels(output=output)
        # Series that exist from the start: rate()/increase() miss a counter's first increment, so a
        # first burst of a new dead-letter reason, or a tracked ticker's first negatives, would not count.
        for reason in ERROR_CODES:
            self.dead_lettered.labels(reason=reason)
        sentiments = tuple(sentiments)
        for ticker in self.tracked_tickers:
            for sentiment in sentiments:
                self.ticker_labels.labels(ticker=ticker, sentiment=sentiment)
        for topic in topics:  # the model's labels: 20 x 3 series for the shipped one
            for sentiment in sentiments:
                self.labels.labels(topic=topic, sentiment=sentiment)

    def ticker_label(self, ticker: str) -> str:
        return ticker if ticker in self.tracked_tickers else "other"

    def source_label(self, source: str) -> str:
        """`source`, or `other` once MAX_SOURCE_LABELS other sources have been seen (the consume loop and
        the output thread share the set)."""
        if source in self._sources:
            return source
        with self._sources_lock:
            if len(self._sources) < MAX_SOURCE_LABELS:
                self._sources.add(source)
                return source
        return "other"

    def count_consumed(self, sources: Iterable[str]) -> None:
        """One increment per source and poll, not per message."""
        for source, n in Tally(sources).items():
            self.consumed.labels(source=self.source_label(source)).inc(n)
