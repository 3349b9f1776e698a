"""DNS rebinding: a connection goes to an address that was checked, never to a second answer for the
same name. Real local servers; the DNS server is a resolver that changes its answer (as a rebinding one
does), shared by the worker and the stand-in network (`PublicStandIn`), which looks names up there when
it is handed one, as getaddrinfo would on connecting."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import pytest

from ingest.sources.addresses import IPAddress, literal
from ingest.sources.connect import PinnedBackend
from ingest.sources.http import FetchError, HttpClient
from tests.certs import self_signed
from tests.fixtures.sources.server import FixtureServer
from tests.test_sources_http import (
    STAND_IN,
    PublicStandIn,
    feed_once,
    redirecting,
    serve_rss,
    source,
)


class Rebinding:
    """A DNS server whose answers for a name change from one question to the next (the last one then
    stays); records the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str) -> Sequence[IPAddress]:
        n = self.asked.count(host)
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host}: no such name")
        turns = self.answers[host]
        return [ipaddress.ip_address(turns[min(n, len(turns) - 1)])]


def client_on(dns: Rebinding) -> tuple[HttpClient, PublicStandIn]:
    network = PublicStandIn(dns)
    return HttpClient(user_agent="finsent-tests", resolve=dns, network=network), network


def only_addresses(dialled: list[str]) -> bool:
    return all(literal(host) is not None for host in dialled)


def test_a_redirect_target_that_rebinds_to_loopback_after_the_check_is_refused(
    server: FixtureServer, inner: FixtureServer
) -> None:
    """rebind.test answers a public address to the redirect check, 127.0.0.1 to the next question: the
    connection's own lookup is checked too, and refused."""
    serve_rss(inner)
    port = inner.url.rsplit(":", 1)[1]
    url = redirecting(server, f"http://rebind.test:{port}/feed.xml", host="feed.test")
    dns = Rebinding({"feed.test": [STAND_IN], "rebind.test": [STAND_IN, "127.0.0.1"]})
    client, network = client_on(dns)
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(url), client)
    finally:
        client.close()
    assert e.value.kind == "redirects" and "non-public address (rebind.test)" in str(e.value)
    assert not inner.asked("/feed.xml") and len(server.asked("/start")) == 1  # refused, not retried
    assert dns.asked == ["feed.test", "rebind.test", "rebind.test"]
    assert network.dialled == [STAND_IN]  # the source; nothing was dialled for the refused target


def test_the_sources_own_host_counts_by_where_its_connection_went(
    server: FixtureServer, inner: FixtureServer
) -> None:
    """feed.test answers a public address to its connection, then 127.0.0.1, which would make it an
    internal source free to redirect inwards: its public-ness is the connection's answer, not a new one."""
    port = inner.url.rsplit(":", 1)[1]
    serve_rss(inner)
    url = redirecting(server, f"http://127.0.0.1:{port}/feed.xml", host="feed.test")
    dns = Rebinding({"feed.test": [STAND_IN, "127.0.0.1"]})
    client, _ = client_on(dns)
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(url), client)
    finally:
        client.close()
    assert e.value.kind == "redirects" and "non-public address" in str(e.value)
    assert not inner.asked("/feed.xml")
    assert dns.asked == ["feed.test"]


def test_a_public_source_is_fetched_over_the_address_its_name_gave(
    server: FixtureServer, inner: FixtureServer
) -> None:
    """The usual case: a public source redirecting to a public CDN; each connection dials an address,
    never a name, so nothing can look the name up again behind the check's back."""
    port = inner.url.rsplit(":", 1)[1]
    serve_rss(inner)
    url = redirecting(server, f"http://cdn.test:{port}/feed.xml", host="feed.test")
    dns = Rebinding({"feed.test": [STAND_IN], "cdn.test": [STAND_IN]})
    client, network = client_on(dns)
    try:
        assert len(feed_once(source(url), client).messages) == 3
    finally:
        client.close()
    assert network.dialled == [STAND_IN, STAND_IN] and only_addresses(network.dialled)
    assert len(inner.asked("/feed.xml")) == 1


def test_an_internal_source_still_reaches_internal_addresses(
    server: FixtureServer, inner: FixtureServer
) -> None:
    """The operator's own internal source (its name is 127.0.0.1) may redirect to another internal name."""
    port = inner.url.rsplit(":", 1)[1]
    serve_rss(inner)
    url = redirecting(server, f"http://db.corp:{port}/feed.xml", host="feeds.corp")
    dns = Rebinding({"feeds.corp": ["127.0.0.1"], "db.corp": ["127.0.0.1"]})
    client, network = client_on(dns)
    try:
        assert len(feed_once(source(url), client).messages) == 3
    finally:
        client.close()
    assert network.dialled == ["127.0.0.1", "127.0.0.1"]


def test_a_name_that_does_not_resolve_on_connecting_is_a_connect_error(server: FixtureServer) -> None:
    dns = Rebinding({})
    client, network = client_on(dns)
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(serve_rss(server).replace("127.0.0.1", "gone.test"), retries=1), client)
    finally:
        client.close()
    assert e.value.kind == "connect" and "cannot resolve gone.test" in str(e.value)
    assert dns.asked == ["gone.test", "gone.test"] and network.dialled == []  # retried like a refusal


class Unreachable(PublicStandIn):
    """`down` refuses every connection, as a host that is down does."""

    def __init__(self, dns: Rebinding, down: str) -> None:
        super().__init__(dns)
        self.down = down

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if host == self.down:
            self.dialled.append(host)
            raise httpcore.ConnectError(f"{host}: connection refused")
        return super().connect_tcp(host, port, timeout, local_address, socket_options)


def test_every_address_of_a_name_is_tried_in_turn(server: FixtureServer) -> None:
    """As getaddrinfo's list is: the first address that accepts serves."""
    both = [ipaddress.ip_address("93.184.216.35"), ipaddress.ip_address(STAND_IN)]
    network = Unreachable(Rebinding({}), "93.184.216.35")
    client = HttpClient(user_agent="finsent-tests", resolve=lambda host: both, network=network)
    try:
        url = serve_rss(server).replace("127.0.0.1", "feed.test")
        assert len(feed_once(source(url), client).messages) == 3
    finally:
        client.close()
    assert network.dialled == ["93.184.216.35", STAND_IN]


def test_outside_a_fetch_a_name_is_handed_on_unchanged() -> None:
    """No pin set (no fetch running): the backend hands the name to the one it wraps."""
    network = PublicStandIn(Rebinding({}))
    with pytest.raises(OSError, match="no such name"):
        PinnedBackend(network).connect_tcp("feed.test", 80)
    assert network.dialled == ["feed.test"]


# -- HTTPS: only TCP is replaced, TLS still names the host -----------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for feed.test (only), and its key."""
    return self_signed(tmp_path, "feed.test")


@pytest.fixture
def https_server(tls_files: tuple[Path, Path]) -> Iterator[tuple[int, list[str | None]]]:
    """An HTTPS server on 127.0.0.1 serving the RSS fixture; yields its port and the SNI names it saw."""
    cert, key = tls_files
    seen: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _: seen.append(name)
    body = (Path(__file__).parent / "fixtures" / "sources" / "rss.xml").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd.server_port, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_verifies_the_certificate_against_the_name_not_the_address(
    https_server: tuple[int, list[str | None]], tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TCP connection goes to an address, yet TLS is started with the URL's name: feed.test's
    certificate is accepted for feed.test (SNI feed.test), and refused for other.test on the same
    address. Were the address used for TLS, both would fail; were nothing checked, both would pass."""
    port, seen = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))  # read when the client is made
    dns = Rebinding({"feed.test": [STAND_IN], "other.test": [STAND_IN]})
    client, network = client_on(dns)
    try:
        assert len(feed_once(source(f"https://feed.test:{port}/feed.xml"), client).messages) == 3
        with pytest.raises(FetchError) as e:
            feed_once(source(f"https://other.test:{port}/feed.xml", retries=0), client)
    finally:
        client.close()
    assert e.value.kind == "connect" and "certificate" in str(e.value).lower()
    assert seen[:2] == ["feed.test", "other.test"]
    assert network.dialled == [STAND_IN, STAND_IN]
