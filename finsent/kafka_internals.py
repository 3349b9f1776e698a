"""The places finsent reaches into kafka-python 3's internals, in one module so that an upgrade has one
file to check (kafka-python is pinned below 4). Each returns None where the attribute is missing, and
callers then take the safe path."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def io_loop_sleep(consumer: Any) -> Sleep | None:
    """The `sleep` coroutine of the consumer's IO loop. kafka-python 3 runs rebalance listeners on that
    loop: a listener that must wait (for a batch, for a helper thread) awaits this instead of blocking."""
    sleep = getattr(getattr(consumer, "_net", None), "sleep", None)
    return sleep if callable(sleep) else None


def rejoin_pending(consumer: Any) -> bool | None:
    """Whether the consumer's group coordinator is about to (re)join the group; None when unknown.
    kafka-python has no public call for a pending rebalance."""
    need_rejoin = getattr(getattr(consumer, "_coordinator", None), "need_rejoin", None)
    return bool(need_rejoin()) if callable(need_rejoin) else None


def abandoned_join(consumer: Any) -> bool | None:
    """Whether the consumer's group coordinator has a join under way that kafka-python will never finish
    by itself; None when unknown (internals changed, logged once).

    kafka-python 3.0.12 revokes (on_partitions_revoked), sets `rejoining` and starts a JoinGroup/SyncGroup
    task, then waits for it at most poll()'s timeout. A poll that runs out of time (the revocation
    listener alone can take longer than JOIN_POLL_MS) leaves the task running, and the next poll waits
    for it again, but only while need_rejoin() is true. When the rejoin was asked for by a change the
    member saw itself and not by the coordinator (the leader's assignment snapshot differing from the topic
    metadata, a pattern subscription gaining a topic), the join itself brings the two back in line:
    need_rejoin() turns false, poll() no longer enters the join, the assignment is never applied (no
    on_partitions_assigned; consumer.assignment() still lists the revoked partitions, and nothing is
    fetched), `rejoining` stays set and heartbeats stay off, for good. At any other time `rejoining` is
    false (it is cleared, with the rejoin flag, when a join completes), or need_rejoin() is true. Call it
    from the consumer's own thread, outside poll()."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    if not callable(need_rejoin) or not isinstance(getattr(coordinator, "rejoining", None), bool):
        _warn_once("kafka-python's coordinator internals changed: abandoned group joins are not detected")
        return None
    if need_rejoin():  # read first: a completing join clears `rejoining` before the rejoin flag
        return False
    return bool(coordinator.rejoining)


def resume_join(consumer: Any) -> bool:
    """Have the consumer's next poll() take up its abandoned join (see abandoned_join): it waits for the
    join task again, or starts a new one if it ended, and then applies the assignment and calls
    on_partitions_assigned; the revocation is not repeated. False when kafka-python's internals changed."""
    request_rejoin = getattr(getattr(consumer, "_coordinator", None), "request_rejoin", None)
    if not callable(request_rejoin):
        return False
    request_rejoin()
    return True


def known_partitions(consumer: Any, topic: str) -> int:
    """How many partitions `topic` has in the consumer's metadata cache (0 when it is not known), without
    asking the cluster: KafkaConsumer.partitions_for_topic() fetches all topics' metadata, and waits for
    it without a bound, whenever a topic is not cached (e.g. a subscribed topic that does not exist)."""
    cluster = getattr(consumer, "_cluster", None)
    lookup = getattr(cluster, "partitions_for_topic", None)
    parts = lookup(topic) if callable(lookup) else None
    return len(parts) if parts else 0


def release_parked_records(consumer: Any) -> int | None:
    """Drop the records kafka-python parked for partitions that are no longer paused when it would not
    put them back itself, so that they are fetched again from their position; returns how many
    partitions (None: internals not found, logged once).

    kafka-python 3.0.12 parks the parsed records of a partition paused mid-way through them, and puts
    them back after a resume only when its in-line slot is empty (None) at the start of a poll, which it
    never is while another partition's records keep coming. Until then the partition is left out of
    every fetch: it stops for good (seen after a rebalance during an Elasticsearch outage). Its position
    is still at the first parked record, so fetching again loses and repeats nothing. Called from the
    consumer's own thread, or from a rebalance listener while that thread waits in poll(): kafka-python
    touches these only from one of them at a time."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    is_paused = getattr(getattr(consumer, "_subscription", None), "is_paused", None)
    if (
        not isinstance(parked, dict)
        or not hasattr(fetcher, "_next_partition_records")
        or not callable(is_paused)
    ):
        _warn_once(
            "kafka-python's fetcher internals changed: parked records of resumed partitions are not checked"
        )
        return None
    if fetcher._next_partition_records is None:
        return 0  # kafka-python puts them back at the next poll
    resumed = [tp for tp in parked if not is_paused(tp)]
    for tp in resumed:
        parked.pop(tp).drain()
    return len(resumed)


def track_topic(producer: Any, topic: str) -> bool:
    """Have the producer keep `topic` in every metadata request it makes from now on; False when
    kafka-python's internals changed (logged once).

    kafka-python 3.0.12 replaces its whole partition table with each metadata answer, and asks only for
    the topics it tracks, which it starts tracking only when send() finds a topic missing from that table.
    Its first metadata request names no topic, and noida-db and Tansu answer it with every topic: a topic
    that already existed then is never tracked. The first send to one that did not (the dead-letter topic
    at a first start, created after the labeled one) asked for that one alone, the other dropped out of the
    table, and its records waited for a leader that no metadata answer named again, the flush with them,
    with the sender thread spinning, until the delivery timeout (2 minutes) expired them."""
    add = getattr(getattr(producer, "_sender", None), "add_topic", None)
    if not callable(add):
        _warn_once("kafka-python's producer internals changed: output topics are not tracked in its metadata")
        return False
    add(topic)  # thread-safe: the sender thread adds it before its next metadata request
    return True


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("%s", message)
