"""Topics with explicit partitions, for the demo, the benches and the tests: create the missing ones, then
wait until the cluster's metadata lists all of their partitions, so a producer or consumer started next
does not race the creation (brokers create topics asynchronously)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any


def ensure_topics(
    client_kwargs: Mapping[str, Any], topics: Sequence[tuple[str, int]], *, timeout_s: float = 15.0
) -> None:
    """Create each (name, partitions) that does not exist yet (replication 1) and wait for its metadata;
    existing topics are left as they are. Raises TimeoutError if the metadata does not show up in time."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_kwargs)
    try:
        existing = set(admin.list_topics())
        new = {name: partitions for name, partitions in topics if name not in existing}
        if new:
            with suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, n, 1) for name, n in new.items()])
    finally:
        admin.close()
    if not new:
        return
    probe = KafkaConsumer(**client_kwargs)
    try:
        deadline = time.monotonic() + timeout_s
        waiting = new
        while True:
            waiting = {
                name: n for name, n in waiting.items() if len(probe.partitions_for_topic(name) or ()) < n
            }
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible after {timeout_s:.0f} s: {', '.join(waiting)}")
            probe.topics()  # forces a metadata refresh
            time.sleep(0.1)
    finally:
        probe.close()
