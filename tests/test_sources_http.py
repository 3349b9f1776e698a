"""Fetching feeds and JSON APIs from a real local HTTP server: conditional requests, redirects, broken and
mislabelled documents, timeouts, 429/500 with Retry-After, huge bodies, pagination, secrets, rate limits,
redirects to internal addresses."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import pytest

from ingest.sources.addresses import IPAddress, Resolver, addresses_of, system_resolve
from ingest.sources.checkpoint import Checkpoint, advance
from ingest.sources.config import FeedSource, HttpJsonSource, parse_sources
from ingest.sources.fetchers import Fetched, HttpSourceClient, fetch_feed, fetch_http_json
from ingest.sources.http import FetchError, HttpClient
from tests.fixtures.sources.server import FIXTURES, FixtureServer, Reply, Request
from tests.test_sources_addresses import Names


def source(url: str, env: dict[str, str] | None = None, **extra: Any) -> Any:
    kind = extra.pop("kind", "rss")
    entry = {"name": "s", "kind": kind, "url": url, "backoff_s": 0.01, "retries": 2, **extra}
    return parse_sources([entry], env=env or {}).sources[0]


def never_known(_: Any) -> bool:
    return False


def feed_once(src: FeedSource, client: HttpClient, cp: Checkpoint | None = None) -> Fetched:
    return fetch_feed(src, HttpSourceClient(src, client), cp or Checkpoint(), never_known)


def test_rss_then_304_with_etag(server: FixtureServer, client: HttpClient) -> None:
    url = server.file("/rss.xml", "rss.xml", "application/rss+xml; charset=utf-8", etag='"v1"')
    src = source(url)
    first = feed_once(src, client)
    assert first.items == 3 and len(first.messages) == 3 and not first.invalid
    assert first.changes == {"etag": '"v1"', "last_modified": "Tue, 02 Jan 2024 16:00:00 GMT"}
    second = feed_once(src, client, Checkpoint(etag='"v1"', last_modified="Tue, 02 Jan 2024 16:00:00 GMT"))
    assert second.not_modified and not second.messages
    sent = server.asked("/rss.xml")[1].headers
    assert sent["if-none-match"] == '"v1"' and sent["if-modified-since"] == "Tue, 02 Jan 2024 16:00:00 GMT"
    assert sent["user-agent"] == "finsent-tests"


def test_a_feed_is_decoded_by_the_charset_its_server_names(server: FixtureServer, client: HttpClient) -> None:
    """Through the fetch, not only the parser: the response kept the media type alone, so the charset
    never reached it."""
    title = "Soci\u00e9t\u00e9 G\u00e9n\u00e9rale"
    body = f"<rss><channel><item><guid>1</guid><title>{title}</title></item></channel></rss>".encode(
        "latin-1"
    )
    headers = {"Content-Type": "application/rss+xml; charset=ISO-8859-1"}
    url = server.route("/latin.xml", lambda r, n: Reply(200, body, headers))
    (message,) = feed_once(source(url), client).messages
    assert message["title"] == title


def test_conditional_requests_can_be_turned_off(server: FixtureServer, client: HttpClient) -> None:
    url = server.file("/rss.xml", "rss.xml", "application/rss+xml", etag='"v1"')
    fetched = feed_once(source(url, conditional=False), client, Checkpoint(etag='"v1"'))
    assert not fetched.not_modified and len(fetched.messages) == 3
    assert "if-none-match" not in server.asked("/rss.xml")[0].headers


def test_atom_through_redirects(server: FixtureServer, client: HttpClient) -> None:
    server.file("/atom.xml", "atom.xml", "application/atom+xml")
    server.route("/old", lambda r, n: Reply(301, b"", {"Location": "/moved"}))
    url = server.route("/moved", lambda r, n: Reply(302, b"", {"Location": "/atom.xml"}))
    fetched = feed_once(source(url.replace("/moved", "/old")), client)
    assert [m["lang"] for m in fetched.messages] == ["de", "en"]


def test_redirect_loop_fails_clearly(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/loop", lambda r, n: Reply(302, b"", {"Location": "/loop"}))
    with pytest.raises(FetchError) as e:
        feed_once(source(url), client)
    assert e.value.kind == "redirects"


@pytest.mark.parametrize(
    ("name", "content_type", "kind"),
    [
        ("broken.xml", "application/rss+xml", "parse"),
        ("not_a_feed.html", "text/html; charset=utf-8", "content_type"),
        ("api_page1.json", "application/json", "content_type"),
        ("broken.xml", "", "parse"),
    ],
)
def test_broken_or_mislabelled_feeds(
    server: FixtureServer, client: HttpClient, name: str, content_type: str, kind: str
) -> None:
    url = server.file("/feed", name, content_type)
    with pytest.raises(FetchError) as e:
        feed_once(source(url), client)
    assert e.value.kind == kind


def test_feed_served_as_text_html_but_valid_is_accepted(server: FixtureServer, client: HttpClient) -> None:
    url = server.file("/feed", "rss.xml", "text/html")
    assert len(feed_once(source(url), client).messages) == 3


def test_timeout_is_retried_then_reported(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/slow", lambda r, n: Reply(200, b"<rss/>", delay_s=1.0))
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        feed_once(source(url, timeout_s=0.2, retries=1), client)
    assert e.value.kind == "timeout"
    assert len(server.asked("/slow")) == 2  # first try + one retry
    assert time.monotonic() - started < 3


def test_429_with_retry_after_then_success(server: FixtureServer, client: HttpClient) -> None:
    rss = (FIXTURES / "rss.xml").read_bytes()

    def route(req: Request, n: int) -> Reply:
        if n == 0:
            return Reply(429, b"slow down", {"Retry-After": "1"})
        if n == 1:
            return Reply(503, b"busy", {"Retry-After": "0"})
        return Reply(200, rss, {"Content-Type": "application/rss+xml"})

    url = server.route("/limited", route)
    fetched = feed_once(source(url, retries=3, max_backoff_s=5), client)
    assert len(fetched.messages) == 3
    times = [r.at for r in server.asked("/limited")]
    assert len(times) == 3 and times[1] - times[0] >= 0.9  # Retry-After honoured


def test_persistent_500_gives_up_after_retries(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/down", lambda r, n: Reply(500, b"oops"))
    with pytest.raises(FetchError) as e:
        feed_once(source(url, retries=2), client)
    assert e.value.kind == "http_status" and "500" in str(e.value)
    assert len(server.asked("/down")) == 3


def test_404_is_not_retried(server: FixtureServer, client: HttpClient) -> None:
    url = server.url + "/missing"
    with pytest.raises(FetchError) as e:
        feed_once(source(url, retries=3), client)
    assert e.value.kind == "http_status" and len(server.asked("/missing")) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_huge_response_is_cut_off(server: FixtureServer, client: HttpClient, chunked: bool) -> None:
    big = b"<rss><channel>" + b"<item><title>x</title></item>" * 200_000 + b"</channel></rss>"
    url = server.route(
        "/huge", lambda r, n: Reply(200, big, {"Content-Type": "application/rss+xml"}, chunked=chunked)
    )
    with pytest.raises(FetchError) as e:
        feed_once(source(url, max_response_bytes=1_000_000), client)
    assert e.value.kind == "too_large"


def test_connection_refused(client: HttpClient) -> None:
    with pytest.raises(FetchError) as e:
        feed_once(source("http://127.0.0.1:9/feed", retries=0), client)
    assert e.value.kind == "connect"


# -- JSON APIs --------------------------------------------------------------------------------------------


def api_source(url: str, **extra: Any) -> HttpJsonSource:
    src: HttpJsonSource = source(
        url,
        env={"API_TOKEN": "tok-123"},
        kind="http_json",
        headers={"Authorization": "Bearer ${API_TOKEN}"},
        params={"q": "earnings", "key": "${API_TOKEN}"},
        records="data.items",
        fields={
            "id": "uid",
            "title": "headline",
            "body": "summary",
            "url": "link",
            "published_at": "created",
            "tickers": "symbols",
            "author": "by.name",
        },
        **extra,
    )
    return src


def pages_route(req: Request, n: int) -> Reply:
    cursor = req.query.get("cursor", [None])[0]
    page = req.query.get("page", ["1"])[0]
    name = "api_page2.json" if cursor == "c2" or page == "2" else "api_page1.json"
    if page == "3":
        return Reply(200, b'{"data": {"items": []}}', {"Content-Type": "application/json"})
    return Reply(200, (FIXTURES / name).read_bytes(), {"Content-Type": "application/json"})


def test_cursor_pagination_with_secret_header_and_params(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/api", pages_route)
    src = api_source(url, pagination={"type": "cursor", "cursor_path": "meta.next"})
    fetched = fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    assert [m["id"] for m in fetched.messages] == ["s:501", "s:502", "s:503"]
    assert fetched.items == 4 and [i.reason for _, i in fetched.invalid] == ["empty_text"]
    reqs = server.asked("/api")
    assert len(reqs) == 2 and reqs[1].query["cursor"] == ["c2"]
    assert reqs[0].headers["authorization"] == "Bearer tok-123" and reqs[0].query["key"] == ["tok-123"]
    assert fetched.messages[1]["tickers"] == ["XOM", "CVX"]


@pytest.mark.parametrize(
    ("known", "messages", "pages"),
    [(never_known, 3, 3), (lambda m: True, 2, 1)],
    ids=["at-an-empty-page", "at-a-page-already-published"],
)
def test_page_pagination_stops(
    server: FixtureServer, client: HttpClient, known: Callable[[Any], bool], messages: int, pages: int
) -> None:
    url = server.route("/api", pages_route)
    src = api_source(url, pagination={"type": "page", "max_pages": 10})
    fetched = fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), known)
    assert len(fetched.messages) == messages and len(server.asked("/api")) == pages


def test_since_param_and_resumed_cursor(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/api", pages_route)
    src = api_source(
        url, since_param="since", pagination={"type": "cursor", "cursor_path": "meta.next", "resume": True}
    )
    cp = Checkpoint(last_published_at="2024-01-05T00:00:00Z", cursor="c2")
    fetched = fetch_http_json(src, HttpSourceClient(src, client), cp, never_known)
    req = server.asked("/api")[0]
    assert req.query["since"] == ["2024-01-05T00:00:00Z"] and req.query["cursor"] == ["c2"]
    assert [m["id"] for m in fetched.messages] == ["s:503"]


def test_failing_second_page_keeps_the_first(server: FixtureServer, client: HttpClient) -> None:
    def route(req: Request, n: int) -> Reply:
        return pages_route(req, n) if n == 0 else Reply(500, b"")

    url = server.route("/api", route)
    src = api_source(url, retries=0, pagination={"type": "cursor", "cursor_path": "meta.next"})
    fetched = fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    assert len(fetched.messages) == 2 and fetched.partial_error is not None


def test_the_pages_after_a_failed_one_are_fetched_by_the_next_run(
    server: FixtureServer, client: HttpClient
) -> None:
    """Page 1 published and page 2 failing once: the next runs stopped at page 1 (all its items known,
    or a 304 for the ETag saved with it), so page 2's items were never fetched."""
    failing = [True]

    def route(req: Request, n: int) -> Reply:
        if req.query.get("page") == ["2"] and failing[0]:
            failing[0] = False
            return Reply(503, b"")
        reply = pages_route(req, n)
        if req.query.get("page", ["1"]) == ["1"]:
            if req.headers.get("if-none-match") == '"p1"':
                return Reply(304, b"")
            reply.headers["ETag"] = '"p1"'
        return reply

    url = server.route("/api", route)
    src = api_source(url, retries=0, pagination={"type": "page", "max_pages": 10})
    published: set[str] = set()
    checkpoint = Checkpoint()
    for _ in range(2):
        fetched = fetch_http_json(
            src, HttpSourceClient(src, client), checkpoint, lambda m: m["id"] in published
        )
        published.update(m["id"] for m in fetched.messages)
        checkpoint = advance(checkpoint, [], 0.0, **fetched.changes)
    assert published == {"s:501", "s:502", "s:503"}
    assert not checkpoint.paging_incomplete and checkpoint.etag == '"p1"'
    assert "if-none-match" not in server.asked("/api")[2].headers  # the catching-up run asked afresh


@pytest.mark.parametrize(
    ("body", "content_type", "kind"),
    [
        (b"<html>maintenance</html>", "text/html", "content_type"),
        (b"{broken json", "application/json", "parse"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "parse"),  # json.loads: RecursionError
        (json.dumps({"data": {"items": {"not": "a list"}}}).encode(), "application/json", "parse"),
    ],
)
def test_bad_api_answers(
    server: FixtureServer, client: HttpClient, body: bytes, content_type: str, kind: str
) -> None:
    url = server.route("/api", lambda r, n: Reply(200, body, {"Content-Type": content_type}))
    src = api_source(url)
    with pytest.raises(FetchError) as e:
        fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    assert e.value.kind == kind


def test_rate_limit_spaces_requests(server: FixtureServer, client: HttpClient) -> None:
    url = server.route("/api", pages_route)
    src = api_source(
        url, rate_limit={"requests": 1, "per_s": 0.3}, pagination={"type": "page", "max_pages": 3}
    )
    fetch_http_json(src, HttpSourceClient(src, client), Checkpoint(), never_known)
    times = [r.at for r in server.asked("/api")]
    assert len(times) == 3 and all(b - a >= 0.25 for a, b in itertools.pairwise(times))


def test_stopping_cancels_backoff_waits(server: FixtureServer) -> None:
    stop = threading.Event()
    stop.set()
    client = HttpClient(user_agent="t", sleep=stop.wait)
    url = server.route("/down", lambda r, n: Reply(500, b""))
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(url, retries=5, backoff_s=30), client)
    finally:
        client.close()
    assert e.value.kind == "cancelled" and len(server.asked("/down")) == 1


# -- hostile servers ----------------------------------------------------------------------------------------


def test_a_compressed_body_is_bounded_after_decoding(server: FixtureServer, client: HttpClient) -> None:
    """5 MB of zeros gzip to 5 kB: the size cap applies to what the body decodes to, as it decodes."""
    feed = gzip.compress((FIXTURES / "rss.xml").read_bytes())
    ok = server.route("/gz", lambda r, n: Reply(200, feed, {"Content-Encoding": "gzip"}))
    assert len(feed_once(source(ok), client).messages) == 3
    assert server.asked("/gz")[0].headers["accept-encoding"] == "gzip, deflate"
    bomb = gzip.compress(b"\0" * 5_000_000)
    url = server.route("/bomb", lambda r, n: Reply(200, bomb, {"Content-Encoding": "gzip"}))
    with pytest.raises(FetchError) as e:
        feed_once(source(url, max_response_bytes=100_000), client)
    assert e.value.kind == "too_large"


@pytest.mark.parametrize("encoding", ["gzip, gzip", "zstd", "br"])
def test_encodings_we_did_not_ask_for_are_refused(
    server: FixtureServer, client: HttpClient, encoding: str
) -> None:
    """A stack of encodings, or one the server chose itself, could expand past any bound before a check."""
    body = gzip.compress(gzip.compress(b"<rss/>"))
    url = server.route("/enc", lambda r, n: Reply(200, body, {"Content-Encoding": encoding}))
    with pytest.raises(FetchError) as e:
        feed_once(source(url, retries=0), client)
    assert e.value.kind == "content_type" and encoding in str(e.value)


def test_a_redirect_to_another_origin_does_not_carry_the_sources_keys(
    server: FixtureServer, client: HttpClient
) -> None:
    other = server.url.replace("127.0.0.1", "localhost")  # same server, another origin
    start = server.route("/start", lambda r, n: Reply(302, b"", {"Location": f"{other}/landing?page=1"}))
    rss = (FIXTURES / "rss.xml").read_bytes()
    server.route("/landing", lambda r, n: Reply(200, rss, {"Content-Type": "application/rss+xml"}))
    src = source(
        start, env={"KEY": "sk-secret"}, headers={"X-Api-Key": "${KEY}"}, params={"apikey": "${KEY}"}
    )
    assert len(feed_once(src, client).messages) == 3
    (first,), (landed,) = server.asked("/start"), server.asked("/landing")
    assert first.headers["x-api-key"] == "sk-secret" and first.query["apikey"] == ["sk-secret"]
    assert "x-api-key" not in landed.headers and landed.query == {"page": ["1"]}


def test_errors_and_logs_leave_the_query_string_out(
    server: FixtureServer, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.route("/down", lambda r, n: Reply(503, b""))
    src = source(url, env={"KEY": "sk-secret"}, params={"apikey": "${KEY}"}, retries=1)
    with caplog.at_level("INFO"), pytest.raises(FetchError) as e:
        feed_once(src, client)
    assert "sk-secret" not in str(e.value) and "sk-secret" not in caplog.text
    assert "/down" in str(e.value)


def test_a_body_that_never_finishes_times_out(server: FixtureServer, client: HttpClient) -> None:
    """Each byte comes within the read timeout, so only a deadline on the whole fetch ends it."""
    url = server.route("/drip", lambda r, n: Reply(200, b"<rss>" + b" " * 200, drip_s=0.1))
    with pytest.raises(FetchError) as e:
        feed_once(source(url, timeout_s=0.5, retries=0), client)
    assert e.value.kind == "timeout" and "not complete" in str(e.value)


def test_headers_that_never_finish_time_out_too(server: FixtureServer, client: HttpClient) -> None:
    """The fetch's deadline was checked only while reading the body: a server dripping its headers a line
    per read held the fetch, a worker thread and the service's stop for as long as it liked."""
    url = server.route("/drip-headers", lambda r, n: Reply(200, b"<rss/>", drip_headers_s=0.1))
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        feed_once(source(url, timeout_s=0.5, retries=0), client)
    assert e.value.kind == "timeout" and time.monotonic() - started < 5  # 20 s of headers otherwise


def test_redirects_to_other_schemes_or_down_to_http_are_refused() -> None:
    import httpx

    from ingest.sources.http import _check_redirect

    with pytest.raises(FetchError, match="file URL refused"):
        _check_redirect(httpx.URL("http://a.example/f"), httpx.URL("file:///etc/passwd"))
    with pytest.raises(FetchError, match="down to http"):
        _check_redirect(httpx.URL("https://a.example/f"), httpx.URL("http://b.example/f"))
    _check_redirect(httpx.URL("http://a.example/f"), httpx.URL("https://a.example/g"))


# -- redirects to internal addresses ------------------------------------------------------------------------
# The fixture servers listen on 127.0.0.1, so a source configured with them is internal. To stand for a
# public source, the client's resolver says that `localhost` is the public STAND_IN address, and the
# client's network (`PublicStandIn`) reaches that address on the local servers: connections go where the
# resolver said, as the guard requires, and still end at a real server.

STAND_IN = "93.184.216.34"
PUBLIC_LOCALHOST = {"localhost": [STAND_IN], "metadata.test": ["169.254.169.254"]}


class PublicStandIn(httpcore.SyncBackend):
    """Real TCP connections, but STAND_IN is answered on 127.0.0.1 (as if the local servers were on the
    internet). A name is looked up with `dns`, as getaddrinfo would on connecting. Records the host of
    every connection it opens."""

    def __init__(self, dns: Resolver = system_resolve) -> None:
        self.dns = dns
        self.dialled: list[str] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.dialled.append(host)
        to = str(addresses_of(host, self.dns)[0])
        to = "127.0.0.1" if to == STAND_IN else to
        return super().connect_tcp(to, port, timeout, local_address, socket_options)


def public_client(resolve: Resolver) -> tuple[HttpClient, PublicStandIn]:
    """A client whose lookups `resolve` answers, on a network that looks names up there too."""
    network = PublicStandIn(resolve)
    return HttpClient(user_agent="finsent-tests", resolve=resolve, network=network), network


def redirecting(server: FixtureServer, location: str, host: str = "127.0.0.1") -> str:
    url = server.route("/start", lambda r, n: Reply(302, b"", {"Location": location}))
    return url.replace("127.0.0.1", host)


def serve_rss(server: FixtureServer) -> str:
    return server.file("/feed.xml", "rss.xml", "application/rss+xml")


@pytest.mark.parametrize("inner_host", ["127.0.0.1", "localhost"])
def test_an_internal_source_may_redirect_to_another_internal_server(
    server: FixtureServer, inner: FixtureServer, client: HttpClient, inner_host: str
) -> None:
    """The operator chose a source on 127.0.0.1: its redirect to another local port is followed."""
    target = serve_rss(inner).replace("127.0.0.1", inner_host)
    assert len(feed_once(source(redirecting(server, target)), client).messages) == 3
    assert len(inner.asked("/feed.xml")) == 1


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{port}/feed.xml",
        "http://[::ffff:127.0.0.1]:{port}/feed.xml",
        "http://2130706433:{port}/feed.xml",  # 127.0.0.1 to getaddrinfo (glibc)
        "http://0x7f000001:{port}/feed.xml",
        "http://metadata.test:{port}/feed.xml",
    ],
)
def test_a_public_source_may_not_redirect_to_an_internal_address(
    server: FixtureServer, inner: FixtureServer, location: str
) -> None:
    serve_rss(inner)
    port = inner.url.rsplit(":", 1)[1]
    url = redirecting(server, location.format(port=port), host="localhost")
    client, _ = public_client(Names(PUBLIC_LOCALHOST, system_resolve))
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(url), client)
    finally:
        client.close()
    assert e.value.kind == "redirects" and "non-public address" in str(e.value)
    assert len(server.asked("/start")) == 1 and not inner.asked("/feed.xml")  # refused, not retried


def test_redirects_to_public_addresses_are_followed(server: FixtureServer, inner: FixtureServer) -> None:
    names = Names(PUBLIC_LOCALHOST)
    client, network = public_client(names)
    try:
        from_internal = redirecting(server, serve_rss(inner).replace("127.0.0.1", "localhost"))
        assert len(feed_once(source(from_internal), client).messages) == 3
        # Checked on the redirect, then looked up again by the connection, which dials that very answer;
        # a public target: the source's own host is not looked up.
        assert names.asked == ["localhost", "localhost"]
        assert network.dialled == ["127.0.0.1", STAND_IN]
        names.asked.clear()
        same_host = redirecting(server, serve_rss(server).replace("127.0.0.1", "localhost"), "localhost")
        assert len(feed_once(source(same_host), client).messages) == 3
        # Back to the source's own host: the redirect is not checked (it leads where the operator's URL
        # does), so every lookup is a connection's own, each dialling what it was told.
        assert names.asked and set(names.asked) == {"localhost"}
        assert network.dialled[2:] == [STAND_IN] * len(names.asked)
    finally:
        client.close()


def test_a_redirect_target_that_does_not_resolve_is_a_connect_error(server: FixtureServer) -> None:
    client = HttpClient(user_agent="finsent-tests", resolve=Names({}))
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(redirecting(server, "http://nowhere.test/feed.xml"), retries=1), client)
    finally:
        client.close()
    assert e.value.kind == "connect" and "nowhere.test" in str(e.value)
    assert len(server.asked("/start")) == 2  # retried like any connection failure


def test_resolving_a_redirect_target_is_bounded_by_the_fetch_deadline(server: FixtureServer) -> None:
    release = threading.Event()

    def hanging(host: str) -> list[IPAddress]:
        release.wait(10)
        return []

    client = HttpClient(user_agent="finsent-tests", resolve=hanging)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as e:
            feed_once(source(redirecting(server, "http://slow.test/feed.xml"), timeout_s=0.2), client)
    finally:
        release.set()
        client.close()
    assert e.value.kind == "timeout" and "slow.test" in str(e.value)
    assert time.monotonic() - started < 2  # the deadline is 3 x timeout_s


# -- behind a proxy ---------------------------------------------------------------------------------------
# With HTTP(S)_PROXY set, the proxy resolves names: with a proxy-only egress this worker has no DNS at all,
# and split-horizon DNS may answer otherwise than the proxy's. Only hosts written as addresses are judged.

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "request_method")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings from the caller's environment (REQUEST_METHOD makes urllib ignore HTTP_PROXY)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_the_proxy_in_use_is_the_one_httpx_chooses(proxy_env: pytest.MonkeyPatch) -> None:
    import httpx

    from ingest.sources.http import uses_proxy

    proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxy_env.setenv("NO_PROXY", ".corp.example,http://plain.test,10.0.0.5")
    client = httpx.Client()
    try:
        chosen = {
            url: uses_proxy(client, httpx.URL(url))
            for url in (
                "https://feed.example/rss",
                "http://feed.example/rss",  # HTTPS_PROXY only: plain http goes direct
                "https://a.corp.example/rss",
                "https://corp.example/rss",  # a leading dot exempts subdomains only, unlike urllib's reading
                "https://plain.test/rss",  # exempt for http only
                "http://plain.test/rss",
                "https://10.0.0.5/rss",
            )
        }
    finally:
        client.close()
    assert chosen == {
        "https://feed.example/rss": True,
        "http://feed.example/rss": False,
        "https://a.corp.example/rss": False,
        "https://corp.example/rss": True,
        "https://plain.test/rss": True,
        "http://plain.test/rss": False,
        "https://10.0.0.5/rss": False,
    }


def test_without_a_proxy_or_with_a_transport_of_its_own_the_client_connects_directly(
    proxy_env: pytest.MonkeyPatch,
) -> None:
    import httpx

    from ingest.sources.http import uses_proxy

    url = httpx.URL("https://feed.example/rss")
    with httpx.Client() as plain:
        assert not uses_proxy(plain, url)
    proxy_env.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as own:
        assert not uses_proxy(own, url)  # httpx reads no proxy variables then
    with httpx.Client() as proxied:
        assert uses_proxy(proxied, url)
        proxy_env.delattr(httpx.Client, "_transport_for_url")  # a later httpx without it: looked up as before
        assert not uses_proxy(proxied, url)


def test_check_destination_leaves_names_behind_a_proxy_to_it() -> None:
    import httpx

    from ingest.sources.http import _check_destination

    names = Names({"metadata.test": ["169.254.169.254"], "feed.example": ["93.184.216.34"]})
    public = httpx.URL("https://feed.example/rss")

    def behind_proxy(url: httpx.URL) -> bool:
        return url.host != "direct.test"

    _check_destination(public, httpx.URL("https://metadata.test/x"), names, behind_proxy)
    for target in ("https://169.254.169.254/x", "https://[::ffff:127.0.0.1]/x", "https://2130706433/x"):
        with pytest.raises(FetchError, match="non-public address"):
            _check_destination(public, httpx.URL(target), names, behind_proxy)
    assert names.asked == []
    with pytest.raises(FetchError, match="non-public address"):
        _check_destination(public, httpx.URL("https://metadata.test/x"), names)  # direct: looked up
    assert names.asked == ["metadata.test", "feed.example"]


def test_behind_a_proxy_redirects_are_checked_without_local_lookups(
    server: FixtureServer, proxy_env: pytest.MonkeyPatch
) -> None:
    """`server` stands for the proxy (it answers absolute-form requests by their path). Neither the source
    nor its redirect target resolves here, as with a proxy-only egress: the redirect to a name is followed
    through the proxy, one to an internal address written in the URL is still refused."""
    proxy_env.setenv("HTTP_PROXY", server.url)
    serve_rss(server)
    server.route("/start", lambda r, n: Reply(302, b"", {"Location": "http://cdn.test/feed.xml"}))
    metadata = {"Location": "http://169.254.169.254/latest/meta-data/"}
    server.route("/to-metadata", lambda r, n: Reply(302, b"", metadata))
    names = Names({})
    client = HttpClient(user_agent="finsent-tests", resolve=names)
    try:
        assert len(feed_once(source("http://feed.test/start"), client).messages) == 3
        with pytest.raises(FetchError) as e:
            feed_once(source("http://feed.test/to-metadata"), client)
    finally:
        client.close()
    assert e.value.kind == "redirects" and "non-public address" in str(e.value)
    assert names.asked == []
    assert [(r.path, r.headers["host"]) for r in server.requests] == [
        ("/start", "feed.test"),
        ("/feed.xml", "cdn.test"),
        ("/to-metadata", "feed.test"),
    ]
