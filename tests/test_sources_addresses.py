"""Where a redirect may lead: address classification (IPv4 written as IPv6 included), IP literals in URL
hosts, the may-follow rule (non-public targets only from a non-public source; hosts reached through a
proxy are never looked up), and resolving within a time limit. Pure logic over a table resolver; fetching
with real servers is in test_sources_http.py."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.sources.addresses import (
    IPAddress,
    Resolver,
    is_public,
    is_public_host,
    literal,
    may_follow,
    numeric,
    resolve_within,
    system_resolve,
)


class Names:
    """A resolver over a fixed table that records what it was asked; other names go to `fallback`, or
    do not resolve."""

    def __init__(self, table: dict[str, list[str]], fallback: Resolver | None = None) -> None:
        self.table = {k: [ipaddress.ip_address(a) for a in v] for k, v in table.items()}
        self.fallback = fallback
        self.asked: list[str] = []

    def __call__(self, host: str) -> Sequence[IPAddress]:
        self.asked.append(host)
        if host in self.table:
            return self.table[host]
        if self.fallback is not None:
            return self.fallback(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


NON_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "fe80::1",
    "fe80::1%eth0",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "fc00::1",
    "fd12:3456:789a::1",
    "0.0.0.0",
    "::",
    "100.64.0.1",  # carrier-grade NAT
    "255.255.255.255",
    "240.0.0.1",
    "224.0.0.1",
    "ff02::1",
    "fec0::1",  # site-local
    "192.0.2.1",
    "2001:db8::1",
    # internal IPv4 addresses written as IPv6
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "2002:7f00:1::",  # 6to4
    "2002:a9fe:a9fe::1",
    "64:ff9b::a9fe:a9fe",  # NAT64
    "64:ff9b::7f00:1",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001::1",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_internal_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_written_as_ipv6_is_classified_as_itself(v4: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))
    nat64 = ipaddress.IPv6Address(f"64:ff9b::{v4}")
    assert is_public(mapped) == is_public(sixtofour) == is_public(nat64) == is_public(v4)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),  # a zone id, percent-encoded as in a URL
        ("feed.example", None),
        ("2130706433", None),  # left to the resolver, which reads it as the connection will
        ("0x7f000001", None),
    ],
)
def test_ip_literals_in_url_hosts(host: str, expected: str | None) -> None:
    assert literal(host) == (ipaddress.ip_address(expected) if expected else None)


def test_the_system_resolver_reads_numeric_hosts_as_the_connection_does() -> None:
    """glibc's getaddrinfo takes 2130706433 and 0x7f000001 for 127.0.0.1 (a URL parser does not)."""
    assert system_resolve("127.0.0.1") == [ipaddress.ip_address("127.0.0.1")]
    assert system_resolve("2130706433") == [ipaddress.ip_address("127.0.0.1")]
    assert system_resolve("0x7f000001") == [ipaddress.ip_address("127.0.0.1")]
    found = system_resolve("localhost")
    assert found and all(ip.is_loopback for ip in found)


NAMES = {
    "feed.example": ["93.184.216.34"],
    "cdn.example": ["151.101.1.1", "2a04:4e42::1"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["8.8.4.4", "10.0.0.1"],
    "feeds.corp": ["10.1.2.3"],
}


@pytest.mark.parametrize(
    ("configured", "target", "allowed"),
    [
        ("feed.example", "cdn.example", True),
        ("feed.example", "feed.example", True),
        ("feed.example", "127.0.0.1", False),
        ("feed.example", "[::1]", False),
        ("feed.example", "::ffff:127.0.0.1", False),
        ("feed.example", "169.254.169.254", False),
        ("feed.example", "fe80::1%25eth0", False),
        ("feed.example", "metadata.example", False),
        ("feed.example", "mixed.example", False),  # every address must be public
        ("93.184.216.34", "10.0.0.1", False),
        ("10.0.0.5", "127.0.0.1", True),  # an internal source chosen by the operator
        ("feeds.corp", "169.254.169.254", True),
        ("127.0.0.1", "metadata.example", True),
        ("mixed.example", "10.0.0.1", True),  # a source with an internal address is internal
        ("10.0.0.5", "cdn.example", True),
    ],
)
def test_a_redirect_reaches_internal_addresses_only_from_an_internal_source(
    configured: str, target: str, allowed: bool
) -> None:
    assert may_follow(configured, target, Names(NAMES)) is allowed


def test_the_configured_host_is_resolved_only_when_the_target_is_not_public() -> None:
    names = Names(NAMES)
    assert may_follow("feed.example", "cdn.example", names)
    assert names.asked == ["cdn.example"]
    names.asked.clear()
    assert not may_follow("feed.example", "169.254.169.254", names)
    assert names.asked == ["feed.example"]  # the literal needs no lookup
    names.asked.clear()
    assert may_follow("feed.example", "FEED.example", names)
    assert names.asked == []  # back to the configured host: where the operator's URL leads anyway


def test_a_target_that_does_not_resolve_is_an_error_not_a_decision() -> None:
    with pytest.raises(socket.gaierror):
        may_follow("feed.example", "nowhere.example", Names(NAMES))


def test_a_host_without_addresses_is_not_public() -> None:
    assert not is_public_host("void.example", lambda host: [])


def test_resolve_within_returns_the_answer_or_the_error() -> None:
    names = Names(NAMES)
    assert resolve_within(names, "feeds.corp", 5.0) == [ipaddress.ip_address("10.1.2.3")]
    with pytest.raises(socket.gaierror):
        resolve_within(names, "nowhere.example", 5.0)


def test_a_resolver_that_hangs_is_given_up_on_at_the_limit() -> None:
    release = threading.Event()

    def hanging(host: str) -> Sequence[IPAddress]:
        release.wait(60)  # released at the end of the test
        return [ipaddress.ip_address("8.8.8.8")]

    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            resolve_within(hanging, "slow.example", 0.2)
    finally:
        release.set()
    assert 0.15 < time.monotonic() - started < 10


def test_no_time_left_means_no_lookup() -> None:
    names = Names(NAMES)
    with pytest.raises(TimeoutError):
        resolve_within(names, "feed.example", 0.0)
    assert names.asked == []


# -- through a proxy: the proxy resolves names, so only hosts written as addresses are judged -------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),  # what a proxy handing the name to getaddrinfo connects to
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("169.254.169.254", "169.254.169.254"),
        ("feed.example", None),
        ("localhost", None),  # a name, even this one: nothing is looked up
    ],
)
def test_numeric_hosts_are_read_without_a_lookup(host: str, expected: str | None) -> None:
    assert numeric(host) == (ipaddress.ip_address(expected) if expected else None)


@pytest.mark.parametrize(
    ("configured", "target", "allowed"),
    [
        ("feed.example", "metadata.example", True),  # a name: the proxy's egress policy decides
        ("feed.example", "nowhere.example", True),  # not resolvable here (proxy-only egress): not an error
        ("feed.example", "169.254.169.254", False),
        ("feed.example", "[::ffff:127.0.0.1]", False),
        ("feed.example", "2130706433", False),
        ("feed.example", "8.8.8.8", True),
        ("feed.example", "localhost", False),  # loopback by definition, maybe the proxy's own machine
        ("feed.example", "api.LOCALHOST.", False),
        ("feeds.corp", "10.0.0.1", False),  # the source's name is not looked up either: counts as public
        ("10.0.0.5", "127.0.0.1", True),  # a source written as an internal address stays internal
    ],
)
def test_through_a_proxy_only_addresses_written_in_the_url_are_judged(
    configured: str, target: str, allowed: bool
) -> None:
    names = Names(NAMES)
    assert may_follow(configured, target, names, configured_proxied=True, target_proxied=True) is allowed
    assert names.asked == []


def test_a_direct_target_is_looked_up_even_when_the_source_goes_through_a_proxy() -> None:
    """NO_PROXY can exempt the target (or the source) alone: whichever is connected to directly is
    resolved as before, the other is not."""
    names = Names(NAMES)
    assert not may_follow("feeds.corp", "metadata.example", names, configured_proxied=True)
    assert names.asked == ["metadata.example"]
    names.asked.clear()
    assert may_follow("feeds.corp", "10.0.0.1", names, target_proxied=True)  # the source is internal
    assert names.asked == ["feeds.corp"]
