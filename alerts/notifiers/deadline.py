"""One deadline for a whole HTTP request. httpx's timeouts bound each connect, read and write on its own,
so a receiver that drips its answer a byte at a time (each byte within the timeout) held a send, and the
alert worker's consumer thread with it, for as long as it liked: long enough to pass Kafka's
max.poll.interval.ms and get the worker evicted from its group.

Connections of a client with `install`ed deadlines cut each read, write and connect to what is left of
the running request's deadline (set with `within`), and time out once it has passed. The sources' fetches
do the same for their pinned connections (ingest.sources.connect); this one pins nothing, and works for
connections through a proxy too."""

from __future__ import annotations

import contextvars
import logging
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

logger = logging.getLogger(__name__)

# When the running request must be over (time.monotonic()); None outside a request.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "finsent_notify_deadline", default=None
)
DEADLINE_PASSED = "the request's deadline passed"
SLACK_S = 0.05  # a socket timeout cut to the deadline may end a little before it


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


@contextmanager
def within(deadline: float | None) -> Iterator[None]:
    """Connections used in this block (httpx's sync client does its I/O in the caller's thread) end each
    read, write and connect by `deadline`."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to the running request's deadline; raises `error` once it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error(DEADLINE_PASSED)
    return left if timeout is None else min(timeout, left)


def _timed_out_by_deadline() -> bool:
    """Whether a timeout that just happened is the deadline's, not the operation's own."""
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() > deadline - SLACK_S


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the running request's deadline (none outside one)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout:
            if _timed_out_by_deadline():
                raise httpcore.ReadTimeout(DEADLINE_PASSED) from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))
        except httpcore.WriteTimeout:
            if _timed_out_by_deadline():
                raise httpcore.WriteTimeout(DEADLINE_PASSED) from None
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            timeout = _left(timeout, httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            self._inner.close()  # httpcore closes the plain stream only when start_tls itself fails
            raise
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection a DeadlineStream."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install(client: httpx.Client) -> bool:
    """Give every connection pool of `client` (its own, and those of proxies mounted from the environment)
    deadline-bound connections. httpx 0.28 takes no network backend, so it goes into each pool. False,
    with a warning, when this httpx lays its pools out otherwise: requests are then bounded only per read
    (and their bodies by `post_json`), not failed at start."""
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
        pool._network_backend = DeadlineBackend()
    return True
