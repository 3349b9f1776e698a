"""How the consume loops (the labeler's, finsent/runner.py, and the alert worker's) wait for records
without spinning.

Some Kafka-protocol brokers (noida-db, the demo's) answer an empty fetch at once instead of holding it for
`fetch.max.wait.ms`, so a caught-up consumer waiting inside `poll()` re-fetches in a loop and takes a whole
core (docs/performance.md, "Why the consume loop mattered most"). Once the group is settled the loops
therefore poll with `timeout_ms=0` and wait on their own timer between polls: briefly after a poll that
brought records, longer (doubling, up to a cap) while polls bring nothing. With Apache Kafka this costs
nothing: a fetch stays in flight at the broker until data arrives, and the next non-blocking poll returns
it. While joining, poll() blocks (JOIN_POLL_MS): the join needs every step promptly, and with no partitions
there is nothing to fetch, so nothing to spin on."""

from __future__ import annotations

from typing import Any

from finsent.kafka_internals import rejoin_pending

JOIN_POLL_MS = 100
"""poll()'s timeout while the group is not settled (joining, or a rebalance pending)."""
FIRST_IDLE_WAIT_S = 0.005
"""After a poll that brought nothing, wait this long before the next; doubled while the input stays
empty, up to the loop's cap (`idle_wait_s`)."""


def group_settled(consumer: Any) -> bool:
    """Whether the consumer holds partitions and no rebalance is pending: only then may a loop poll
    without blocking. kafka-python has no public call for a pending rebalance (see
    finsent.kafka_internals); when it cannot tell, the loop blocks."""
    if not consumer.assignment():
        return False
    return rejoin_pending(consumer) is False


def poll_timeout_ms(settled: bool) -> int:
    """poll()'s timeout: none once the group is settled (the loop waits on its own timer instead)."""
    return 0 if settled else JOIN_POLL_MS


def idle_wait_s(previous_s: float, max_s: float) -> float:
    """The wait after another poll that brought nothing, given the previous one (0 after records):
    FIRST_IDLE_WAIT_S, doubling, up to `max_s` (never below FIRST_IDLE_WAIT_S)."""
    return max(FIRST_IDLE_WAIT_S, min(max_s, previous_s * 2))
