"""One small HTTP server for /metrics (Prometheus), /healthz (the process is alive) and /readyz (connected
to Kafka, model loaded, sinks reachable). Runs in a daemon thread; port 0 picks a free port."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Mapping[str, bool]]


CLIENT_TIMEOUT_S = 10.0


class HealthServer:
    """`start()` binds and serves in the background; `port` is the bound port; `stop()` shuts it down."""

    def __init__(
        self, registry: CollectorRegistry, readiness: ReadinessCheck, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info(
            "metrics and health on http://%s:%d (/metrics /healthz /readyz)",
            self._server.server_address[0],
            self.port,
        )
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # A client that opens a connection and never finishes its request holds a thread: not for long.
            timeout = CLIENT_TIMEOUT_S

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    try:
                        checks = dict(outer.readiness())
                    except Exception as e:  # a failing check means not ready, never a crashed server
                        checks = {"readiness_check": False}
                        log.warning("readiness check failed: %s", e)
                    ready = all(checks.values())
                    body = json.dumps({"ready": ready, "checks": checks}).encode()
                    self._send(200 if ready else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("health http: %s", format % args)

        return Handler
