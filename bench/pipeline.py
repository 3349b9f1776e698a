"""Pipeline throughput against the model alone, on the same texts, in the same run.

Starts a local Kafka + Elasticsearch API server (noida-db), publishes a fixed corpus (texts of
../shared/data, the sentiment and topic sets interleaved 1:1 in a fixed-seed order), then measures
  1. the model alone: `labeler.label()` on the corpus in batches of the pipeline's batch size;
  2. the pipeline: Kafka in -> labeled topic + Elasticsearch + metrics out (`finsent run`'s code);
  3. the model alone again (the machine is shared: the mean of 1 and 3 is the reference);
and prints texts/s for each and the ratio pipeline / model alone.

    python bench/pipeline.py [--n 4000] [--batch 64] [--partitions 1]"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import sys
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from finsent.app import run_pipeline  # noqa: E402
from finsent.demo import local_servers  # noqa: E402
from finsent.processing import Batch, Labeled  # noqa: E402
from finsent.settings import Settings  # noqa: E402
from inference.labeler import load_labeler  # noqa: E402
from inference.types import Labeler  # noqa: E402

DATA = REPO.parent / "shared" / "data"


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


def publish(bootstrap: str, topic: str, texts: list[str], partitions: int) -> None:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for i, text in enumerate(texts):
        value = json.dumps({"id": f"b{i}", "source": "bench", "text": text}).encode()
        producer.send(topic, value=value, partition=i % partitions)
    producer.flush()
    producer.close()


def pipeline(settings: Settings, labeler: Labeler, n: int, timeout_s: float) -> tuple[float, float, float]:
    """Texts/s between the end of the first batch and the end of the last (excludes group join), and the
    share of that time the model was busy (near 1: the model is the bottleneck)."""
    done = threading.Event()
    lock = threading.Lock()
    state = {"count": 0, "first_end": 0.0, "first_size": 0, "last_end": 0.0, "infer_s": 0.0, "cpu0": 0.0}

    def on_batch(batch: Batch, labeled: Labeled) -> None:
        now = time.perf_counter()
        with lock:
            if state["count"] == 0:
                state["first_end"], state["first_size"] = now, len(batch.records)
                state["cpu0"] = time.process_time()
            else:
                state["infer_s"] += labeled.seconds
            state["count"] += len(batch.records)
            state["batches"] = state.get("batches", 0) + 1
            state["last_end"] = now
            if state["count"] >= n:
                state["cpu1"] = time.process_time()
                done.set()

    stop = threading.Event()
    thread = threading.Thread(
        target=run_pipeline,
        args=(settings, stop),
        kwargs={"labeler": labeler, "registry": CollectorRegistry(), "on_batch": on_batch},
        daemon=True,
    )
    thread.start()
    finished = done.wait(timeout_s)
    stop.set()
    thread.join(timeout=60)
    if not finished:
        raise RuntimeError(f"pipeline labeled only {state['count']} of {n} texts in {timeout_s:.0f}s")
    seconds = state["last_end"] - state["first_end"]
    texts = n - state["first_size"]
    print(f"pipeline: {state['batches']:.0f} batches, {n / state['batches']:.1f} texts per batch", flush=True)
    return texts / seconds, state["infer_s"] / seconds, (state["cpu1"] - state["cpu0"]) / texts * 1000


def latency(
    settings: Settings, labeler: Labeler, texts: list[str], rate: float, seconds: float
) -> dict[str, float]:
    """Publish-to-durable-output latency (from the Kafka record timestamp, set at send time, to the end of the
    batch's writes) while texts are offered at `rate` per second for `seconds`."""
    from kafka import KafkaProducer

    topic = settings.pipeline.input_topics[0]
    samples: list[float] = []
    lock = threading.Lock()
    warm = threading.Event()

    def on_batch(batch: Batch, labeled: Labeled) -> None:
        now = time.time()
        with lock:
            for m in batch.messages:
                if m.id == "warm-up":
                    warm.set()
                elif m.meta.timestamp_ms:
                    samples.append(now - m.meta.timestamp_ms / 1000)

    stop = threading.Event()
    thread = threading.Thread(
        target=run_pipeline,
        args=(settings, stop),
        kwargs={"labeler": labeler, "registry": CollectorRegistry(), "on_batch": on_batch},
        daemon=True,
    )
    thread.start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=1)
    producer.send(topic, value=json.dumps({"id": "warm-up", "source": "bench", "text": "warm up"}).encode())
    producer.flush()
    if not warm.wait(60):
        raise RuntimeError("the pipeline did not label the warm-up message within 60 s")
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = started + sent / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        value = json.dumps({"id": f"l{sent}", "source": "bench", "text": texts[sent % len(texts)]}).encode()
        producer.send(topic, value=value)
        sent += 1
    producer.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if len(samples) >= sent:
                break
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=60)
    producer.close()
    values = sorted(samples)
    if not values:
        raise RuntimeError("no latency samples")

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
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="texts in the corpus")
    ap.add_argument("--rounds", type=int, default=2, help="pipeline runs, each between two model-alone runs")
    ap.add_argument("--batch", type=int, default=64, help="pipeline.batch_max_messages and model batch size")
    ap.add_argument("--partitions", type=int, default=1, help="1 keeps arrival order = model-alone order")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the labeler's)")
    ap.add_argument("--model-dir", type=Path, default=None, help="model directory (default: shipped model)")
    ap.add_argument("--no-es", action="store_true", help="disable the Elasticsearch output")
    ap.add_argument("--latency-seconds", type=float, default=20.0, help="latency run length (0: skip)")
    ap.add_argument("--load", type=float, default=0.5, help="latency run's offered load x the pipeline rate")
    args = ap.parse_args()

    texts = corpus(args.n)
    labeler = load_labeler(args.model_dir, threads=args.threads)
    with local_servers() as (bootstrap, es_url):
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        publish(bootstrap, topic, texts, args.partitions)
        settings = Settings(
            kafka={"bootstrap_servers": bootstrap},
            elasticsearch={
                "enabled": not args.no_es,
                "url": es_url,
                "index_prefix": f"bench{topic[-8:]}",
                "number_of_replicas": 0,
            },
            metrics={"enabled": False},
            pipeline={
                "input_topics": [topic],
                "group_id": topic,
                "labeled_topic": f"{topic}-labeled",
                "dead_letter_topic": f"{topic}-dead",
                "batch_max_messages": args.batch,
                "batch_max_wait_ms": 50,
            },
        )
        # Alternate (model alone, pipeline, ..., model alone) so drift on a shared machine hits both alike.
        alone_runs = [model_alone(labeler, texts, args.batch)]
        pipe_runs = []
        for r in range(args.rounds):
            run_settings = settings.model_copy(
                update={"pipeline": settings.pipeline.model_copy(update={"group_id": f"{topic}-{r}"})}
            )
            pipe_runs.append(pipeline(run_settings, labeler, len(texts), timeout_s=600))
            alone_runs.append(model_alone(labeler, texts, args.batch))
        piped = sum(p[0] for p in pipe_runs) / len(pipe_runs)
        busy = sum(p[1] for p in pipe_runs) / len(pipe_runs)
        cpu_p = sum(p[2] for p in pipe_runs) / len(pipe_runs)
        lat: dict[str, float] | None = None
        if args.latency_seconds > 0:
            lat_topic = f"{topic}-lat"
            publish(bootstrap, lat_topic, [], args.partitions)
            lat_settings = settings.model_copy(
                update={
                    "pipeline": settings.pipeline.model_copy(
                        update={"input_topics": (lat_topic,), "group_id": lat_topic, "batch_max_wait_ms": 200}
                    )
                }
            )
            lat = latency(lat_settings, labeler, texts, args.load * piped, args.latency_seconds)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    alone = sum(a[0] for a in alone_runs) / len(alone_runs)
    cpu_a = sum(a[1] for a in alone_runs) / len(alone_runs)
    rows = [
        ("model alone, each run", " / ".join(f"{a[0]:.1f}" for a in alone_runs)),
        ("pipeline, each run", " / ".join(f"{p[0]:.1f}" for p in pipe_runs)),
        ("model alone (mean)", f"{alone:8.1f}"),
        ("pipeline: Kafka -> labeled topic + ES + metrics (mean)", f"{piped:8.1f}"),
        ("ratio pipeline / model alone", f"{piped / alone:8.2f}"),
        ("share of pipeline time the model was busy", f"{busy:8.2f}"),
        ("CPU s per 1,000 texts: model alone (mean)", f"{cpu_a:8.2f}"),
        ("CPU s per 1,000 texts: pipeline", f"{cpu_p:8.2f}"),
    ]
    print(
        f"\n{len(texts)} texts (tfns sentiment + topic 1:1), batch {args.batch}, "
        f"{args.partitions} partitions, "
        f"model {labeler.model_version}, ES {'off' if args.no_es else 'on'}"
    )
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'what':<{width}} | {'texts/s':>{vwidth}} |\n|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} |")
    if lat is not None:
        print(
            f"\nlatency, publish -> labeled topic + ES durable, at {lat['offered']:.1f} texts/s offered "
            f"({args.load:.2f} x pipeline rate, {lat['count']:.0f} of {lat['sent']:.0f} texts, "
            "batch wait 200 ms):\n"
            f"| p50 ms | p95 ms | p99 ms | max ms |\n|--------|--------|--------|--------|\n"
            f"| {lat['p50']:6.0f} | {lat['p95']:6.0f} | {lat['p99']:6.0f} | {lat['max']:6.0f} |"
        )
    print(f"\nmax RSS of this process (model + pipeline + bench): {rss_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
