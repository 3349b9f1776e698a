"""Model-alone throughput of finsent's labeler and of the variants behind it, in one run, one table.

Texts: the two labeled sets of ../shared/data mixed 1:1 in arrival order (file order, alternating), not
sorted as a whole. Each row reports texts/s, real (unpadded) tokens/s, and the ratio to torch eager one
text at a time. Rows marked `e2e` include tokenization and softmax (the labeler's `probabilities()`); the
others time ONNX Runtime / torch over pre-tokenized rows, to isolate the variant.

    python bench/model.py            # about 2-3 minutes on 2 cores
    python bench/model.py --quick    # well under a minute

fp32 ONNX files come from the checkpoint's onnx/ folder (`finsent export` leaves them there) or are
exported into runs/bench/ (gitignored); without a checkpoint the base encoder with untrained heads is used,
which has the same speed (label agreement with fp32 is then left out: it needs the trained weights).
Needs the `train` extra for the torch rows and the fp32 export."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.batching import length_sorted_batches, pad_batch  # noqa: E402
from inference.labeler import (  # noqa: E402
    OnnxLabeler,
    _session_options,
    cpu_session,
    load_labeler,
    onnxruntime,
)
from inference.types import Prediction  # noqa: E402


def mixed_texts(data: Path, n: int) -> list[str]:
    """Rows of the sentiment and topic sets alternated 1:1 in file order (arrival order)."""
    sets = []
    for name in ("tfns-sentiment", "tfns-topic"):
        with (data / name / "train.csv").open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle)]
        # the topic file is sorted by label: take rows spread over it, keeping their order
        step = max(len(texts) // (n // 2 + 1), 1)
        sets.append(texts[::step][: n // 2])
    return [t for pair in zip(*sets, strict=False) for t in pair]


def session(path: Path, threads: int, level: str = "all", *, fusions: bool = False) -> Any:
    """A CPU session as the labeler makes them (its options, without the fusions in CPU_UNFUSED), or with
    every one of ONNX Runtime's fusions (`fusions=True`)."""
    options = _session_options(threads, level)
    if fusions:
        return onnxruntime().InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return cpu_session(path, options)


def run_ort(sess: Any, rows: Sequence[Sequence[int]], batch: int, mode: str, pad: int) -> np.ndarray:
    """Sentiment+topic logits (concatenated) for all rows; mode: sorted (the whole corpus by length: an upper
    bound the pipeline cannot reach) | dynamic (arrival order) | fixed64."""
    out = np.zeros((len(rows), 23), dtype=np.float32)
    if mode == "sorted":
        groups = length_sorted_batches([len(r) for r in rows], batch)
    else:
        groups = [np.arange(i, min(i + batch, len(rows))) for i in range(0, len(rows), batch)]
    for idx in groups:
        ids, mask = pad_batch(
            [rows[i][:64] if mode == "fixed64" else rows[i] for i in idx],
            pad,
            64 if mode == "fixed64" else None,
        )
        t, s = sess.run(["topic_logits", "sentiment_logits"], {"input_ids": ids, "attention_mask": mask})
        out[idx] = np.concatenate([t, s], axis=1)
    return out


def label_windows(labeler: OnnxLabeler, chunks: Sequence[Sequence[str]]) -> list[Prediction]:
    """Label each arrival-order window with one call, as the pipeline does with its micro-batches."""
    return [p for chunk in chunks for p in labeler.label(chunk)]


def prediction_agreement(labeler: OnnxLabeler, preds: Sequence[Prediction], fp32: np.ndarray | None) -> str:
    """`agreement()` for labels from `label()`, when the fp32 logits are there and one row per text."""
    if fp32 is None or len(fp32) != len(preds):
        return ""
    topic = np.array([labeler.topic_labels.index(p.topic) for p in preds])
    sent = np.array([labeler.sentiment_labels.index(p.sentiment) for p in preds])
    topics = len(labeler.topic_labels)
    return label_agreement(fp32[:, :topics].argmax(1), fp32[:, topics:].argmax(1), topic, sent)


# Before 2026-12-01 the CPU model kept the transformer optimizer's SkipLayerNormalization and BiasGelu;
# inference/training/cpu_graph.py says why they are taken apart now.
FUSED_INT8 = "int8 per-channel, SkipLayerNorm + BiasGelu fused (shipped before 2026-12-01)"
# The shipped file with ONNX Runtime free to fuse: SkipLayerNormalization comes back (BiasGelu does not:
# its bias add is already in the quantized MatMul by then).
FUSIONS_ON = "ORT free to fuse SkipLayerNorm again"


def same_labels(preds: Sequence[Prediction], reference: Sequence[Prediction]) -> str:
    """Shares of equal topic and sentiment labels of two label() runs over the same texts."""
    topic = np.mean([a.topic == b.topic for a, b in zip(preds, reference, strict=True)])
    sent = np.mean([a.sentiment == b.sentiment for a, b in zip(preds, reference, strict=True)])
    return f"same labels as the default: topic {topic:.3f}, sentiment {sent:.3f}"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def agreement(a: np.ndarray | None, b: np.ndarray, topics: int) -> str:
    """Label agreement of two (topic + sentiment) logit matrices, the first being fp32's (none: "")."""
    if a is None:
        return ""
    t = topics
    return label_agreement(a[:, :t].argmax(1), a[:, t:].argmax(1), b[:, :t].argmax(1), b[:, t:].argmax(1))


def label_agreement(
    topic: np.ndarray, sent: np.ndarray, other_topic: np.ndarray, other_sent: np.ndarray
) -> str:
    """Shares of equal topic and sentiment labels (label indices), as the table prints them."""
    topic_share = float((topic == other_topic).mean())
    sent_share = float((sent == other_sent).mean())
    return f"agree vs fp32: topic {topic_share:.3f}, sentiment {sent_share:.3f}"


def trained(checkpoint: Path) -> bool:
    return (checkpoint / "train_meta.json").is_file()


def torch_model(checkpoint: Path, topics: int, sentiments: int) -> Any:
    """The checkpoint's network, or without one the shipped network's shape untrained (same speed)."""
    from inference.training.export import load_checkpoint
    from inference.training.model import MultiTaskClassifier, load_encoder
    from inference.training.train import default_base

    if trained(checkpoint):
        return load_checkpoint(checkpoint)[0]
    model = MultiTaskClassifier(load_encoder(default_base(), attn_implementation="eager"), topics, sentiments)
    model.eval()
    return model


def fp32_files(checkpoint: Path, model: Any, work: Path) -> tuple[Path, Path]:
    """(plain fp32 export, ORT-transformer-optimised fp32), exported if missing."""
    from inference.training.export import export_fp32, optimise

    for folder in (checkpoint / "onnx", work):
        if (folder / "model.fp32.onnx").is_file() and (folder / "model.fp32.opt.onnx").is_file():
            return folder / "model.fp32.onnx", folder / "model.fp32.opt.onnx"
    work.mkdir(parents=True, exist_ok=True)
    export_fp32(model, work / "model.fp32.onnx")
    config = model.encoder.config
    optimise(
        work / "model.fp32.onnx", work / "model.fp32.opt.onnx", config.num_attention_heads, config.hidden_size
    )
    return work / "model.fp32.onnx", work / "model.fp32.opt.onnx"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("-n", type=int, default=2000, help="texts per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer texts and variants (< 1 minute)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the slicing rows")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch rows and fp32 export")
    args = parser.parse_args(argv)
    n = 400 if args.quick else args.n
    threads = args.threads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    texts = mixed_texts(args.data, n)
    labeler: OnnxLabeler = load_labeler(args.model, threads=threads)
    rows = labeler.encode(texts).rows
    pad = labeler.tokenizer.token_to_id("[PAD]") or 0
    tokens = sum(len(r) for r in rows)
    print(
        f"{len(texts)} texts (sentiment and topic sets 1:1, arrival order), {tokens / len(texts):.1f} "
        f"tokens/text on average, threads {threads}, CPUs {os.cpu_count()}",
        flush=True,
    )

    results: list[tuple[str, float, str]] = []

    def add(name: str, seconds: float, count: int, note: str = "") -> None:
        results.append((name, count / seconds, note))
        real_tokens = tokens * count / len(texts)
        print(
            f"  {name:<52} {count / seconds:8.1f} texts/s {real_tokens / seconds:9.0f} tok/s  {note}",
            flush=True,
        )

    torch_rate = None
    sessions: dict[str, Any] = {}
    files: dict[str, Path] = {}
    fp32_logits = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(threads)
        topics, sentiments = len(labeler.topic_labels), len(labeler.sentiment_labels)
        model = torch_model(args.checkpoint, topics, sentiments)
        if not trained(args.checkpoint):
            print(
                f"no training checkpoint at {args.checkpoint}: the torch and fp32 rows run the shipped "
                "network untrained (the same speed); label agreement, which needs the trained weights, "
                "is left out",
                flush=True,
            )
        subset = rows[: 64 if args.quick else 160]

        def torch_single() -> None:
            with torch.inference_mode():
                for r in subset:
                    ids, mask = pad_batch([r], pad)
                    model(torch.from_numpy(ids), torch.from_numpy(mask))

        def torch_batched() -> None:
            with torch.inference_mode():
                for idx in length_sorted_batches([len(r) for r in rows], 32):
                    ids, mask = pad_batch([rows[i] for i in idx], pad)
                    model(torch.from_numpy(ids), torch.from_numpy(mask))

        seconds, _ = timed(torch_single)
        torch_rate = len(subset) / seconds
        add("torch eager fp32, one text at a time", seconds, len(subset))
        if not args.quick:
            seconds, _ = timed(torch_batched)
            add("torch eager fp32, sorted batches of 32", seconds, len(rows))
        plain, optimised = fp32_files(args.checkpoint, model, args.work)
        sessions["fp32"] = session(plain, threads)
        sessions["fp32 fused"] = session(optimised, threads)
        from inference.training.export import quantize_int8

        args.work.mkdir(parents=True, exist_ok=True)
        for name, per_channel, cpu_graph in (
            ("int8 default", False, True),
            ("int8 per-channel", True, True),
            (FUSED_INT8, True, False),
        ):
            # ".cpu": quantize_int8() rewrites the graph for the CPU since 2026-12-01; older files lack it
            suffix = ".cpu" if cpu_graph else ".fused"
            path = args.work / f"{optimised.stem}.{name.split(',')[0].replace(' ', '_')}{suffix}.onnx"
            if not path.is_file() or path.stat().st_mtime < optimised.stat().st_mtime:
                quantize_int8(optimised, path, per_channel=per_channel, cpu_graph=cpu_graph)
            sessions[name] = session(path, threads, fusions=not cpu_graph)
            files[name] = path
        seconds, logits = timed(lambda: run_ort(sessions["fp32"], rows, 32, "sorted", pad))
        add("ORT fp32 (plain export), sorted 32", seconds, len(rows))
        fp32_logits = logits if trained(args.checkpoint) else None
        seconds, fused_logits = timed(lambda: run_ort(sessions["fp32 fused"], rows, 32, "sorted", pad))
        note = agreement(fp32_logits, fused_logits, topics)
        add("ORT fp32 fused attention, sorted 32", seconds, len(rows), note)
        for name in ("int8 default", "int8 per-channel", FUSED_INT8):
            seconds, logits = timed(partial(run_ort, sessions[name], rows, 32, "sorted", pad))
            add(f"ORT {name}, sorted 32", seconds, len(rows), agreement(fp32_logits, logits, topics))

    shipped = labeler.config.variant_path("cpu")
    levels = ("all",) if args.quick else ("disable", "basic", "extended", "all")
    for level in levels:
        sess = session(shipped, threads, level)
        seconds, _ = timed(partial(run_ort, sess, rows, 32, "sorted", pad))
        add(f"shipped int8, ORT opt level {level}, sorted 32", seconds, len(rows))
    main_sess = session(shipped, threads)
    for mode in ("fixed64", "dynamic"):
        seconds, _ = timed(partial(run_ort, main_sess, rows, 32, mode, pad))
        label = "fixed 64-token padding" if mode == "fixed64" else "arrival-order batches, own padding"
        add(f"shipped int8, {label}, 32", seconds, len(rows))
    for batch in (8, 16, 32, 64, 128) if not args.quick else (16, 64):
        seconds, _ = timed(partial(run_ort, main_sess, rows, batch, "sorted", pad))
        add(f"shipped int8, sorted batches of {batch}", seconds, len(rows))
    if threads != 1:
        one = session(shipped, 1)
        seconds, _ = timed(lambda: run_ort(one, rows, 32, "sorted", pad))
        add("shipped int8, sorted 32, 1 thread", seconds, len(rows))
    seconds, _ = timed(lambda: labeler.probabilities(texts))
    add("labeler e2e, whole corpus in one call (sorted: upper bound)", seconds, len(texts))
    for window in (64, 128, 256):
        # The served path: the pipeline hands the labeler arrival-order micro-batches, so only the texts
        # inside one window are sorted by length; this is the number the target is about.
        chunks = [texts[i : i + window] for i in range(0, len(texts), window)]
        seconds, preds = timed(partial(label_windows, labeler, chunks))
        note = "; ".join(filter(None, ("the served path", prediction_agreement(labeler, preds, fp32_logits))))
        add(f"labeler.label() e2e, arrival-order windows of {window}", seconds, len(texts), note)
    # How a window of 256 is run: the default against one stream on all the threads, fixed slice sizes and
    # other token budgets. These differ by a few percent, less than the machine drifts in a minute, so they
    # run in alternating rounds and each row is the mean.
    windows256 = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    default = f"default: {labeler.streams} streams, slices of {labeler.slice_tokens} tokens"
    ways: list[tuple[str, OnnxLabeler]] = [
        (default, labeler),
        (
            f"1 stream, slices of {labeler.slice_tokens} tokens",
            load_labeler(args.model, threads=threads, streams=1),
        ),
        (
            "1 stream, slices of 512 tokens",
            load_labeler(args.model, threads=threads, streams=1, slice_tokens=512),
        ),
        ("fixed slices of 8", load_labeler(args.model, threads=threads, batch_size=8, slice_tokens=0)),
    ]
    # The same file and slicing with ONNX Runtime free to fuse the residual adds + LayerNorms again.
    fused = load_labeler(args.model, threads=threads)
    fused.session = session(shipped, max(1, threads // fused.streams), fusions=True)
    ways.append((FUSIONS_ON, fused))
    if FUSED_INT8 in files:  # the served slicing on the file as quantized, fused (same network)
        before = load_labeler(args.model, threads=threads)
        before.session = session(files[FUSED_INT8], max(1, threads // before.streams), fusions=True)
        ways.append((FUSED_INT8, before))
    if not args.quick:
        ways += [
            ("fixed slices of 32", load_labeler(args.model, threads=threads, batch_size=32, slice_tokens=0))
        ]
        ways += [
            (f"slices of {b} tokens", load_labeler(args.model, threads=threads, slice_tokens=b))
            for b in (128, 512, 1024)
        ]
    spent = dict.fromkeys((name for name, _ in ways), 0.0)
    default_preds: list[Prediction] = []  # the first way's, each round
    agree: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, way in ways:
            seconds, preds = timed(partial(label_windows, way, windows256))
            spent[name] += seconds
            agree[name] = prediction_agreement(way, preds, fp32_logits)
            if name == default:
                default_preds = preds
            elif name == FUSIONS_ON or (name == FUSED_INT8 and trained(args.checkpoint)):
                agree[name] = "; ".join(filter(None, (agree[name], same_labels(preds, default_preds))))
    for name, _ in ways:
        note = "; ".join(filter(None, (f"mean of {args.rounds} alternating rounds", agree[name])))
        add(f"labeler.label() e2e, windows of 256, {name}", spent[name] / args.rounds, len(texts), note)

    # Small windows, as the pipeline's batches are at half load (24-60 texts): slices evened out for the
    # streams (the default, `balanced_batches`) against plain greedy cuts, alternating rounds.
    greedy = load_labeler(args.model, threads=threads)
    greedy.slice_parts = 1
    for window in (24, 48):
        small = [texts[i : i + window] for i in range(0, len(texts), window)]
        pair = {"slices evened out for the streams (default)": labeler, "greedy slices": greedy}
        small_spent = dict.fromkeys(pair, 0.0)
        for _ in range(args.rounds):
            for name, way in pair.items():
                small_spent[name] += timed(partial(label_windows, way, small))[0]
        for name in pair:
            note = f"mean of {args.rounds} alternating rounds"
            add(
                f"labeler.label() e2e, windows of {window}, {name}",
                small_spent[name] / args.rounds,
                len(texts),
                note,
            )

    print()
    print("| variant | texts/s | real tokens/s | x torch one-at-a-time |")
    print("|---|---:|---:|---:|")
    for name, rate, note in results:
        ratio = f"{rate / torch_rate:.1f}" if torch_rate else "n/a"
        tail = f" ({note})" if note else ""
        print(f"| {name}{tail} | {rate:.0f} | {rate * tokens / len(texts):.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
