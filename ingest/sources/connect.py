"""Connections that go where the address guard looked. Checking a name's addresses and then letting the
socket library look the name up again leaves a gap: a DNS server may answer a public address to the check
and 127.0.0.1 to the connection (DNS rebinding). Here the TCP connect itself asks the fetch for the
addresses it may use (looked up and checked once) and dials one of those, never the name.

Only the TCP connect is replaced: httpcore still starts TLS with the URL's host name as the server name,
so SNI and certificate verification are against the name, as without this module."""

from __future__ import annotations

import contextvars
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from ingest.sources.addresses import IPAddress

# A host name (as in the URL, IDNA) to the checked addresses a connection to it may use; raises when it
# may use none. Set by the fetch that is running, for the connections it makes.
Pin = Callable[[str], Sequence[IPAddress]]

_pin: contextvars.ContextVar[Pin | None] = contextvars.ContextVar("finsent_pin", default=None)
# When the running fetch must be over (time.monotonic()); every read and write of its connections waits
# at most until then.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("finsent_deadline", default=None)
DEADLINE_PASSED = "the fetch's deadline passed"
DEADLINE_SLACK_S = 0.05  # a socket timeout cut to the deadline may end a little before it


@contextmanager
def pinned(pin: Pin, deadline: float | None = None) -> Iterator[None]:
    """Connections opened in this block (httpx's sync client connects in the caller's thread) go
    through `pin`, and their reads and writes in it end by `deadline`: httpx's timeouts are per read, so
    a server dripping its response headers a byte per read held a fetch (and a stopping service) for
    days."""
    pin_token, deadline_token = _pin.set(pin), _deadline.set(deadline)
    try:
        yield
    finally:
        _pin.reset(pin_token)
        _deadline.reset(deadline_token)


def _within_deadline(timeout: float | None) -> float | None:
    """`timeout` shortened to the running fetch's deadline; raises ReadTimeout once it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout(DEADLINE_PASSED)
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the running fetch's deadline (none outside a fetch)."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _within_deadline(timeout))
        except httpcore.ReadTimeout:
            deadline = _deadline.get()
            if deadline is not None and time.monotonic() > deadline - DEADLINE_SLACK_S:
                raise httpcore.ReadTimeout(DEADLINE_PASSED) from None  # not the read's own timeout
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _within_deadline(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            timeout = _within_deadline(timeout)
        except httpcore.ReadTimeout:
            self._inner.close()  # httpcore closes the plain stream only when start_tls itself fails
            raise
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """An httpcore network backend whose TCP connects dial the addresses the running fetch's `Pin` gives,
    one after the other as getaddrinfo's list would be tried. Outside a fetch (no pin set) a name is
    handed on as it is. `inner` opens the sockets, and streams, TLS and sleeps are its own."""

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
        pin = _pin.get()
        if pin is None:
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        found = pin(host)
        stream = self._dial_any(
            found, port, _within_deadline(timeout), local_address, list(socket_options or ())
        )
        return DeadlineStream(stream)

    def _dial_any(
        self,
        found: Sequence[IPAddress],
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: list[httpcore.SOCKET_OPTION],
    ) -> httpcore.NetworkStream:
        """The first address that accepts; the last failure if none does. Each one is an IP literal,
        so the inner backend looks nothing up."""
        error: httpcore.ConnectError | httpcore.ConnectTimeout = httpcore.ConnectError(
            "no address to connect to"
        )
        for ip in found:
            try:
                return self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install(client: httpx.Client, backend: httpcore.NetworkBackend) -> None:
    """Make `backend` open the direct connections of `client` (those through a proxy keep their own: the
    proxy resolves the names). httpx 0.28 takes no network backend, so it goes into the connection pool
    of the client's default transport. Should a later httpx lay that out otherwise, this fails loudly
    rather than connect by name unchecked."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError(
            "this httpx/httpcore does not let finsent choose where connections go; "
            "sources cannot pin connections to checked addresses"
        )
    pool._network_backend = backend
