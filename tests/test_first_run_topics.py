"""The first `finsent run` on a fresh broker (docs/pipeline.md's quick-start): the output topics do not exist
yet. It used to hang for good with the in-process alert worker on: the worker's subscription created the
labeled topic before the labeler's producer started; noida-db and Tansu answer the producer's first
metadata request (which names no topic) with every topic, so the producer never tracked the labeled topic,
and the first dead letter's metadata request (naming the dead-letter topic alone) dropped it from the
producer's partition table: the labeled records waited for a leader no answer named again, the flush with
them, with no error and a core busy, and SIGTERM ended in a traceback.

Now `finsent run` creates its missing output topics with documented partitions before anything subscribes,
the producer tracks every topic it writes, a stalled flush says so in the log, and a stop drops what an
output could not take without a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition

from finsent.cli import main
from finsent.demo import free_port
from finsent.kafka_topics import (
    DEAD_LETTER_TOPIC_PARTITIONS,
    INPUT_TOPIC_PARTITIONS_EXAMPLE,
    LABELED_TOPIC_PARTITIONS,
    missing_input_topics,
)
from finsent.outputs.kafka_outputs import FLUSH_DRIVEN, FLUSH_STALL_WARNING_S, KafkaOutputs, make_producer
from finsent.settings import KafkaSettings
from ingest.message import DeadLetter, KafkaMeta
from tests.pipeline_helpers import publish, read_topic, valid_message, wait_for
from tests.servers import Noida, Tansu, create_topic

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.kafka


def partition_count(broker: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        (described,) = admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        admin.close()


def topic_exists(broker: str, topic: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        return topic in set(admin.list_topics())
    finally:
        admin.close()


def record_count(broker: str, topic: str) -> int:
    """The sum of the log end offsets of `topic` (0 while it does not exist): more than 0 once it has
    records, but not their number on Tansu, whose end offsets count record batches."""
    consumer = KafkaConsumer(bootstrap_servers=broker)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts]) if parts else {}
        return sum(ends.values())
    finally:
        consumer.close()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def metric_or_0(port: int, name: str) -> float:
    """`metric`, or 0 while the worker does not answer yet."""
    try:
        return metric(port, name)
    except OSError:
        return 0.0


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("FINSENT_")}


def worker_env(broker: str, unique: str, **extra: str) -> dict[str, str]:
    """`finsent run` as the quick-start runs it, on this test's own topic names: defaults otherwise
    (alerting on, in the same process), Elasticsearch off."""
    return {
        **base_env(),
        "FINSENT_KAFKA__BOOTSTRAP_SERVERS": broker,
        "FINSENT_ELASTICSEARCH__ENABLED": "false",
        "FINSENT_PIPELINE__INPUT_TOPICS": json.dumps([f"raw-{unique}"]),
        "FINSENT_PIPELINE__LABELED_TOPIC": f"labeled-{unique}",
        "FINSENT_PIPELINE__DEAD_LETTER_TOPIC": f"dead-{unique}",
        "FINSENT_PIPELINE__GROUP_ID": f"g-{unique}",
        "FINSENT_ALERTS__GROUP_ID": f"alerts-{unique}",
        "FINSENT_ALERTS__STATE_TOPIC": f"alert-state-{unique}",
        **extra,
    }


def start_run(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`finsent run` in a process of its own, its output in `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "finsent", "run"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_and_wait(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """SIGTERM, then the seconds until the process ended (killed, and the test failed, past `timeout_s`)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"not stopped {timeout_s:.0f} s after SIGTERM") from None
    return time.monotonic() - started


def dead_letter(i: int) -> DeadLetter:
    return DeadLetter("invalid_json", "not JSON", b"{oops", KafkaMeta("raw", 0, i))


def test_the_partitions_finsent_run_creates_are_the_deploy_files() -> None:
    """A topic `finsent run` creates has the partitions compose's kafka-init and Strimzi give it."""
    from finsent.kafka_topics import output_topics
    from tests.test_deploy_static import DEFAULTS, _compose_partitions, kafka_topic_partitions

    made = {name: partitions for name, partitions, _ in output_topics(DEFAULTS)}
    assert made == {"finsent.labeled": LABELED_TOPIC_PARTITIONS, "finsent.dead-letter": 1}
    for deployed in (_compose_partitions(), kafka_topic_partitions()):
        assert {name: deployed[name] for name in made} == made
        # the command the missing-input warning suggests creates the input topic as they do
        assert deployed["finsent.raw"] == INPUT_TOPIC_PARTITIONS_EXAMPLE


def test_missing_input_topics_keep_the_configured_order() -> None:
    assert missing_input_topics(("b", "a", "c"), {"c", "x"}) == ["b", "a"]
    assert missing_input_topics(("a",), {"a"}) == []


def test_a_missing_input_topic_is_named_at_start_and_labeled_once_created(
    broker: str, unique: str, tmp_path: Path
) -> None:
    """A misspelt or not yet created input topic left a worker idle with nothing in its log (probes
    green, lag 0). Now the start names it in one warning with the command that creates it, and the worker
    labels what is published to it once it exists."""
    port = free_port()
    env = worker_env(broker, unique, FINSENT_METRICS__PORT=str(port), FINSENT_ALERTS__ENABLED="false")
    log_path = tmp_path / "run.log"
    proc = start_run(env, log_path)
    try:
        wait_for(
            lambda: "does not exist: nothing is labeled" in log_path.read_text(errors="replace"),
            "the missing input topic's warning",
            60,
        )
        # one partition: these brokers may create it at the subscription already, with their default of
        # one, and a create asking for two then waited for a second partition that never came
        create_topic(broker, f"raw-{unique}", 1)
        publish(broker, f"raw-{unique}", [(0, None, json.dumps(valid_message(i)).encode()) for i in range(5)])
        try:
            wait_for(lambda: metric_or_0(port, "finsent_messages_consumed_total") >= 5, "consuming", 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
    finally:
        if proc.poll() is None:
            stop_and_wait(proc, 45)
    output = log_path.read_text(errors="replace")
    (warning,) = [line for line in output.splitlines() if "does not exist: nothing is labeled" in line]
    assert f"input topic raw-{unique} (pipeline.input_topics)" in warning
    assert warning.endswith(
        f"kafka-topics.sh --bootstrap-server {broker} --create --if-not-exists --topic raw-{unique} "
        f"--partitions {INPUT_TOPIC_PARTITIONS_EXAMPLE}"
    ), warning


def test_outputs_flush_when_one_output_topic_predates_the_producer(broker: str, unique: str) -> None:
    """The mechanism of the hang, on the producer alone: the labeled topic exists when the producer starts,
    the dead-letter topic does not (the brokers create it on use). The flush returned only when the
    delivery timeout expired the labeled records (set to 15 s here; 2 minutes by default)."""
    labeled, dead = f"labeled-{unique}", f"dead-{unique}"
    create_topic(broker, labeled, 1)
    producer = make_producer(
        KafkaSettings(bootstrap_servers=broker),
        **FLUSH_DRIVEN,
        request_timeout_ms=10_000,
        delivery_timeout_ms=15_000,
    )
    outputs = KafkaOutputs(producer, labeled_topic=labeled, dead_letter_topic=dead)
    stop = threading.Event()
    try:
        for i in range(3):  # three batches, each flushed: the second and third find the metadata as left
            outputs.send_labeled(b"all:*", json.dumps({"n": i}).encode())
            outputs.send_dead_letter(dead_letter(i))
            started = time.monotonic()
            outputs.flush(stop=stop)
            assert time.monotonic() - started < 8.0, f"batch {i}: the flush waited for the delivery timeout"
    finally:
        outputs.close(timeout_s=0)
    assert [json.loads(r.value)["n"] for r in read_topic(broker, labeled, 3, timeout_s=10)] == [0, 1, 2]
    assert len(read_topic(broker, dead, 3, timeout_s=10)) == 3


def test_first_run_on_a_fresh_broker_creates_its_output_topics_and_labels(
    broker: str, unique: str, tmp_path: Path
) -> None:
    """The quick-start verbatim, on fresh topic names: `finsent produce` a file with two malformed records
    (dead letters), then `finsent run` with the defaults (the alert worker in the same process). Every
    message is labeled and every malformed record dead-lettered within seconds, the output topics have the
    documented partitions, nothing is counted as an output error, and SIGTERM stops it cleanly."""
    news = tmp_path / "news.jsonl"
    malformed = ["{not json", json.dumps({"text": "no source"})]
    lines = [json.dumps(valid_message(i)) for i in range(40)] + malformed
    news.write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = free_port()
    env = worker_env(
        broker, unique, FINSENT_METRICS__PORT=str(port), FINSENT_PIPELINE__SHUTDOWN_TIMEOUT_S="10"
    )
    produced = subprocess.run(
        [sys.executable, "-m", "finsent", "produce", str(news), "--topic", f"raw-{unique}", "--rate", "200"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert produced.returncode == 0, produced.stderr
    log_path = tmp_path / "run.log"
    proc = start_run(env, log_path)
    took = 0.0
    try:
        try:
            wait_for(lambda: metric_or_0(port, "finsent_messages_consumed_total") >= 42, "consuming", 60)
            wait_for(lambda: metric(port, "finsent_batches_total") >= 1, "a batch written", 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
        # (log end offsets would not do: Tansu's count record batches, not records)
        assert len(read_topic(broker, f"dead-{unique}", 2, timeout_s=20)) == 2
        events = read_topic(broker, f"labeled-{unique}", 40 * 3, timeout_s=20)
        assert {json.loads(e.value)["event_id"].split("|")[0] for e in events} == {f"v{i}" for i in range(40)}
        assert metric(port, "finsent_output_errors_total") == 0
        assert partition_count(broker, f"labeled-{unique}") == LABELED_TOPIC_PARTITIONS
        assert partition_count(broker, f"dead-{unique}") == DEAD_LETTER_TOPIC_PARTITIONS
    finally:
        if proc.poll() is None:
            took = stop_and_wait(proc, 10 + 30)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert took < 10 + 15, f"stopping took {took:.1f} s"
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    created = [line for line in output.splitlines() if "did not exist: created it" in line]
    assert len(created) == 2, output[-3000:]
    assert f"output topic labeled-{unique} (pipeline.labeled_topic)" in created[0]
    assert f"with {LABELED_TOPIC_PARTITIONS} partition(s)" in created[0]


def test_a_broker_refusing_to_create_an_output_topic_stops_the_start_in_one_line(
    noida: Noida, unique: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the labeler may not create topics (no CREATE permission, a creation policy), the start fails
    before the alert worker subscribes (the model is loaded first, so that one that fails to load has
    created nothing), with one line naming the topic, the
    broker's reason and the command that creates it: exit 2, like any setting to fix."""

    def refuse(self: KafkaAdminClient, new_topics: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        names = list(new_topics)
        return {
            "topics": [{"name": n, "error_code": 29, "error_message": "Authorization failed."} for n in names]
        }

    timers: list[threading.Timer] = []

    def stop_later(stop: threading.Event) -> None:  # no signal handlers in the test process; a bound
        timers.append(threading.Timer(30, stop.set))
        timers[-1].start()

    monkeypatch.setattr(KafkaAdminClient, "create_topics", refuse)
    monkeypatch.setattr("finsent.commands.pipeline.install_stop_signals", stop_later)
    for name in list(os.environ):
        if name.upper().startswith("FINSENT_") and not name.upper().startswith("FINSENT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FINSENT_CONFIG", "")
    for key, value in worker_env(noida.kafka, unique, FINSENT_METRICS__ENABLED="false").items():
        if key.startswith("FINSENT_"):
            monkeypatch.setenv(key, value)
    started = time.monotonic()
    try:
        code = main(["run"])
    finally:
        for timer in timers:
            timer.cancel()
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"finsent run: output topic labeled-{unique} (pipeline.labeled_topic) does not exist and the broker "
        "refused to create it ("
    ), last
    assert "TopicAuthorizationFailedError: Authorization failed.)" in last, last
    assert last.endswith(
        f"kafka-topics.sh --bootstrap-server {noida.kafka} --create --if-not-exists "
        f"--topic labeled-{unique} --partitions {LABELED_TOPIC_PARTITIONS}"
    ), last
    assert elapsed < 20, elapsed
    # nothing subscribed to it meanwhile (a subscription's metadata request creates it on these brokers)
    time.sleep(1)
    assert not topic_exists(noida.kafka, f"labeled-{unique}")


def test_sigterm_while_the_broker_hangs_stops_in_time_without_a_traceback(
    own_tansu: Tansu, unique: str, tmp_path: Path
) -> None:
    """The broker stops answering mid-stream (paused): a flush that waits longer than
    FLUSH_STALL_WARNING_S says which partitions hold unacknowledged records, and SIGTERM stops the worker
    within shutdown_timeout_s plus the bounded closing steps, exit 0, without the traceback kafka-python's
    close() left (it raised at its flush and its __del__ tried again at exit)."""
    broker = own_tansu.kafka
    create_topic(broker, f"raw-{unique}", 1)
    publish(broker, f"raw-{unique}", [(0, None, json.dumps(valid_message(i)).encode()) for i in range(3000)])
    shutdown_s = 3
    env = worker_env(
        broker,
        unique,
        FINSENT_METRICS__ENABLED="false",
        FINSENT_ALERTS__ENABLED="false",  # the alert worker's own stop is not under test here
        FINSENT_PIPELINE__SHUTDOWN_TIMEOUT_S=str(shutdown_s),
        FINSENT_PIPELINE__BATCH_MAX_MESSAGES="16",
    )
    log_path = tmp_path / "run.log"
    proc = start_run(env, log_path)
    try:
        wait_for(lambda: record_count(broker, f"labeled-{unique}") > 0, "the first labeled events", 60)
        os.kill(own_tansu.server.proc.pid, signal.SIGSTOP)
        wait_for(
            lambda: "Kafka outputs not acknowledged after" in log_path.read_text(errors="replace"),
            "the stalled flush's warning",
            FLUSH_STALL_WARNING_S + 20,
        )
        # shutdown_timeout_s for the batches, a flush slice, a commit (5 s), the consumer's close (5 s)
        took = stop_and_wait(proc, shutdown_s + 1 + 5 + 5 + 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.kill(own_tansu.server.proc.pid, signal.SIGCONT)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert took < shutdown_s + 1 + 5 + 5 + 3, f"stopping took {took:.1f} s\n{output[-3000:]}"
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    warning = next(line for line in output.splitlines() if "Kafka outputs not acknowledged after" in line)
    assert f"labeled-{unique}[" in warning
