"""Where the CPU model's time goes: ONNX Runtime's per-operator profile of the served slices, one table.

The texts of `bench/model.py` (both sets mixed 1:1, arrival order) are cut into windows of 256 and each
window into the labeler's slices (sorted by length, up to `model.slice_tokens` padded tokens), then run
one slice at a time on one thread, as each of the labeler's two streams runs them. Each row is an
operator type's share of the kernel time: as served, and with ONNX Runtime free to fuse the residual
adds + LayerNorms into SkipLayerNormalization again (inference/training/cpu_graph.py says why the served
graph keeps them apart); both columns come from one run. `--fused FILE` profiles another file in the
second column instead, e.g. the int8 file as quantized, with both fusions in it, that `python
bench/model.py` leaves in runs/bench/ (the same network, untrained without a checkpoint: the same speed).

    python bench/ops.py              # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model import mixed_texts  # noqa: E402

from inference.batching import length_sorted_batches, pad_batch  # noqa: E402
from inference.labeler import _session_options, cpu_session, load_labeler, onnxruntime  # noqa: E402


def profile(path: Path, feeds: Sequence[dict[str, Any]], *, fusions: bool, folder: Path) -> tuple[float, Any]:
    """(seconds of the whole run, kernel microseconds per operator type) for one session over `feeds`."""
    options = _session_options(1, "all")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / ("fused" if fusions else "served"))
    if fusions:
        session = onnxruntime().InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    else:
        session = cpu_session(path, options)
    started = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    seconds = time.perf_counter() - started
    events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return seconds, per_op


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("-n", type=int, default=2000, help="texts")
    parser.add_argument("--top", type=int, default=8, help="operator rows to print")
    parser.add_argument(
        "--fused", type=Path, default=None, help="ONNX file for the second column (default: the served one)"
    )
    args = parser.parse_args(argv)

    labeler = load_labeler(args.model, threads=1, streams=1)
    texts = mixed_texts(args.data, args.n)
    feeds = []
    for start in range(0, len(texts), 256):
        rows = labeler.encode(texts[start : start + 256]).rows
        for idx in length_sorted_batches([len(r) for r in rows], labeler.batch_size, labeler.slice_tokens):
            ids, mask = pad_batch([rows[i] for i in idx], labeler.tokenizer.token_to_id("[PAD]") or 0)
            feeds.append({"input_ids": ids, "attention_mask": mask})
    path = labeler.config.variant_path("cpu")
    print(
        f"{len(texts)} texts in {len(feeds)} slices of up to {labeler.slice_tokens} tokens, 1 thread",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        served = profile(path, feeds, fusions=False, folder=Path(folder))
        fused = profile(args.fused or path, feeds, fusions=True, folder=Path(folder))
    totals = [sum(p.values()) for _, p in (served, fused)]
    ops = sorted(set(served[1]) | set(fused[1]), key=lambda op: -max(served[1][op], fused[1][op]))
    print()
    second = f"{args.fused.name}, all fusions" if args.fused else "ORT free to fuse"
    print(f"| operator | served: share of kernel time | {second}: share of kernel time |")
    print("|---|---:|---:|")
    for op in ops[: args.top]:
        print(f"| {op} | {served[1][op] / totals[0]:.3f} | {fused[1][op] / totals[1]:.3f} |")
    rates = [len(texts) / seconds for seconds, _ in (served, fused)]
    print(f"| texts/s (profiling on) | {rates[0]:.0f} | {rates[1]:.0f} |")
    print(f"| kernel seconds | {totals[0] / 1e6:.2f} | {totals[1] / 1e6:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
