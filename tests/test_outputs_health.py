"""The metrics + health HTTP server: /metrics, /healthz, /readyz (503 until every check passes)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from finsent.health import HealthServer
from finsent.metrics import PipelineMetrics


def test_health_endpoints() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, ["ACME"])
    metrics.model_info.labels(version="v1", device="cpu", variant="int8").set(1)
    metrics.consumed.labels(source="news").inc(3)
    metrics.ticker_labels.labels(ticker=metrics.ticker_label("ZZZ"), sentiment="negative").inc()
    state = {"kafka": False, "model_loaded": True}
    server = HealthServer(registry, lambda: state, "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "checks": state}
        state["kafka"] = True
        assert httpx.get(f"{base}/readyz").status_code == 200
        body = httpx.get(f"{base}/metrics").text
        for name in (
            "finsent_messages_consumed_total",
            "finsent_model_info",
            "finsent_batch_size_messages_bucket",
            "finsent_inference_seconds_bucket",
            "finsent_label_confidence_bucket",
            "finsent_output_errors_total",
            "finsent_last_batch_timestamp_seconds",
        ):
            assert name in body, name
        assert 'finsent_messages_consumed_total{source="news"} 3.0' in body
        assert 'finsent_ticker_labels_total{sentiment="negative",ticker="other"} 1.0' in body
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


def test_failing_readiness_check_is_not_ready() -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = HealthServer(CollectorRegistry(), broken, "127.0.0.1", 0).start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/readyz").status_code == 503
    finally:
        server.stop()


def test_a_client_that_never_finishes_its_request_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection holds a thread: one that sends half a request must not hold it for ever."""
    import socket

    import finsent.health

    monkeypatch.setattr(finsent.health, "CLIENT_TIMEOUT_S", 0.3)
    server = HealthServer(CollectorRegistry(), dict, "127.0.0.1", 0).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the blank line that ends the request
            assert s.recv(1024) == b""  # closed by the server, not by our 10 s timeout
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200
    finally:
        server.stop()
