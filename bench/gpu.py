"""GPU check and batch-size sweep for the fp16 model on the CUDA execution provider (run by bench/gpu.sh).

Compares GPU (fp16) predictions with the CPU model (int8) on the same texts, then sweeps batch sizes and
prints a table of texts/s (model only over pre-tokenized rows, and end-to-end labeler incl. tokenization).
Without a usable GPU it says why, checks that device="auto" falls back to the CPU, and exits 0."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model import mixed_texts  # noqa: E402

from inference.labeler import GpuUnavailableError, load_labeler  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--check-n", type=int, default=2000, help="texts compared with the CPU model")
    parser.add_argument("--batches", default="64,256,512,1024,2048,4096")
    parser.add_argument(
        "--slice-tokens",
        default="16384,32768,65536,131072",
        help="token budgets tried with slices of up to 4096 texts (model.slice_tokens; GPU default: none)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu runs the same check and sweeps on the CPU: a smoke test of this script without a GPU",
    )
    args = parser.parse_args()
    texts = mixed_texts(args.data, args.n) if args.data.is_dir() else ["Stocks rally as Fed pauses"] * args.n
    texts = (texts * (args.n // max(len(texts), 1) + 1))[: args.n]
    print(f"{len(texts)} texts, {os.cpu_count()} CPUs", flush=True)
    try:
        gpu = load_labeler(args.model, device=args.device, batch_size=256)
    except GpuUnavailableError as exc:
        print(f"NO USABLE GPU: {exc}")
        fallback = load_labeler(args.model, device="auto", threads=2)
        preds = fallback.label(texts[:64])
        print(f"CPU fallback ok: device={fallback.device} ({fallback.variant}), labeled {len(preds)} texts")
        return 0
    print(f"{args.device} session providers: {gpu.session.get_providers()}")
    cpu = load_labeler(args.model, device="cpu")
    check = texts[: args.check_n]
    t_cpu, s_cpu = cpu.probabilities(check)
    t_gpu, s_gpu = gpu.probabilities(check)
    topic_agree = (t_cpu.argmax(1) == t_gpu.argmax(1)).mean()
    sent_agree = (s_cpu.argmax(1) == s_gpu.argmax(1)).mean()
    print(
        f"{args.device} ({gpu.variant}) vs CPU int8 on {len(check)} texts: topic agreement "
        f"{topic_agree:.4f}, sentiment agreement {sent_agree:.4f}, max prob diff topic "
        f"{np.abs(t_cpu - t_gpu).max():.4f} sentiment {np.abs(s_cpu - s_gpu).max():.4f}",
        flush=True,
    )
    rows = gpu.encode(texts).rows
    tokens = sum(len(r) for r in rows)
    print("\n| batch | model-only texts/s | tokens/s | labeler e2e texts/s |")
    print("|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        gpu.batch_size = batch
        gpu.run_rows(rows[: batch * 2])  # warm-up (CUDA kernels, memory arena)
        started = time.perf_counter()
        gpu.run_rows(rows)
        model_s = time.perf_counter() - started
        started = time.perf_counter()
        gpu.probabilities(texts)
        e2e_s = time.perf_counter() - started
        print(
            f"| {batch} | {len(rows) / model_s:.0f} | {tokens / model_s:.0f} | {len(texts) / e2e_s:.0f} |",
            flush=True,
        )
    print("\n| slice_tokens (slices of up to 4096 texts) | model-only texts/s | tokens/s |")
    print("|---:|---:|---:|")
    gpu.batch_size = 4096
    for budget in (int(b) for b in args.slice_tokens.split(",") if b.strip()):
        gpu.slice_tokens = budget or None
        gpu.run_rows(rows[:4096])
        started = time.perf_counter()
        gpu.run_rows(rows)
        model_s = time.perf_counter() - started
        print(f"| {budget} | {len(rows) / model_s:.0f} | {tokens / model_s:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
