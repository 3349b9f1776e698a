"""A stopping worker's Elasticsearch writes end within its shutdown budget. A bulk request waits up to
`elasticsearch.request_timeout_s` (30 s) for a server that hangs, and a retry sent near the end of the
stop's 30 s went on for all of it: stops took 60 s, the pod's whole grace period (two reviewers'
reproductions, Elasticsearch paused with SIGSTOP)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from finsent.outputs.es_client import make_client
from finsent.outputs.es_sink import ElasticsearchSink, IndexAction, SinkStopped
from finsent.settings import ElasticsearchSettings


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """Accepts connections and reads requests, never answers: Elasticsearch paused."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_stopping_sink_ends_its_requests_by_the_stop_s_deadline(hanging_server: str) -> None:
    settings = ElasticsearchSettings(url=hanging_server, request_timeout_s=30)
    client = make_client(settings)
    sink = ElasticsearchSink(client, stop=threading.Event(), backoff_max_s=0.2, request_timeout_s=30)
    started = time.monotonic()
    sink.finish_by(started + 1.0)
    with pytest.raises(SinkStopped):
        sink.write([IndexAction("idx", "doc-1", {"text": "x"})])
    took = time.monotonic() - started
    client.close()
    assert 0.9 < took < 10.0, f"a stopping write took {took:.1f}s with 1 s left"
    assert not sink.available


def test_a_sink_not_stopping_uses_the_configured_timeout(hanging_server: str) -> None:
    """Without a stop the request gets its whole timeout (here 1 s), and the batch is retried after it."""
    settings = ElasticsearchSettings(url=hanging_server, request_timeout_s=1)
    client = make_client(settings)
    stop = threading.Event()
    sink = ElasticsearchSink(client, stop=stop, backoff_max_s=0.1, request_timeout_s=1)
    threading.Timer(2.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SinkStopped):
        sink.write([IndexAction("idx", "doc-1", {"text": "x"})])
    assert time.monotonic() - started >= 2.0  # at least two 1 s attempts
    client.close()


def test_a_bulk_request_left_unanswered_is_logged_before_it_times_out(
    hanging_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A chaos review paused Elasticsearch for 20 s under a running labeler: nothing in the log, and no
    output error, since the request timeout (30 s) had not passed; only the lag showed it. (Here 3 s,
    and the line after 0.3 s instead of 10.)"""
    settings = ElasticsearchSettings(url=hanging_server, request_timeout_s=3)
    client = make_client(settings)
    stop = threading.Event()
    sink = ElasticsearchSink(client, stop=stop, backoff_max_s=0.1, request_timeout_s=3)
    sink.stall_warning_s = 0.3
    threading.Timer(2.0, stop.set).start()  # the request goes on to its timeout, then no retry
    with caplog.at_level(logging.WARNING, logger="finsent.outputs.es_sink"), pytest.raises(SinkStopped):
        sink.write([IndexAction("idx", "doc-1", {"text": "x"}), IndexAction("idx", "doc-2", {"text": "y"})])
    (line,) = [r.getMessage() for r in caplog.records if "has not answered" in r.getMessage()]
    assert line.startswith("Elasticsearch has not answered a bulk request of 2 documents after 0 s")
    assert "request timeout (3 s)" in line and "retried" in line
    # a stopping sink's request ends by the stop's deadline, and no retry follows
    caplog.clear()
    sink.finish_by(time.monotonic() + 1.0)
    with caplog.at_level(logging.WARNING, logger="finsent.outputs.es_sink"), pytest.raises(SinkStopped):
        sink.write([IndexAction("idx", "doc-3", {"text": "z"})])
    client.close()
    (line,) = [r.getMessage() for r in caplog.records if "has not answered" in r.getMessage()]
    assert "the stop ends it 1 s after it was sent" in line and "retried" not in line
