"""`finsent demo`: everything on one machine. Starts a local Kafka + Elasticsearch API server (noida-db,
from the installed package) unless a broker is configured, creates the topics, replays the bundled sample
stream (three hours of synthetic headlines compressed into seconds, with a burst of negative news about
$ACME), runs the pipeline and the alert worker, and shows live progress until the sample is done.

Whatever is configured, the demo never writes to the deployment's own topics, groups or indices, nor
notifies its channels (`demo_settings`): run on a production broker, it wrote 470 synthetic records into
the raw topic, consumed as the production groups and sent fake critical alerts to the real receivers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from finsent.extras import missing_extra
from finsent.kafka_topics import ensure_topics
from finsent.log_redaction import installed_mask
from finsent.processing import Batch, Labeled
from finsent.registry import worker_registry
from finsent.settings import Settings
from ingest.sources.http import without_query

log = logging.getLogger(__name__)

DEMO_PARTITIONS = 3
DEMO_SUFFIX = "-demo"
"""Appended to every topic, consumer group and the index prefix the demo uses: never the deployment's."""
FRAME_LOG_LINES = 4
FRAME_KEPT_RECORDS = 1000


def sample_stream_path() -> Path:
    return Path(str(resources.files("finsent.data").joinpath("sample_stream.jsonl")))


def shifted_lines(lines: list[str], now: datetime) -> list[bytes]:
    """Move every `published_at` so the stream ends now and keeps its spacing; bad lines stay as they are."""
    stamps: list[datetime] = []
    for line in lines:
        try:
            stamps.append(datetime.fromisoformat(json.loads(line)["published_at"]))
        except Exception:
            continue
    shift = now - max(stamps) if stamps else None
    out: list[bytes] = []
    for line in lines:
        try:
            obj = json.loads(line)
            when = datetime.fromisoformat(obj["published_at"])
            assert shift is not None
            obj["published_at"] = f"{(when + shift).astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z"
            out.append(json.dumps(obj, ensure_ascii=False).encode("utf-8"))
        except Exception:
            out.append(line.encode("utf-8"))
    return out


@dataclass
class Progress:
    """What the terminal shows; fed from the pipeline's and the alert worker's callbacks (other threads)."""

    produced: int = 0
    total: int = 0
    labeled: int = 0
    dead: int = 0
    started: float = field(default_factory=time.monotonic)
    latest: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    alerts: list[str] = field(default_factory=list)
    negatives: dict[str, int] = field(default_factory=dict)
    negative_label: str = "negative"  # alerts.negative_label: what the alerts count as negative
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=FRAME_LOG_LINES))
    counts: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=11))  # (time, labeled)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_batch(self, batch: Batch, labeled: Labeled) -> None:
        with self.lock:
            self.dead += len(batch.dead_letters)
            for message, pred in zip(batch.messages, labeled.predictions, strict=True):
                if pred is None:
                    self.dead += 1
                    continue
                self.labeled += 1
                if pred.sentiment == self.negative_label:
                    for t in message.tickers:
                        self.negatives[t] = self.negatives.get(t, 0) + 1
                tick = ",".join(message.tickers[:2]) or "-"
                self.latest.append(
                    f"{pred.sentiment:>8} {pred.sentiment_score:4.2f}  {pred.topic[:22]:<22} "
                    f"{tick:<10} {' '.join(message.text.split())[:60]}"
                )

    def on_alert(self, alert: Any) -> None:
        with self.lock:
            status = "escalated" if getattr(alert, "escalation", False) else getattr(alert, "status", "?")
            line = (
                f"[{status.upper()}] {getattr(alert, 'severity', '')} {getattr(alert, 'key_type', '')}:"
                f"{getattr(alert, 'key', '')}  {getattr(alert, 'summary', '')}"
            )
            self.alerts.append(line[:160])

    def done(self) -> bool:
        with self.lock:
            return self.total > 0 and self.produced >= self.total and self.labeled + self.dead >= self.total

    def on_log(self, line: str) -> None:
        with self.lock:
            self.logs.append(line)

    def render(self) -> str:
        with self.lock:
            now = time.monotonic()
            elapsed = max(1e-6, now - self.started)
            self.counts.append((now, self.labeled))
            since, then = self.counts[0]
            # over the last few seconds: once the sample is done, the average over all the time shown
            # kept falling though nothing was wrong
            rate = (self.labeled - then) / (now - since) if now - since >= 1.0 else self.labeled / elapsed
            top = sorted(self.negatives.items(), key=lambda kv: -kv[1])[:5]
            lines = [
                f"finsent demo  {elapsed:5.1f}s   sent {self.produced}/{self.total}   "
                f"labeled {self.labeled}   dead-lettered {self.dead}   "
                f"rate {rate:6.1f} msg/s (mean {self.labeled / elapsed:.1f})",
                "negative mentions: " + ("  ".join(f"{t} {n}" for t, n in top) or "-"),
                "latest labels:",
                *(f"  {x}" for x in self.latest),
                f"alerts ({len(self.alerts)}):",
                *(f"  {a}" for a in self.alerts[-6:]),
                *(["log:", *(f"  {x}" for x in self.logs)] if self.logs else []),
                "Ctrl-C stops the demo",
            ]
            return "\n".join(lines)


class FrameLog(logging.Handler):
    """Log records shown in the live frame while it is redrawn: a line written to the terminal between
    two redraws broke the cursor arithmetic, and the frame was drawn over it and stacked up. The frame
    shows the warnings, one line each; every record is kept (the last FRAME_KEPT_RECORDS) and written
    out in full once the frame is done (`logs_in_frame`)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.kept: deque[logging.LogRecord] = deque(maxlen=FRAME_KEPT_RECORDS)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append(record)
        if record.levelno < logging.WARNING:
            return
        try:
            self.progress.on_log(" ".join(self.format(record).split()))
        except Exception:
            self.handleError(record)


@contextmanager
def logs_in_frame(progress: Progress) -> Iterator[None]:
    """While the frame is redrawn, the root logger writes into it instead of to the terminal; afterwards
    the records it kept go to the terminal's handlers as they would have, tracebacks included. Secrets
    are masked in both (`finsent.log_redaction`)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    frame = FrameLog(progress)
    frame.addFilter(installed_mask())
    root.handlers = [frame]
    try:
        yield
    finally:
        root.handlers = saved
        for record in frame.kept:
            for handler in saved:
                if record.levelno >= handler.level:
                    handler.handle(record)


def clipped(frame: str, columns: int) -> str:
    """Each line of `frame` cut to fit `columns - 1` cells: a line that wraps takes two rows, and the
    redraw, which moves up one row per line, then drew each frame below the last."""
    width = max(20, columns - 1)
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in frame.split("\n"))


def demo_settings(settings: Settings, local: tuple[str, str] | None) -> Settings:
    """The settings the demo runs with: every topic, consumer group and the index prefix with
    DEMO_SUFFIX, and no notifier but the log, whatever is configured. With `local` (the Kafka and
    Elasticsearch addresses of the server the demo started) that server is used for both, with default
    connection settings (a deployment's TLS or SASL would not reach it), and never an Elasticsearch of
    the deployment's."""
    p, a, e, n = settings.pipeline, settings.alerts, settings.elasticsearch, settings.alerts.notifiers
    pipeline = p.model_copy(
        update={
            "input_topics": tuple(t + DEMO_SUFFIX for t in p.input_topics),
            "labeled_topic": p.labeled_topic + DEMO_SUFFIX,
            "dead_letter_topic": p.dead_letter_topic + DEMO_SUFFIX,
            "group_id": p.group_id + DEMO_SUFFIX,
        }
    )
    quiet = n.model_copy(
        update={
            name: getattr(n, name).model_copy(update={"enabled": False})
            for name in ("alertmanager", "slack", "webhook", "email")
        }
    )
    alerts = a.model_copy(
        update={
            "group_id": a.group_id + DEMO_SUFFIX,
            "state_topic": a.state_topic + DEMO_SUFFIX,
            "notifiers": quiet,
        }
    )
    kafka, es = settings.kafka, e
    if local is not None:
        kafka = type(settings.kafka)(bootstrap_servers=local[0])
        es = type(e)(url=local[1], number_of_replicas=0, lifecycle_enabled=False)
    es = es.model_copy(update={"index_prefix": es.index_prefix + DEMO_SUFFIX})
    return settings.model_copy(
        update={"pipeline": pipeline, "alerts": alerts, "kafka": kafka, "elasticsearch": es}
    )


def where_it_writes(settings: Settings) -> str:
    """One line saying where the demo's data goes (a broker of the user's: theirs to clean up)."""
    p = settings.pipeline
    topics = ", ".join([*p.input_topics, p.labeled_topic, p.dead_letter_topic, settings.alerts.state_topic])
    es = settings.elasticsearch
    index = (
        f"indices {es.index_prefix}-* on the Elasticsearch at {without_query(es.url)}"
        if es.enabled and es.url
        else "no Elasticsearch"
    )
    groups = f"{p.group_id}, {settings.alerts.group_id}"
    return f"demo data: topics {topics}; groups {groups}; {index}; alerts to the log only"


def free_port() -> int:
    """A loopback TCP port free right now (the demo's servers, the benches and the tests use it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"local server did not open port {port} within {timeout_s:.0f}s")


def noida_binary() -> Path:
    """The server binary inside the noida-db package (the `demo` extra)."""
    import noida_db

    return Path(os.path.dirname(noida_db.__file__)) / "noida-db"


def noida_argv(binary: Path, data_dir: Path, kafka_port: int, es_port: int) -> list[str]:
    """The noida-db binary's own command line (not its Python wrapper, whose stop orphans the server):
    Kafka and the Elasticsearch API on loopback, data under `data_dir`."""
    return [
        str(binary),
        "start",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--only",
        "kafka,elasticsearch",
        "--kafka-port",
        str(kafka_port),
        "--elasticsearch-port",
        str(es_port),
    ]


@contextmanager
def local_servers() -> Iterator[tuple[str, str]]:
    """noida-db (Kafka + Elasticsearch API) on free loopback ports; stopped by its PID on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="finsent-demo-"))
    kport, eport = free_port(), free_port()
    argv = noida_argv(noida_binary(), workdir / "data", kport, eport)
    with (workdir / "noida.log").open("wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(kport)
        _wait_port(eport)
        yield f"127.0.0.1:{kport}", f"http://127.0.0.1:{eport}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def create_topics(settings: Settings) -> None:
    p = settings.pipeline
    wanted = [(t, DEMO_PARTITIONS) for t in p.input_topics]
    wanted += [(p.labeled_topic, DEMO_PARTITIONS), (p.dead_letter_topic, 1)]
    ensure_topics(settings.kafka.client_kwargs(), wanted)


def _replay(
    settings: Settings, lines: list[bytes], rate: float, progress: Progress, stop: threading.Event
) -> None:
    from finsent.outputs.kafka_outputs import make_producer

    producer = make_producer(settings.kafka)
    topic = settings.pipeline.input_topics[0]
    started = time.monotonic()
    try:
        for i, value in enumerate(lines):
            if stop.is_set():
                break
            delay = started + i / rate - time.monotonic() if rate > 0 else 0
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, value=value)
            with progress.lock:
                progress.produced += 1
        producer.flush()
    finally:
        producer.close()


def _quiet_libraries() -> None:
    for name in ("kafka", "elastic_transport", "finsent", "alerts", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_demo(settings: Settings, *, duration_s: float = 0.0, rate: float = 50.0) -> int:
    """Run the demo; returns the exit code: 0 when every sample message was labeled or dead-lettered, or
    when `duration_s` (above 0) was reached first; 130 when interrupted (Ctrl-C, SIGTERM); 1 when the
    pipeline stopped unexpectedly."""
    with hangup_as_interrupt():
        if settings.kafka.bootstrap_servers:
            return _run(demo_settings(settings, None), duration_s, rate)
        if missing_extra(
            "noida_db", "demo", "demo", "or set kafka.bootstrap_servers to use a running broker"
        ):
            return 2
        print(
            "no broker configured: starting a local Kafka + Elasticsearch API server (noida-db) ...",
            flush=True,
        )
        with local_servers() as local:
            return _run(demo_settings(settings, local), duration_s, rate)


@contextmanager
def hangup_as_interrupt() -> Iterator[None]:
    """SIGHUP (the terminal closed, an SSH session dropped) as Ctrl-C while the demo runs: the local
    server lives in a session of its own, and a demo killed by the hang-up left it running, with its
    data. Only from the main thread, where Python delivers signals; the previous handler is put back."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.signal(signal.SIGHUP, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(settings: Settings, duration_s: float, rate: float) -> int:
    """Run the demo on a reachable broker. 0 when the sample was done or `duration_s` reached; 130 when
    interrupted (Ctrl-C, or SIGTERM, which `finsent demo` turns into one), said as `demo interrupted
    (N/M sent)`; 1 only when the pipeline stopped on its own."""
    from finsent.app import alert_worker_thread, load_model, run_pipeline
    from finsent.cli import EXIT_INTERRUPTED
    from finsent.health import LoopHolder

    _quiet_libraries()
    if settings.metrics.enabled:
        settings = settings.model_copy(
            update={"metrics": settings.metrics.model_copy(update={"port": free_port()})}
        )
    raw = sample_stream_path().read_text(encoding="utf-8").splitlines()
    lines = shifted_lines([x for x in raw if x.strip()], datetime.now(UTC))
    progress = Progress(total=len(lines), negative_label=settings.alerts.negative_label)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    interactive = sys.stdout.isatty()
    outcome = "interrupted"
    try:
        print(where_it_writes(settings), flush=True)
        create_topics(settings)
        print("loading the model ...", flush=True)
        labeler = load_model(settings)
        registry = worker_registry()
        alert_loop = LoopHolder()  # as `finsent run`: /healthz watches the alert worker's loop too
        alert_worker = alert_worker_thread(settings, stop, registry, progress.on_alert, current=alert_loop)
        threads = [
            threading.Thread(
                target=run_pipeline,
                args=(settings, stop),
                kwargs={
                    "labeler": labeler,
                    "on_batch": progress.on_batch,
                    "registry": registry,
                    "alert_loop": alert_loop if alert_worker is not None else None,
                },
                name="pipeline",
                daemon=True,
            ),
            threading.Thread(
                target=_replay, args=(settings, lines, rate, progress, stop), name="replay", daemon=True
            ),
        ]
        if alert_worker is not None:
            threads.append(alert_worker)
        if settings.metrics.enabled:
            print(f"metrics: http://{settings.metrics.host}:{settings.metrics.port}/metrics", flush=True)
        for t in threads:
            t.start()
        if interactive:
            with logs_in_frame(progress):
                outcome = _show_progress(progress, threads[0], duration_s, interactive)
        else:
            outcome = _show_progress(progress, threads[0], duration_s, interactive)
    except KeyboardInterrupt:
        pass  # Ctrl-C, or SIGTERM (`finsent demo`): the servers and threads are stopped below all the same
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if not interactive and threads:
        print(progress.render(), flush=True)
    if outcome == "interrupted":
        print(f"demo interrupted ({progress.produced}/{progress.total} sent)", flush=True)
        return EXIT_INTERRUPTED
    if outcome == "failed":
        return 1
    print(
        "demo finished" if outcome == "done" else f"demo finished: --duration {duration_s:g} s reached",
        flush=True,
    )
    return 0


def _show_progress(
    progress: Progress, pipeline: threading.Thread, duration_s: float, interactive: bool
) -> str:
    """Show the progress every half second until the sample is done (and 5 s more, for the alerts to
    close), `duration_s` has passed (when above 0) or the pipeline stopped: "done", "duration" or
    "failed"."""
    deadline = time.monotonic() + duration_s if duration_s > 0 else None
    done_at: float | None = None
    previous_lines = 0
    while True:
        time.sleep(0.5)
        frame = progress.render()
        if interactive:
            frame = clipped(frame, shutil.get_terminal_size().columns)
            sys.stdout.write(("\x1b[F\x1b[2K" * previous_lines) + frame + "\n")
            previous_lines = frame.count("\n") + 1
        else:
            print(frame.splitlines()[0], flush=True)
        sys.stdout.flush()
        now = time.monotonic()
        if not pipeline.is_alive():
            print("the pipeline stopped unexpectedly (see the log above)", file=sys.stderr)
            return "failed"
        if progress.done() and done_at is None:
            done_at = now
        if deadline is not None and now >= deadline:
            return "done" if progress.done() else "duration"
        if deadline is None and done_at is not None and now - done_at >= 5.0:
            return "done"
