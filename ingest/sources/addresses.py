"""Which addresses a redirect may lead to. A feed's redirects say whatever the feed's owner (or whoever
took the feed over) wants, and a fetched body ends up in Kafka: a redirect to loopback, link-local (the
cloud metadata address 169.254.169.254), private or unique-local addresses would let a feed read internal
services through the worker. Behind a proxy the proxy looks names up, not the worker: then only hosts
written as addresses (and `localhost`) are judged here. Pure logic, except `system_resolve` and
`resolve_within`."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A host name to every address it stands for; raises OSError (socket.gaierror) when it has none.
Resolver = Callable[[str], Sequence[IPAddress]]

# NAT64's well-known prefix (RFC 6052) carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped ::ffff:a.b.c.d, 6to4 2002::/16, NAT64
    64:ff9b::/96), if any: a connection to it reaches that IPv4 address, so that one is classified."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally reachable unicast. Checked on the embedded IPv4 address where there is one, since
    ipaddress's own view of those forms changed between Python patch releases."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            return is_public(v4)
        if ip.is_site_local:  # fec0::/10, deprecated yet still routed inside some networks
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def literal(host: str) -> IPAddress | None:
    """The address a host is by itself when it is an IP literal ("[::1]", "fe80::1%25eth0"), else None.
    Other numeric forms ("2130706433", "0x7f.1") are left to the resolver, which reads them the way the
    connection will."""
    try:
        return ipaddress.ip_address(unquote(host.strip("[]")))
    except ValueError:
        return None


def system_resolve(host: str) -> list[IPAddress]:
    """Every address getaddrinfo gives for `host`: the same list the connection will try one by one."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [
        ipaddress.ip_address(str(sockaddr[0]))
        for family, *_, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


def resolve_within(resolve: Resolver, host: str, timeout_s: float) -> Sequence[IPAddress]:
    """`resolve(host)`, or TimeoutError after `timeout_s`. getaddrinfo takes no timeout of its own, so it
    runs on a daemon thread that is left to finish by itself if it takes longer."""
    if timeout_s <= 0:
        raise TimeoutError(f"no time left to resolve {host}")
    answer: Future[Sequence[IPAddress]] = Future()

    def run() -> None:
        try:
            answer.set_result(resolve(host))
        except BaseException as e:  # handed to the waiting caller, whatever it is
            answer.set_exception(e)

    threading.Thread(target=run, name="finsent-resolve", daemon=True).start()
    return answer.result(timeout=timeout_s)  # concurrent.futures.TimeoutError is TimeoutError


def addresses_of(host: str, resolve: Resolver) -> Sequence[IPAddress]:
    """The addresses a URL's host leads to: the literal itself, or what the resolver says."""
    ip = literal(host)
    return [ip] if ip is not None else resolve(host)


def numeric(host: str) -> IPAddress | None:
    """The address a host is written as, without any lookup: an IP literal, or a numeric form the C
    library reads as one ("2130706433", "0x7f.1", "127.1"), as a proxy handing the name to getaddrinfo
    would. None for a name."""
    ip = literal(host)
    if ip is not None:
        return ip
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):  # gaierror: not numeric; the flag forbids a lookup
        return None
    return ipaddress.ip_address(str(infos[0][4][0])) if infos else None


def is_localhost(host: str) -> bool:
    """`localhost` and names under it, loopback by definition (RFC 6761) without a lookup: through a
    proxy on the same machine or pod, they would reach the worker's own services."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def is_public_host(host: str, resolve: Resolver, *, proxied: bool = False) -> bool:
    """True when every address of `host` is public; a host with no address at all is not. Reached
    through a proxy (`proxied`), a name is not looked up here: the proxy resolves it, maybe with other
    DNS than the worker's (or where the worker has none), so only an address written in the host is
    judged and a name counts as public (but `localhost`), the proxy's egress policy deciding where it
    may lead."""
    if proxied:
        ip = numeric(host)
        return not is_localhost(host) if ip is None else is_public(ip)
    found = addresses_of(host, resolve)
    return bool(found) and all(is_public(ip) for ip in found)


def may_follow(
    configured_host: str,
    target_host: str,
    resolve: Resolver,
    *,
    configured_proxied: bool = False,
    target_proxied: bool = False,
) -> bool:
    """Whether a source configured with `configured_host` may follow a redirect to `target_host`.

    A redirect may lead to a non-public address only when the configured host is non-public itself: then
    the operator chose an internal source. The configured host is resolved only when the target is not
    public, and nothing is resolved for a redirect back to the configured host (it leads where the
    operator's own URL does). A host reached through a proxy (`..._proxied`) is never resolved here (see
    `is_public_host`)."""
    if target_host.lower() == configured_host.lower():
        return True
    if is_public_host(target_host, resolve, proxied=target_proxied):
        return True
    return not is_public_host(configured_host, resolve, proxied=configured_proxied)
