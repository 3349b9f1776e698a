"""Kafka's default key partitioning with the key hashes remembered.

kafka-python hashes every record key with a pure-Python murmur2: about a quarter of the producer's CPU per
labeled event (bench/outputs.py). Labeled-event keys repeat all the time (`all:*`, one per topic label, per
source, per ticker), so their hashes are kept in a bounded table. Partitions are the same as the Java
client's and kafka-python's `DefaultPartitioner` (tested), so keyed records stay where other producers put
them."""

from __future__ import annotations

from typing import Any

from kafka.partitioner import DefaultPartitioner, Partitioner, murmur2

MAX_CACHED_KEYS = 100_000
"""Hashes kept before the table is cleared (about 10 MB at the most); a new key costs one murmur2 again."""


class CachedKeyPartitioner(Partitioner):  # type: ignore[misc]
    """`DefaultPartitioner` with murmur2(key) memoised; null keys go to `DefaultPartitioner` itself."""

    def __init__(self, max_keys: int = MAX_CACHED_KEYS) -> None:
        self.max_keys = max_keys
        self._hashes: dict[bytes, int] = {}
        self._fallback = DefaultPartitioner()

    def key_hash(self, key: bytes) -> int:
        """murmur2(key) & 0x7fffffff, as the Java client's `Utils.toPositive(Utils.murmur2(key))`."""
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self.max_keys:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        if serialized_key is None:
            return int(self._fallback.partition(topic, key, serialized_key, value, serialized_value, cluster))
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        ordered = sorted(partitions)
        return int(ordered[self.key_hash(serialized_key) % len(ordered)])
