"""The cached partitioner puts every keyed record where kafka-python's (and the Java client's) default
partitioner does, and keeps its table bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from finsent.outputs.partitioner import CachedKeyPartitioner


class Cluster:
    """The three ClusterMetadata calls a partitioner makes, over a fixed topic -> partitions map."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


@given(keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30), count=st.integers(1, 64))
def test_same_partition_as_the_default_partitioner(keys: list[bytes], count: int) -> None:
    cluster = Cluster({"t": set(range(count))})
    cached, default = CachedKeyPartitioner(max_keys=8), DefaultPartitioner()
    for key in keys + keys:  # the second pass is served from the table (until it is cleared)
        assert cached.partition("t", key, key, None, None, cluster) == default.partition(
            "t", key, key, None, None, cluster
        )


def test_known_key_partitions_and_sparse_partition_ids() -> None:
    # Partition ids are taken in sorted order, as the default partitioner does.
    cluster = Cluster({"t": {7, 3, 11}})
    partitioner = CachedKeyPartitioner()
    for key in (b"all:*", b"ticker:AAPL", b"topic:Earnings", b""):
        assert partitioner.partition("t", None, key, None, None, cluster) == DefaultPartitioner().partition(
            "t", None, key, None, None, cluster
        )


def test_the_table_is_bounded() -> None:
    partitioner = CachedKeyPartitioner(max_keys=3)
    for i in range(10):
        partitioner.key_hash(f"k{i}".encode())
        assert len(partitioner._hashes) <= 3


def test_null_keys_spread_over_the_partitions_and_unknown_topics_fail() -> None:
    cluster = Cluster({"t": {0, 1, 2}})
    partitioner = CachedKeyPartitioner()
    seen = {partitioner.partition("t", None, None, b"v", b"v", cluster) for _ in range(200)}
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="not found"):
        partitioner.partition("missing", b"k", b"k", None, None, cluster)
