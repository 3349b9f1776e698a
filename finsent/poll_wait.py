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

import logging
import time
from typing import Any

from finsent.kafka_internals import abandoned_join, rejoin_pending, resume_join

log = logging.getLogger(__name__)

JOIN_POLL_MS = 100
"""poll()'s timeout while the group is not settled (joining, or a rebalance pending)."""
ABANDONED_JOIN_GRACE_S = 1.0
"""How long a join kafka-python gave up on (finsent.kafka_internals.abandoned_join) is left before the
loop has the next poll take it up again."""
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


class JoinWatch:
    """Takes up group joins that kafka-python abandoned (finsent.kafka_internals.abandoned_join): a poll
    with JOIN_POLL_MS can run out of time while a slow on_revoked runs, and when the rejoin came from a
    metadata change the join then completes out of sight and its assignment is never applied; the
    member keeps no partitions, for good, while its probes stay healthy. A loop calls check() before each
    poll, from the consumer's thread; once the state has lasted ABANDONED_JOIN_GRACE_S, check() asks for
    a rejoin (the next poll then finishes the join and calls on_partitions_assigned) and logs a warning.
    A member with nothing to do (more consumers than partitions) completes its joins and is never in that
    state; after a rejoin is asked for, need_rejoin() holds until a join completes, so it cannot repeat
    before the next join."""

    def __init__(self, consumer: Any, grace_s: float = ABANDONED_JOIN_GRACE_S) -> None:
        self._consumer = consumer
        self._grace_s = grace_s
        self._since: float | None = None

    def check(self, now: float | None = None) -> bool:
        """True when it asked for a rejoin."""
        if not abandoned_join(self._consumer):
            self._since = None
            return False
        now = time.monotonic() if now is None else now
        if self._since is None:
            self._since = now
            return False
        if now - self._since < self._grace_s:
            return False
        self._since = None
        if not resume_join(self._consumer):
            return False
        log.warning(
            "kafka-python abandoned a group join (its poll ran out of time and the rejoin is no longer "
            "pending): rejoining so that the assignment is applied"
        )
        return True
