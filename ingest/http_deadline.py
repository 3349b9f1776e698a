"""One deadline for everything a connection does in a block of code. httpx's timeouts bound each
connect, read and write on its own, so a server dripping its answer a byte at a time (each byte within the
timeout) holds a request for as long as it likes. Connections made by a `DeadlineBackend` (or wrapped in a
`DeadlineStream`) cut each connect, read and write to what is left of the deadline set with `within`, and
time out once it has passed. Used by the sources' fetches (ingest.sources.connect) and the alert
notifiers (alerts.notifiers.deadline); httpx's sync client does its I/O in the caller's thread, which the
context variable follows."""

from __future__ import annotations

import contextvars
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpcore

from ingest.sources.addresses import IPAddress, Resolver, literal, resolve_within, system_resolve

# When the running block's I/O must be over (time.monotonic()); None outside one.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "finsent_notify_deadline", default=None
)
DEADLINE_PASSED = "the deadline passed"
SLACK_S = 0.05  # a socket timeout cut to the deadline may end a little before it


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


def left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to the running deadline; raises `error` once it has passed."""
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
            return self._inner.read(max_bytes, left(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout:
            if _timed_out_by_deadline():
                raise httpcore.ReadTimeout(DEADLINE_PASSED) from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._inner.write(buffer, left(timeout, httpcore.WriteTimeout))
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
            timeout = left(timeout, httpcore.ConnectTimeout)
        except httpcore.ConnectTimeout:
            self._inner.close()  # httpcore closes the plain stream only when start_tls itself fails
            raise
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def dial_any(
    inner: httpcore.NetworkBackend,
    found: Sequence[IPAddress],
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
) -> httpcore.NetworkStream:
    """The first of `found` that accepts, tried in order as getaddrinfo's list would be, each within what
    is left of the running deadline; the last failure if none does. Each one is an IP literal, so `inner`
    looks nothing up."""
    options = list(socket_options or ())
    error: httpcore.ConnectError | httpcore.ConnectTimeout = httpcore.ConnectError("no address to connect to")
    for ip in found:
        try:
            attempt = left(timeout, httpcore.ConnectTimeout)
            return inner.connect_tcp(str(ip), port, attempt, local_address, options)
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
            error = e
    raise error


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection a DeadlineStream. Within a deadline, a host name
    is looked up by `resolve` on a helper thread bounded by it: getaddrinfo has no timeout of its own, and
    a resolver that does not answer held a notification (and the alert worker's loop) for as long as the
    system's resolver retried."""

    def __init__(
        self, inner: httpcore.NetworkBackend | None = None, resolve: Resolver = system_resolve
    ) -> None:
        self._inner = inner if inner is not None else httpcore.SyncBackend()
        self._resolve = resolve

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = left(timeout, httpcore.ConnectTimeout)
        if _deadline.get() is None or timeout is None or literal(host) is not None:
            return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        try:
            found = resolve_within(self._resolve, host, timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"looking up {host}: {DEADLINE_PASSED}") from None
        except OSError as e:  # socket.gaierror: the name does not resolve (now)
            raise httpcore.ConnectError(f"looking up {host}: {e}") from e
        return DeadlineStream(dial_any(self._inner, found, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
