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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore

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
        timeout = left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

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
