"""One small HTTP server for /metrics (Prometheus), /healthz (liveness: the process, and the loop it
runs, still make progress) and /readyz (readiness: started and doing its work). Runs in a daemon thread;
port 0 picks a free port.

Neither probe asks whether Kafka or Elasticsearch answer: the workers serve no traffic, so readiness only
matters to the PodDisruptionBudget, and an outage of a shared dependency would make every pod unready at
once and block node drains; liveness failing on it would restart every pod for nothing. Output health is
in the metrics and the alert rules (docs/operations.md)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Mapping[str, bool]]
"""Named checks, each True when it passes; the probe passes when every one does."""


CLIENT_TIMEOUT_S = 10.0


class ConsumeLoop(Protocol):
    """What the probes read of a worker's consume loop (the labeler's runner, the alert worker)."""

    @property
    def last_poll(self) -> float:
        """`time.monotonic()` after its latest poll; 0 before the first."""
        ...

    def polling(self, within_s: float) -> bool:
        """Whether it polled within the last `within_s` seconds."""
        ...


LoopRef = Callable[[], ConsumeLoop | None]
"""The worker's consume loop, or None while it is still starting."""


def loop_readiness(loop_ref: LoopRef, within_s: float) -> HealthCheck:
    """Ready = started and its loop polled within `within_s`: working as a consumer. `within_s` must cover
    the longest a healthy loop blocks between polls, or an Elasticsearch or Kafka slowdown would turn
    every pod unready at once."""

    def check() -> dict[str, bool]:
        loop = loop_ref()
        return {"started": loop is not None, "consuming": loop is not None and loop.polling(within_s)}

    return check


def loop_liveness(loop_ref: LoopRef, stalled_after_s: float, name: str = "consume_loop") -> HealthCheck:
    """Alive unless the loop, once it polled, has not polled for `stalled_after_s`: a stuck loop gets the
    pod restarted. Start-up counts as alive, since a restart would only begin it again. `name` is the
    check's, which a failing /healthz shows."""

    def check() -> dict[str, bool]:
        loop = loop_ref()
        if loop is None or not loop.last_poll:  # still starting: nothing has polled yet
            return {name: True}
        return {name: loop.polling(stalled_after_s)}

    return check


def all_of(*checks: HealthCheck) -> HealthCheck:
    """Several checks as one probe, every named result kept, so that a failing probe says which failed."""

    def check() -> dict[str, bool]:
        results: dict[str, bool] = {}
        for each in checks:
            results.update(each())
        return results

    return check


class LoopHolder:
    """The consume loop a supervised worker runs now, as a `LoopRef`: each restart runs a new worker, so
    the probes ask this holder, never a worker. None while no run is under way (not begun yet, or between
    a failure and the restart that follows it): that loop is being restarted, not stuck, so it counts as
    starting."""

    def __init__(self) -> None:
        self._loop: ConsumeLoop | None = None

    def __call__(self) -> ConsumeLoop | None:
        return self._loop

    @contextmanager
    def running(self, loop: ConsumeLoop) -> Iterator[None]:
        """Hold `loop` for as long as the block runs it, however the run ends."""
        self._loop = loop
        try:
            yield
        finally:
            self._loop = None


def run_checks(check: HealthCheck, probe: str) -> dict[str, bool]:
    """The checks' results; a check that raises fails its probe, and never crashes the server."""
    try:
        return dict(check())
    except Exception as e:
        log.warning("%s check failed: %s", probe, e)
        return {f"{probe}_check": False}


class ListenError(Exception):
    """The metrics server cannot listen where `metrics.host` / `metrics.port` say: the port is taken (a
    second worker on the host with the same port) or the host is not an address of this machine."""


class HealthServer:
    """`start()` binds and serves in the background; `port` is the bound port; `stop()` shuts it down.
    Without `liveness`, /healthz answers 200 while the process serves HTTP."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: HealthCheck,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        liveness: HealthCheck | None = None,
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.liveness = liveness
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as e:
            raise ListenError(
                f"cannot listen on {host}:{port} (metrics.host / metrics.port): {e.strerror or e}"
            ) from e
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

    def answer(self, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type for a GET of `path`."""
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            return self._healthz()
        if path == "/readyz":
            checks = run_checks(self.readiness, "readiness")
            ready = all(checks.values())
            return _json_answer(ready, {"ready": ready, "checks": checks})
        return 404, b"not found\n", "text/plain; charset=utf-8"

    def _healthz(self) -> tuple[int, bytes, str]:
        """Alive: 200 "ok", the body probes and scripts have always seen. Not: 503 with JSON naming the
        failing check, as /readyz does, for whoever looks into why the pod was restarted."""
        checks = run_checks(self.liveness, "liveness") if self.liveness is not None else {}
        if all(checks.values()):
            return 200, b"ok\n", "text/plain; charset=utf-8"
        return _json_answer(False, {"alive": False, "checks": checks})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            # A client that opens a connection and never finishes its request holds a thread: not for long.
            timeout = CLIENT_TIMEOUT_S

            def do_GET(self) -> None:
                status, body, content_type = outer.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("health http: %s", format % args)

        return Handler


def _json_answer(passed: bool, result: Mapping[str, object]) -> tuple[int, bytes, str]:
    """200 when the probe passed, 503 (which fails a Kubernetes probe) otherwise; the result as JSON."""
    return 200 if passed else 503, json.dumps(result).encode(), "application/json"
