"""Which int8 to serve on the CPU: speed, agreement with fp32 and batch independence of the variants, one
table, one run.

The shipped int8 model quantizes its activations per call (dynamic quantization), so a text's label can
change with the texts that share its slice. This bench sets it beside the variants that would not:
fp32, static int8 (activation ranges fixed by calibration on training texts) and, when the `onnx_ir`
package is installed, weight-only 8-bit MatMulNBits (activations quantized per row). Each row gives the
served path's texts/s (`label()` on arrival-order windows of 256, the labeler's defaults; mean of
alternating rounds), the share of labels equal to the fp32 model's, and how many texts get another label
when labeled alone rather than together with the others (and the largest probability difference, of
either head). Every variant runs with the shipped CPU graph (inference/training/cpu_graph.py).

The fp32 reference is the training checkpoint's `onnx/model.fp32.opt.onnx` when there is one, else the
shipped fp16 file widened to fp32 (the trained weights rounded to fp16: its labels are those of the
fp16 model, which agree with fp32 on the dev split; see the model card).

    python bench/quantization.py        # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model import mixed_texts  # noqa: E402

from inference.batching import pad_batch  # noqa: E402
from inference.labeler import OnnxLabeler  # noqa: E402
from inference.model_dir import CONFIG_FILE, default_model_dir, read_model_config  # noqa: E402
from inference.training.cpu_graph import rewrite_file  # noqa: E402
from inference.types import Prediction  # noqa: E402


def widen_fp16(src: Path, dst: Path) -> None:
    """An fp16 ONNX file as fp32: weights, constants, casts and declared types."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for i, tensor in enumerate(list(graph.initializer)):
        if tensor.data_type == TensorProto.FLOAT16:
            wide = numpy_helper.to_array(tensor).astype(np.float32)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(wide, tensor.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                wide = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(wide, attr.t.name))
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(dst))


def calibration_texts(data: Path, n: int) -> list[str]:
    """The last rows of each training set (the bench texts are spread over the files from the start)."""
    texts: list[str] = []
    for name in ("tfns-sentiment", "tfns-topic"):
        with (data / name / "train.csv").open(newline="", encoding="utf-8") as handle:
            texts += [row["text"] for row in csv.DictReader(handle)][-n // 2 :]
    return texts


def quantize_static_int8(src: Path, dst: Path, labeler: OnnxLabeler, texts: Sequence[str]) -> None:
    """Static int8 (QDQ, per-channel weights, uint8 activations, MinMax ranges) of the MatMuls."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rows = labeler.encode(texts).rows
    pad = labeler.tokenizer.token_to_id("[PAD]") or 0
    feeds = []
    for start in range(0, len(rows), 32):
        ids, mask = pad_batch(rows[start : start + 32], pad)
        feeds.append({"input_ids": ids, "attention_mask": mask})

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.feeds, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )


def quantize_nbits(src: Path, dst: Path) -> bool:
    """Weight-only 8-bit MatMulNBits, blocks of 128, int8 activations per row (accuracy level 4); False
    when onnxruntime's quantizer cannot be imported (it needs the `onnx_ir` package)."""
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # onnxruntime < 1.22 has no 8-bit support there; later ones need onnx_ir
        return False
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return True


def write_variants(folder: Path, variants: dict[str, str]) -> None:
    """Name the variant files in the model directory's config (each becomes a labeler's `variant`)."""
    written = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    written["variants"] = variants
    (folder / CONFIG_FILE).write_text(json.dumps(written), encoding="utf-8")


def label_windows(labeler: OnnxLabeler, texts: Sequence[str]) -> list[Prediction]:
    return [p for start in range(0, len(texts), 256) for p in labeler.label(texts[start : start + 256])]


def same(a: Sequence[Prediction], b: Sequence[Prediction]) -> tuple[float, float]:
    topic = float(np.mean([x.topic == y.topic for x, y in zip(a, b, strict=True)]))
    return topic, float(np.mean([x.sentiment == y.sentiment for x, y in zip(a, b, strict=True)]))


def alone_vs_together(labeler: OnnxLabeler, texts: Sequence[str]) -> tuple[float, float]:
    """(share of texts whose topic or sentiment changes when labeled alone, largest probability change)."""
    together = labeler.label(texts)
    alone = [labeler.label([text])[0] for text in texts]
    changed = np.mean(
        [(a.topic, a.sentiment) != (b.topic, b.sentiment) for a, b in zip(together, alone, strict=True)]
    )
    largest = max(
        abs(x[k] - y[k])
        for a, b in zip(together, alone, strict=True)
        for x, y in ((a.topic_probs, b.topic_probs), (a.sentiment_probs, b.sentiment_probs))
        for k in x
    )
    return float(changed), float(largest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("-n", type=int, default=2000, help="texts")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the speed rows")
    parser.add_argument("--alone", type=int, default=300, help="texts labeled alone and together")
    parser.add_argument("--calibration", type=int, default=600, help="texts for the static ranges")
    args = parser.parse_args(argv)

    shipped = default_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for f in shipped.iterdir():
            if f.suffix != ".onnx":
                shutil.copy(f, folder / f.name)
        shutil.copy(shipped / "model.int8.onnx", folder / "model.int8.onnx")
        trained_fp32 = args.checkpoint / "onnx" / "model.fp32.opt.onnx"
        if trained_fp32.is_file():
            shutil.copy(trained_fp32, folder / "model.fp32.onnx")
            reference = "fp32 (the checkpoint's)"
        else:
            widen_fp16(shipped / "model.fp16.onnx", folder / "model.fp32.onnx")
            reference = "fp32 (the fp16 file widened)"
        files = {"int8 dynamic (shipped)": "model.int8.onnx", reference: "model.fp32.onnx"}
        write_variants(folder, {"cpu": "model.int8.onnx"})
        base = OnnxLabeler(read_model_config(folder), threads=2)
        print("static int8: calibrating", flush=True)
        quantize_static_int8(
            folder / "model.fp32.onnx",
            folder / "model.static.onnx",
            base,
            calibration_texts(args.data, args.calibration),
        )
        files["int8 static (QDQ, MinMax ranges)"] = "model.static.onnx"
        if quantize_nbits(folder / "model.fp32.onnx", folder / "model.nbits8.onnx"):
            files["weight-only 8-bit MatMulNBits"] = "model.nbits8.onnx"
        else:
            print(
                "weight-only 8-bit MatMulNBits left out: its quantizer could not be imported (it needs "
                "the onnx_ir package)",
                flush=True,
            )
        for name, file in files.items():  # every variant with the shipped CPU graph, as the shipped one
            if name != "int8 dynamic (shipped)":
                rewrite_file(folder / file)
        write_variants(folder, files)
        config = read_model_config(folder)
        labelers = {name: OnnxLabeler(config, variant=name, threads=2) for name in files}

        texts = mixed_texts(args.data, args.n)
        spent = dict.fromkeys(labelers, 0.0)
        preds: dict[str, list[Prediction]] = {}
        for labeler in labelers.values():
            labeler.label(texts[:256])  # warm-up
        for _ in range(args.rounds):
            for name, labeler in labelers.items():
                started = time.perf_counter()
                preds[name] = label_windows(labeler, texts)
                spent[name] += time.perf_counter() - started
        print()
        print(f"{len(texts)} texts, served path (windows of 256), mean of {args.rounds} alternating rounds")
        print(
            "| variant | texts/s | same labels as fp32: topic / sentiment | labeled alone: texts with "
            "another label / largest probability change |"
        )
        print("|---|---:|---|---|")
        for name, labeler in labelers.items():
            topic, sentiment = same(preds[name], preds[reference])
            changed, largest = alone_vs_together(labeler, texts[: args.alone])
            rate = len(texts) * args.rounds / spent[name]
            print(f"| {name} | {rate:.0f} | {topic:.3f} / {sentiment:.3f} | {changed:.3f} / {largest:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
