"""Stopping the commands by signal: a SIGTERM during the start-up Kafka check is a stop, not lost (as a
container's PID 1, Python ignores SIGTERM until a handler exists); `finsent produce` stopped by SIGINT or
SIGTERM still says how many records it sent; `finsent demo` exits 0 when its --duration is reached; the
alert worker's last line says whether each partition's state was saved."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from alerts.detector import Detector
from finsent.alert_worker import AlertWorker, PartitionState
from finsent.demo import free_port, run_demo
from finsent.produce import Record, ReplayStop, replay
from finsent.settings import settings_env
from tests.pipeline_helpers import alert_worker_settings, read_topic
from tests.process_helpers import finsent_popen, wait_for_line
from tests.servers import Noida, create_topic
from tests.test_pipeline_demo import demo_settings


def stopped(proc: subprocess.Popen[str], signum: int, timeout_s: float) -> tuple[float, str, str]:
    """Send `signum`; (seconds until the process ended, its stdout, the rest of its stderr)."""
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError(f"not stopped {timeout_s:.0f} s after signal {signum}") from None
    return time.monotonic() - started, out or "", err


@pytest.fixture
def popen_reaper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed at its end if still running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---- SIGTERM during the start-up Kafka check -------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "alerts", "sources"])
def test_sigterm_during_the_kafka_check_stops_at_once(
    command: str, tmp_path: Path, popen_reaper: list[subprocess.Popen[str]]
) -> None:
    """Nothing listens at the address: the check would wait 30 s. A SIGTERM during it ends the command
    within a second or two, as a requested stop (exit 0), with one line saying so; before, it was ignored
    as PID 1, and lost if the broker then answered."""
    bootstrap = f"127.0.0.1:{free_port()}"
    args = [command]
    if command == "sources":
        sources = tmp_path / "sources.yaml"
        sources.write_text("sources:\n  - {name: wire, kind: stdin}\n")
        args += ["--config", str(sources)]
    proc = finsent_popen(
        args,
        {"FINSENT_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "FINSENT_ELASTICSEARCH__ENABLED": "false"},
        stdin=subprocess.DEVNULL,
    )
    popen_reaper.append(proc)
    seen: list[str] = []
    assert proc.stderr is not None
    wait_for_line(proc.stderr, "connecting to Kafka at", seen)
    time.sleep(1)  # inside the check (kafka-python retries for 30 s)
    took, _, err = stopped(proc, signal.SIGTERM, 20)
    stderr = "".join(seen) + err
    assert proc.returncode == 0, stderr
    assert took < 5, f"{took:.1f} s\n{stderr}"
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.endswith(f"finsent {command}: stopped while connecting to Kafka at {bootstrap}"), stderr


# ---- finsent produce stopped by a signal -----------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_produce_stopped_by_a_signal_prints_the_count(
    signum: int,
    code: int,
    noida: Noida,
    unique: str,
    popen_reaper: list[subprocess.Popen[str]],
) -> None:
    """A pipe whose writer has gone silent: the signal ends the wait for its next line, the records sent
    are flushed and counted on stdout, marked interrupted; exit 128 + the signal. SIGTERM killed it (143,
    no count, buffered records lost); SIGINT said `interrupted` but not how many were sent."""
    topic = f"produce-stop-{unique}"
    create_topic(noida.kafka, topic)
    proc = finsent_popen(
        ["produce", "/dev/stdin", "--topic", topic],
        {"FINSENT_KAFKA__BOOTSTRAP_SERVERS": noida.kafka},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    popen_reaper.append(proc)
    assert proc.stdin is not None
    proc.stdin.write("".join(f'{{"source": "s", "text": "t{i}"}}\n' for i in range(3)))
    proc.stdin.flush()  # and kept open, silent: the replay waits for a fourth line
    assert len(read_topic(noida.kafka, topic, expected=3, settle_s=0.2)) == 3
    took, out, err = stopped(proc, signum, 30)
    assert proc.returncode == code, err
    assert out == f"sent 3 records to {topic} (interrupted)\n", (out, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert took < 10, took


class StalledProducer:
    """Takes records and acknowledges only the first: its flush never ends (a broker that went quiet)."""

    def __init__(self) -> None:
        self.sent = 0
        self.released = threading.Event()

    def send(self, topic: str, key: bytes | None, value: bytes) -> StalledProducer:
        self.sent += 1
        return self

    def add_callback(self, callback: Any) -> None:
        if self.sent == 1:
            callback(None)

    def add_errback(self, errback: Any) -> None:
        pass

    def flush(self) -> None:
        self.released.wait(30)


def test_a_stopped_replay_waits_a_bounded_time_for_acks_and_counts_the_rest() -> None:
    stop = ReplayStop()

    def records() -> Iterator[Record]:
        for i in range(10):
            if i == 3:
                stop.request(signal.SIGTERM)  # as the handler does, while the replay waits for input
            yield None, f"m{i}".encode()

    producer = StalledProducer()
    started = time.monotonic()
    try:
        result = replay(producer, "t", records(), stop=stop, stop_flush_s=0.3)  # type: ignore[arg-type]
    finally:
        producer.released.set()
    assert time.monotonic() - started < 5
    assert producer.sent == 3
    assert (result.sent, result.unconfirmed, result.failed) == (1, 2, 0)
    assert result.stopped_by == signal.SIGTERM


# ---- finsent demo --duration -------------------------------------------------------------------------------


def test_demo_exits_0_when_its_duration_is_reached(
    noida: Noida, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 20 messages/s the sample takes over 15 s: --duration 3 ends it first, and that is a normal end
    (it exited 1, as if the pipeline had failed)."""
    settings = demo_settings(noida, unique, elasticsearch={"enabled": False}, metrics={"enabled": False})
    assert run_demo(settings, duration_s=3, rate=20) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "demo finished: --duration 3 s reached", out


# ---- the alert worker's last line ----------------------------------------------------------------------


def idle_worker(saved: bool) -> AlertWorker:
    """A worker owning partitions 0 and 1 (nothing connected), whose shutdown save succeeds or fails."""
    settings = alert_worker_settings(f"127.0.0.1:{free_port()}", "last-line", es_url=None)
    worker = AlertWorker(settings, registry=CollectorRegistry())
    worker.parts = {p: PartitionState(partition=p, detector=Detector(settings.alerts)) for p in (1, 0)}
    worker.parts[1].dirty = False  # saved before: nothing new

    def persist(partitions: set[int] | None = None, *, handover: bool = False) -> None:
        if not saved:
            raise TimeoutError("state topic did not answer")
        for ps in worker.parts.values():
            ps.dirty = False

    worker._persist_and_commit = persist  # type: ignore[method-assign]
    return worker


def test_the_alert_worker_says_its_state_was_saved_as_its_last_line(caplog: pytest.LogCaptureFixture) -> None:
    worker = idle_worker(saved=True)
    with caplog.at_level(logging.INFO, logger="finsent.alert_worker"):
        worker._shutdown()
    last = caplog.records[-1]
    assert (last.levelno, last.getMessage()) == (
        logging.INFO,
        "alert worker stopped (state saved for partitions [0, 1])",
    )


def test_the_alert_worker_names_the_partitions_whose_state_was_not_saved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = idle_worker(saved=False)
    with caplog.at_level(logging.INFO, logger="finsent.alert_worker"):
        worker._shutdown()
    last = caplog.records[-1]
    assert last.levelno == logging.WARNING
    assert last.getMessage().startswith("alert worker stopped (state NOT saved for partitions [0]"), last
    assert last.getMessage().endswith("; saved for partitions [1])"), last


def test_an_alert_worker_without_partitions_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = alert_worker_settings(f"127.0.0.1:{free_port()}", "no-parts", es_url=None)
    worker = AlertWorker(settings, registry=CollectorRegistry())
    with caplog.at_level(logging.INFO, logger="finsent.alert_worker"):
        worker._shutdown()
    assert caplog.records[-1].getMessage() == "alert worker stopped (no partitions assigned)"


def test_finsent_alerts_ends_with_the_saved_partitions_at_sigterm(
    noida: Noida, unique: str, popen_reaper: list[subprocess.Popen[str]]
) -> None:
    settings = alert_worker_settings(noida.kafka, unique, es_url=None)
    create_topic(noida.kafka, settings.pipeline.labeled_topic, partitions=2)
    env = {**settings_env(settings), "FINSENT_METRICS__ENABLED": "false"}
    proc = finsent_popen(["alerts"], env)
    popen_reaper.append(proc)
    seen: list[str] = []
    assert proc.stderr is not None
    for _ in range(2):  # one line per partition restored (here: none saved yet)
        wait_for_line(proc.stderr, "no saved alert state, starting fresh", seen)
    _, _, err = stopped(proc, signal.SIGTERM, 60)
    stderr = "".join(seen) + err
    assert proc.returncode == 0, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.endswith(
        "INFO finsent.alert_worker: alert worker stopped (state saved for partitions [0, 1])"
    )
