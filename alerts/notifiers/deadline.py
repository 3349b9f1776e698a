"""One deadline for a whole HTTP request. httpx's timeouts bound each connect, read and write on its own,
so a receiver that drips its answer a byte at a time (each byte within the timeout) held a send, and the
alert worker's consumer thread with it, for as long as it liked: long enough to pass Kafka's
max.poll.interval.ms and get the worker evicted from its group.

Connections of a client with `install`ed deadlines cut each read, write and connect to what is left of
the running request's deadline (set with `within`), and time out once it has passed: the deadline-bound
connections of ingest.http_deadline, which the sources' fetches use too. This installs them in every
pool of a client, those of proxies included."""

from __future__ import annotations

import logging
import time

import httpcore
import httpx

from ingest.http_deadline import DEADLINE_PASSED, DeadlineBackend, passed, within
from ingest.sources.addresses import Resolver, system_resolve

__all__ = ["DEADLINE_PASSED", "install", "passed", "request_deadline", "request_timeout", "within"]

logger = logging.getLogger(__name__)


def request_timeout(client: httpx.Client) -> float | None:
    """How long a whole request of `client` may take: its longest timeout, which httpx applies to each
    connect, read and write alone (None when it has none)."""
    t = client.timeout
    limits = [s for s in (t.connect, t.read, t.write, t.pool) if s is not None]
    return max(limits) if limits else None


def request_deadline(client: httpx.Client) -> float | None:
    """When a request of `client` sent now must be over (time.monotonic())."""
    timeout = request_timeout(client)
    return None if timeout is None else time.monotonic() + timeout


def install(client: httpx.Client, resolve: Resolver = system_resolve) -> bool:
    """Give every connection pool of `client` (its own, and those of proxies mounted from the environment)
    deadline-bound connections, host names looked up by `resolve` within the deadline too. httpx 0.28
    takes no network backend, so it goes into each pool. False, with a warning, when this httpx lays its
    pools out otherwise: requests are then bounded only per read (and their bodies by `post_json`), not
    failed at start."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    pools = [getattr(t, "_pool", None) for t in transports if t is not None]
    usable = [p for p in pools if isinstance(p, httpcore.ConnectionPool) and hasattr(p, "_network_backend")]
    if not usable or len(usable) < len(pools):
        logger.warning(
            "this httpx/httpcore does not let finsent bound a notification request as a whole: "
            "a receiver that answers slowly may hold the alert worker past its timeout"
        )
        return False
    for pool in usable:
        pool._network_backend = DeadlineBackend(resolve=resolve)
    return True
