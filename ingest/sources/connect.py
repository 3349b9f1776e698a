"""Connections that go where the address guard looked. Checking a name's addresses and then letting the
socket library look the name up again leaves a gap: a DNS server may answer a public address to the check
and 127.0.0.1 to the connection (DNS rebinding). Here the TCP connect itself asks the fetch for the
addresses it may use (looked up and checked once) and dials one of those, never the name.

Only the TCP connect is replaced: httpcore still starts TLS with the URL's host name as the server name,
so SNI and certificate verification are against the name, as without this module."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import httpcore
import httpx

from ingest import http_deadline
from ingest.sources.addresses import IPAddress

# A host name (as in the URL, IDNA) to the checked addresses a connection to it may use; raises when it
# may use none. Set by the fetch that is running, for the connections it makes.
Pin = Callable[[str], Sequence[IPAddress]]

_pin: contextvars.ContextVar[Pin | None] = contextvars.ContextVar("finsent_pin", default=None)
DEADLINE_PASSED = http_deadline.DEADLINE_PASSED  # what a timeout says when the whole fetch's time ran out


@contextmanager
def pinned(pin: Pin, deadline: float | None = None) -> Iterator[None]:
    """Connections opened in this block (httpx's sync client connects in the caller's thread) go
    through `pin`, and their reads and writes in it end by `deadline`: httpx's timeouts are per read, so
    a server dripping its response headers a byte per read held a fetch (and a stopping service) for
    days."""
    pin_token = _pin.set(pin)
    try:
        with http_deadline.within(deadline):
            yield
    finally:
        _pin.reset(pin_token)


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
        timeout = http_deadline.left(timeout, httpcore.ConnectTimeout)
        stream = http_deadline.dial_any(self._inner, found, port, timeout, local_address, socket_options)
        return http_deadline.DeadlineStream(stream)

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
