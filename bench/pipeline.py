"""Pipeline throughput against the model alone, on the same texts, in the same run.

Starts a local Kafka + Elasticsearch API server (noida-db), publishes a fixed corpus (texts of
../shared/data, the sentiment and topic sets interleaved 1:1 in a fixed-seed order), then measures
  1. the model alone: `labeler.label()` on the corpus in batches of the pipeline's batch size;
  2. the pipeline: Kafka in -> labeled topic + Elasticsearch + metrics out (`finsent run`'s code);
  3. the model alone again (the machine is shared: the mean of 1 and 3 is the reference);
and prints texts/s for each and the ratio pipeline / model alone.

    python bench/pipeline.py [--n 4000] [--batch 64] [--partitions 2]"""

from __future__ import annotations

import argparse
import csv
import json
import random
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


def model_alone(labeler: Labeler, texts: list[str], batch: int) -> float:
    labeler.label(texts[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        labeler.label(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started)


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


def pipeline(settings: Settings, labeler: Labeler, n: int, timeout_s: float) -> tuple[float, int]:
    """Texts/s between the end of the first batch and the end of the last (excludes group join)."""
    done = threading.Event()
    lock = threading.Lock()
    state = {"count": 0, "first_end": 0.0, "first_size": 0, "last_end": 0.0}

    def on_batch(batch: Batch, labeled: Labeled) -> None:
        now = time.perf_counter()
        with lock:
            if state["count"] == 0:
                state["first_end"], state["first_size"] = now, len(batch.records)
            state["count"] += len(batch.records)
            state["last_end"] = now
            if state["count"] >= n:
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
    return (n - state["first_size"]) / seconds, int(state["count"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="texts in the corpus")
    ap.add_argument("--batch", type=int, default=64, help="pipeline.batch_max_messages and model batch size")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the labeler's)")
    ap.add_argument("--no-es", action="store_true", help="disable the Elasticsearch output")
    args = ap.parse_args()

    texts = corpus(args.n)
    labeler = load_labeler(threads=args.threads)
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
        alone_1 = model_alone(labeler, texts, args.batch)
        piped, _count = pipeline(settings, labeler, len(texts), timeout_s=600)
        alone_2 = model_alone(labeler, texts, args.batch)
    alone = (alone_1 + alone_2) / 2
    rows = [
        ("model alone (before)", f"{alone_1:8.1f}"),
        ("model alone (after)", f"{alone_2:8.1f}"),
        ("model alone (mean)", f"{alone:8.1f}"),
        ("pipeline: Kafka -> labeled topic + ES + metrics", f"{piped:8.1f}"),
        ("ratio pipeline / model alone", f"{piped / alone:8.2f}"),
    ]
    print(
        f"\n{len(texts)} texts (tfns sentiment + topic 1:1), batch {args.batch}, "
        f"{args.partitions} partitions, "
        f"model {labeler.model_version}, ES {'off' if args.no_es else 'on'}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"| {'what':<{width}} | texts/s  |\n|{'-' * (width + 2)}|----------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
