"""Checkpoint -> model directory: ONNX export (dynamic batch and sequence axes, two logit outputs), ORT
transformer graph optimisation (fused attention), per-channel dynamic int8 for CPU (two fusions taken
apart again: inference.training.cpu_graph), fp16 for GPU, a parity gate (each shipped file against the
model it came from), dev metrics of the shipped variant, and the model card."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.calibration import expected_calibration_error, softmax
from inference.metrics import accuracy, macro_f1
from inference.preprocessing import check_steps, preprocess
from inference.training.data import sha256_file
from inference.training.output_dir import output_dir_problem, overlap_problem, staged_directory

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
FORMAT_VERSION = 1


def load_checkpoint(ckpt: Path) -> tuple[Any, dict[str, Any]]:
    """The torch MultiTaskClassifier (eager attention, eval mode) and the checkpoint's train_meta.json."""
    import torch

    from inference.training.model import MultiTaskClassifier, load_encoder

    meta = json.loads((ckpt / "train_meta.json").read_text(encoding="utf-8"))
    encoder = load_encoder(str(ckpt / "encoder"), attn_implementation="eager")
    model = MultiTaskClassifier(
        encoder, len(meta["topic_labels"]), len(meta["sentiment_labels"]), pooling=meta["pooling"]
    )
    model.load_heads_state(torch.load(ckpt / "heads.pt", weights_only=True))
    model.eval()
    return model, meta


def export_fp32(model: Any, path: Path) -> None:
    """TorchScript-based ONNX export with dynamic batch and sequence axes."""
    import torch

    ids = torch.ones((2, 12), dtype=torch.long)
    mask = torch.ones((2, 12), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        model,
        (ids, mask),
        str(path),
        dynamo=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["topic_logits", "sentiment_logits"],
        dynamic_axes={
            "input_ids": axes,
            "attention_mask": axes,
            "topic_logits": {0: "batch"},
            "sentiment_logits": {0: "batch"},
        },
        opset_version=17,
        do_constant_folding=True,
    )


def optimise(src: Path, dst: Path, num_heads: int, hidden_size: int) -> Any:
    """ORT transformer optimizer (attention / layer-norm / GELU fusion); returns the OnnxModel."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(dst))
    log.info("fused ops: %s", optimized.get_fused_operator_statistics())
    return optimized


def quantize_int8(src: Path, dst: Path, *, per_channel: bool, cpu_graph: bool = True) -> None:
    """Dynamic int8 quantization of the weights (activations quantized at run time), then the CPU graph's
    rewrite (inference.training.cpu_graph: two fusions that are slower on the CPU taken apart; `cpu_graph`
    False leaves them fused, for a benchmark's comparison)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from inference.training.cpu_graph import rewrite_file

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if cpu_graph:
        log.info("CPU graph: %s", rewrite_file(dst))


def to_fp16(src: Path, dst: Path, num_heads: int, hidden_size: int) -> None:
    """fp16 weights and activations for the GPU; inputs and outputs keep their types."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, use_gpu=True
    )
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(dst))


def ort_logits(path: Path, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> tuple[Any, Any]:
    """Run an ONNX file on CPU over token id lists (length-sorted batches); logits in input order. The
    session is made as the labeler makes its CPU sessions."""
    from inference.labeler import cpu_session, onnxruntime

    options = onnxruntime().SessionOptions()
    options.graph_optimization_level = onnxruntime().GraphOptimizationLevel.ORT_ENABLE_ALL
    session = cpu_session(path, options)
    order = np.argsort([len(x) for x in ids], kind="stable")
    outs: list[Any] = [None, None]
    for start in range(0, len(ids), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(ids[i]) for i in idx)
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        topic, sent = session.run(
            ["topic_logits", "sentiment_logits"], {"input_ids": input_ids, "attention_mask": mask}
        )
        for k, arr in enumerate((topic, sent)):
            if outs[k] is None:
                outs[k] = np.zeros((len(ids), arr.shape[1]), dtype=np.float32)
            outs[k][idx] = arr
    return outs[0], outs[1]


def compare(reference: tuple[Any, Any], other: tuple[Any, Any]) -> dict[str, float]:
    """Argmax agreement and max absolute probability difference per head (T = 1)."""
    out: dict[str, float] = {}
    for head, ref, oth in zip(("topic", "sentiment"), reference, other, strict=True):
        out[f"{head}_agreement"] = float((ref.argmax(axis=1) == oth.argmax(axis=1)).mean())
        out[f"{head}_max_prob_diff"] = float(np.abs(softmax(ref) - softmax(oth)).max())
    return out


@dataclass(frozen=True)
class ParityGate:
    """The least argmax agreement (both heads) each exported file must reach against its reference on the
    dev texts, or the export stops before it replaces the model directory. The shipped model reached 1.0,
    0.97-0.98 and 1.0 (model_card.json)."""

    onnx_fp32_vs_torch: float = 0.999
    int8_per_channel_vs_fp32: float = 0.95
    fp16_vs_fp32: float = 0.99


NO_QUANTIZATION_GATE = ParityGate(int8_per_channel_vs_fp32=0.0, fp16_vs_fp32=0.0)
"""`finsent export --no-quantization-gate`: the int8 and fp16 files pass at any label agreement (a model of a
few training steps has near-tied logits that their rounding flips); the exact fp32 export is still held to
its bar, and non-finite logits still stop the export."""


class ExportParityError(ValueError):
    """An exported file does not compute what the trained model computes."""


def parity_failures(parity: dict[str, Any], non_finite: list[str], gate: ParityGate) -> list[str]:
    """What keeps this export from shipping (empty when nothing does)."""
    failures = [f"{name}: NaN or infinite logits" for name in non_finite]
    for name, least in asdict(gate).items():
        if name not in parity:
            continue
        for head in ("topic", "sentiment"):
            got = float(parity[name][f"{head}_agreement"])
            if got < least:
                failures.append(f"{name}: {head} agreement {got:.4f} < {least}")
    return failures


def _dev_metrics(
    logits: tuple[Any, Any], dev: list[dict[str, Any]], temperatures: dict[str, float]
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for head, arr in zip(("topic", "sentiment"), logits, strict=True):
        idx = [i for i, row in enumerate(dev) if row[head] >= 0]
        y = [dev[i][head] for i in idx]
        pred = [int(p) for p in arr[idx].argmax(axis=1)]
        metrics[head] = {
            "n": len(y),
            "accuracy": accuracy(y, pred),
            "macro_f1": macro_f1(y, pred, arr.shape[1]),
            "ece_uncalibrated": expected_calibration_error(softmax(arr[idx]), y),
            "ece": expected_calibration_error(softmax(arr[idx], temperatures[head]), y),
        }
    return metrics


class _DropRootInfo(logging.Filter):
    """Drops records below WARNING logged on the root logger itself (onnxruntime's quantizer calls
    `logging.info` for each tensor: ~90 lines per export); records of named loggers that propagate to
    the root's handlers do not pass the root logger's own filters, so finsent's lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def quiet_root_info() -> Iterator[None]:
    """Within the block, the root logger's own INFO/DEBUG records (third-party `logging.info`) are
    dropped; the filter is removed afterwards, also on an error."""
    root = logging.getLogger()
    chatter = _DropRootInfo()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


class ExportInputError(ValueError):
    """A problem with what `export()` was given (checkpoint, output directory, comparisons), found before
    any work; its message is one line naming the option."""


def checkpoint_problems(ckpt: Path) -> list[str]:
    """Why the checkpoint `ckpt` cannot be exported: an unreadable train_meta.json, or a head that had no
    training or no dev rows (its weights untrained, or its temperature and metrics measured on nothing)."""
    try:
        meta = json.loads((ckpt / "train_meta.json").read_text(encoding="utf-8"))
        data = list(meta["data"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        return [f"--checkpoint {ckpt}: cannot read its train_meta.json ({e})"]
    return [
        f"--checkpoint {ckpt}: its {d.get('task')} head had {d.get('train_rows', 0)} training and "
        f"{d.get('dev_rows', 0)} dev rows (from {d.get('path')}): train again on data with labeled rows"
        for d in data
        if d.get("train_rows") == 0 or d.get("dev_rows") == 0  # older checkpoints may lack the counts
    ]


OWN_LOGGERS = ("inference", "finsent")
_NOT_APPLICABLE = (
    "Please consider to run pre-processing before quantization",
    "There is no gpu for onnxruntime to do optimization",
)


class _ThirdPartyChatter(logging.Filter):
    """Passes finsent's own records; drops other libraries' records below WARNING (onnxruntime's optimizer
    logs each fusion at INFO under `fusion_base`, `onnx_model`, `fusion_utils`...: ~40 lines per export)
    and two warnings that do not apply: the quantizer's advice to pre-process (the graph is optimised
    already) and the optimizer's "no gpu" for the fp16 file (made for a GPU, checked here on the CPU)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OWN_LOGGERS:
            return True
        if record.levelno < logging.WARNING:
            return False
        return not record.getMessage().startswith(_NOT_APPLICABLE)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Within the block, export's log is its own lines (docs/model.md: one per phase) and real warnings:
    the root logger's handlers drop other libraries' INFO lines (`_ThirdPartyChatter`), torch's tracer
    and ONNX exporter warnings about the traced graph are ignored, and transformers' weight-loading
    progress bar is off. Everything is put back afterwards, also on an error."""
    root = logging.getLogger()
    chatter = _ThirdPartyChatter()
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(chatter)
    import torch
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            tracer_warning = getattr(torch.jit, "TracerWarning", None)
            if tracer_warning is not None:
                warnings.filterwarnings("ignore", category=tracer_warning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(chatter)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def export(
    ckpt: Path,
    out: Path,
    *,
    work: Path | None = None,
    fp16: bool = True,
    comparisons: Mapping[str, Path] | None = None,
    gate: ParityGate | None = None,
) -> Path:
    """Build the model directory `out` from the checkpoint `ckpt`. fp32 files stay in `work`
    (default `<ckpt>/onnx`), never in the model directory. Every shipped file (int8 for CPU, fp16 for
    GPU, run here on the CPU provider) is checked against the model it came from: ExportParityError,
    with `out` untouched, when one falls short of `gate`. The new directory is built beside `out` and
    takes its place only when complete (`staged_directory`): a failed or interrupted export leaves the
    previous model directory as it was. onnxruntime's quantizer logs each tensor at INFO on the root
    logger: those lines are dropped while this runs (`quiet_root_info`)."""
    gate = gate or ParityGate()
    problems = checkpoint_problems(ckpt)
    if problems:
        raise ExportInputError("; ".join(problems))
    for problem in (overlap_problem(ckpt, out), output_dir_problem(out, "--out", "model")):
        if problem is not None:
            raise ExportInputError(problem)
    problems = comparison_problems(ckpt, comparisons or {})
    if problems:
        raise ComparisonError("cannot compare: " + "; ".join(problems))
    with quiet_root_info(), quiet_third_party():
        return _export(ckpt, out, work=work, fp16=fp16, comparisons=comparisons or {}, gate=gate)


def _export(
    ckpt: Path, out: Path, *, work: Path | None, fp16: bool, comparisons: Mapping[str, Path], gate: ParityGate
) -> Path:
    from tokenizers import Tokenizer

    started = time.monotonic()
    log.info("loading checkpoint %s", ckpt)
    model, meta = load_checkpoint(ckpt)
    work = work or ckpt / "onnx"
    work.mkdir(parents=True, exist_ok=True)
    config = model.encoder.config
    heads, hidden = int(config.num_attention_heads), int(config.hidden_size)

    fp32 = work / "model.fp32.onnx"
    fp32_opt = work / "model.fp32.opt.onnx"
    int8_default = work / "model.int8.default.onnx"
    log.info("exporting fp32 ONNX to %s", fp32)
    export_fp32(model, fp32)
    log.info("optimising the fp32 graph (fused attention) to %s", fp32_opt)
    optimized = optimise(fp32, fp32_opt, heads, hidden)
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    log.info("quantizing int8 (per channel, and per tensor for comparison)")
    quantize_int8(fp32_opt, work / INT8_FILE, per_channel=True)
    quantize_int8(fp32_opt, int8_default, per_channel=False)
    if fp16:
        log.info("converting to fp16 for the GPU")
        to_fp16(fp32, work / FP16_FILE, heads, hidden)

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=int(meta["max_length"]))
    pad_id = tok.token_to_id("[PAD]") or 0
    dev = [json.loads(line) for line in (ckpt / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line]
    steps = check_steps(meta.get("preprocessing", []))  # checkpoints from before the key: none
    ids = [e.ids for e in tok.encode_batch(preprocess([row["text"] for row in dev], steps))]

    from inference.training.train import predict_logits

    log.info("parity check on %d dev texts (torch, fp32, int8%s)", len(ids), ", fp16" if fp16 else "")
    torch_logits = predict_logits(model, ids, pad_id)
    fp32_logits = ort_logits(fp32_opt, ids, pad_id)
    int8_logits = ort_logits(work / INT8_FILE, ids, pad_id)
    int8_default_logits = ort_logits(int8_default, ids, pad_id)
    parity = {
        "texts": len(ids),
        "onnx_fp32_vs_torch": compare(torch_logits, fp32_logits),
        "int8_per_channel_vs_torch": compare(torch_logits, int8_logits),
        "int8_per_channel_vs_fp32": compare(fp32_logits, int8_logits),
        "int8_default_vs_fp32": compare(fp32_logits, int8_default_logits),
    }
    shipped = {"onnx_fp32": fp32_logits, "int8_per_channel": int8_logits}
    if fp16:
        shipped["fp16"] = ort_logits(work / FP16_FILE, ids, pad_id)
        parity["fp16_vs_fp32"] = compare(fp32_logits, shipped["fp16"])
    non_finite = [name for name, pair in shipped.items() if not all(np.isfinite(x).all() for x in pair)]
    failures = parity_failures(parity, non_finite, gate)
    if failures:
        raise ExportParityError(f"export of {ckpt} stopped, {out} left as it was: " + "; ".join(failures))
    log.info("parity gate passed: %s", _agreements(parity))
    temperatures = {h: float(meta["calibration"][h]["temperature"]) for h in ("topic", "sentiment")}
    dev_metrics = {
        "torch_fp32": _dev_metrics(torch_logits, dev, temperatures),
        "onnx_int8": _dev_metrics(int8_logits, dev, temperatures),
    }

    log.info("writing %s", out)
    with staged_directory(out) as stage:
        version = _write_model_dir(
            stage,
            ckpt=ckpt,
            work=work,
            fp16=fp16,
            meta=meta,
            steps=steps,
            temperatures=temperatures,
            card_parts={
                "architecture": f"encoder ({config.num_hidden_layers} layers, hidden {hidden}) + "
                f"{meta['pooling']} pooling + linear topic head + linear sentiment head",
                "dev_metrics": dev_metrics,
                "parity": parity,
                "parity_gate": asdict(gate),
                "fused_operators": fused,
            },
            comparisons=comparisons,
        )
    log.info("exported %s to %s in %.0f s", version, out, time.monotonic() - started)
    return out


def _agreements(parity: Mapping[str, Any]) -> str:
    """`name topic/sentiment` argmax agreements of the parity table, for the log."""
    return ", ".join(
        f"{name} {v['topic_agreement']:.4f}/{v['sentiment_agreement']:.4f}"
        for name, v in parity.items()
        if isinstance(v, dict)
    )


def _write_model_dir(
    out: Path,
    *,
    ckpt: Path,
    work: Path,
    fp16: bool,
    meta: dict[str, Any],
    steps: Any,
    temperatures: dict[str, float],
    card_parts: dict[str, Any],
    comparisons: Mapping[str, Path],
) -> str:
    """The model directory's files into the (empty) directory `out`; returns the model version."""
    shutil.copy(work / INT8_FILE, out / INT8_FILE)
    variants: dict[str, str] = {"cpu": INT8_FILE}
    if fp16:
        shutil.copy(work / FP16_FILE, out / FP16_FILE)
        variants["cuda"] = FP16_FILE
    shutil.copy(ckpt / "tokenizer.json", out / "tokenizer.json")
    int8_sha = sha256_file(out / INT8_FILE)
    version = f"finsent-minilm-l6-mt-{int8_sha[:10]}"
    finsent_config = {
        "format": FORMAT_VERSION,
        "model_version": version,
        "topic_labels": meta["topic_labels"],
        "sentiment_labels": meta["sentiment_labels"],
        "dataset_label_maps": meta["dataset_label_maps"],
        "sentiment_aliases": meta["sentiment_aliases"],
        "temperatures": temperatures,
        "max_length": int(meta["max_length"]),
        "preprocessing": list(steps),
        "tokenizer": "tokenizer.json",
        "special_tokens": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"},
        "inputs": ["input_ids", "attention_mask"],
        "outputs": ["topic_logits", "sentiment_logits"],
        "variants": variants,
    }
    (out / "finsent_config.json").write_text(json.dumps(finsent_config, indent=2) + "\n", encoding="utf-8")
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(out.iterdir())
        if p.is_file()
    }
    card: dict[str, Any] = {
        "model_version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "base_model": meta["base_model_name"],
        "architecture": card_parts["architecture"],
        "data": meta["data"],
        "training": meta["training"],
        "training_steps": meta["steps"],
        "best_step": meta["best_step"],
        "steps_per_epoch": meta["steps_per_epoch"],
        "train_seconds": meta["train_seconds"],
        "dev_history": meta["dev_history"],
        "dev_metrics": card_parts["dev_metrics"],
        "calibration": meta["calibration"],
        "parity": card_parts["parity"],
        "parity_gate": card_parts["parity_gate"],
        "fused_operators": card_parts["fused_operators"],
        "files": files,
        "comparisons": {},
    }
    card["comparisons"][THIS_MODEL] = comparison_entry(ckpt)
    for name, other in comparisons.items():  # e.g. an ablation on the same split
        card["comparisons"][name] = comparison_entry(other)
    extra = ckpt / "comparisons.json"
    if extra.is_file():
        card["comparisons"].update(json.loads(extra.read_text(encoding="utf-8")))
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(render_card(card), encoding="utf-8")
    return version


THIS_MODEL = "this model"  # the card's own row in the comparison table


class ComparisonError(ExportInputError):
    """`export(comparisons=...)` names runs that cannot share the card's table (see comparison_problems);
    raised before any work is done."""


def comparison_problems(ckpt: Path, comparisons: Mapping[str, Path]) -> list[str]:
    """Why the runs in `comparisons` cannot share the card's table ("same dev split"): a name the card
    uses itself, or a run on other data, seed, dev fraction or split method. Empty when they can."""
    meta = json.loads((ckpt / "train_meta.json").read_text(encoding="utf-8"))
    problems = [f"{THIS_MODEL!r} is the card's own row" for name in comparisons if name == THIS_MODEL]
    for name, other in comparisons.items():
        theirs = json.loads((other / "train_meta.json").read_text(encoding="utf-8"))
        for what, mine, their in (
            ("data", [d["sha256"] for d in meta["data"]], [d["sha256"] for d in theirs["data"]]),
            ("seed", meta["training"]["seed"], theirs["training"]["seed"]),
            ("dev fraction", meta["training"]["dev_fraction"], theirs["training"]["dev_fraction"]),
            (
                "split method",
                [d.get("near_copies_grouped", False) for d in meta["data"]],
                [d.get("near_copies_grouped", False) for d in theirs["data"]],
            ),
        ):
            if mine != their:
                problems.append(f"{name} ({other}) has another {what}, so another dev split")
    return problems


def comparison_entry(ckpt: Path) -> dict[str, Any]:
    """Settings, steps, time and torch dev metrics of a training run, for the card's comparison table."""
    meta = json.loads((ckpt / "train_meta.json").read_text(encoding="utf-8"))
    tr = meta["training"]
    return {
        "method": tr["method"],
        "pooling": tr["pooling"],
        "lr": meta.get("encoder_lr", tr["lr"] if tr["method"] == "full" else max(tr["lr"], 5e-4)),
        "steps": meta["steps"],
        "epochs": round(meta["steps"] / meta["steps_per_epoch"], 2),
        "train_seconds": meta["train_seconds"],
        "dev_metrics": meta["dev_metrics"],
        "settings": tr,
    }


def add_comparison(model_dir: Path, name: str, ckpt: Path) -> None:
    """Add another training run to a model directory's card (JSON and markdown); model files untouched."""
    card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    card.setdefault("comparisons", {})[name] = comparison_entry(ckpt)
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (model_dir / "MODEL_CARD.md").write_text(render_card(card), encoding="utf-8")


def _split_note(data: dict[str, Any]) -> str:
    """How the held-out rows were chosen. Models trained before near-copies were grouped say so: about
    15 % of the topic set's dev rows then had a near-copy in train (scripts/split_leakage.py), so their
    dev scores are optimistic."""
    if data.get("near_copies_grouped"):
        return ", near-copies kept on one side"
    return "; split by row: near-copies of train rows in dev, see scripts/split_leakage.py"


def _dropped_note(data: dict[str, Any]) -> str:
    """`, 3 skipped (empty text or label), 2 exact duplicates, 1 text with conflicting labels` (the counts
    training recorded; none for older checkpoints)."""
    parts = [
        f"{data[key]} {what}"
        for key, what in (
            ("skipped_rows", "skipped (empty text or label)"),
            ("duplicate_rows", "exact duplicates"),
            ("conflicting_texts", "texts with conflicting labels"),
        )
        if data.get(key)
    ]
    return "".join(f", {part}" for part in parts)


def render_card(card: dict[str, Any]) -> str:
    """The short human-readable model card."""
    dm = card["dev_metrics"]["onnx_int8"]
    cal = card["calibration"]
    par = card["parity"]
    tr = card["training"]
    steps = ", ".join(tr.get("preprocessing") or ["none"])
    lines = [
        f"# finsent model `{card['model_version']}`",
        "",
        f"Base: {card['base_model']}; {card['architecture']}. Created {card['created']}.",
        "",
        "## Data",
        *[
            f"- {d['task']}: `{d['path']}` ({d['rows']} rows{_dropped_note(d)}; {d['train_rows']} train / "
            f"{d['dev_rows']} dev, "
            f"stratified, seed {tr['seed']}{_split_note(d)}), sha256 `{d['sha256']}`"
            for d in card["data"]
        ],
        "",
        "## Training",
        f"- method {tr['method']}, pooling {tr['pooling']}, lr {tr['lr']} (heads {tr['head_lr']}), "
        f"batch {tr['batch_size']}, max_length {tr['max_length']}, up to {tr['epochs']} epochs, "
        f"class-weight power {tr['class_weight_power']}, early stopping patience {tr['patience']}",
        f"- {card['training_steps']} steps ({card['steps_per_epoch']} per epoch), best at step "
        f"{card['best_step']}, {card['train_seconds']:.0f} s on CPU",
        f"- text preprocessing (applied again when serving): {steps}",
        "",
        "## Dev split (shipped int8 model, calibrated)",
        "| head | n | accuracy | macro-F1 | ECE before T | ECE after T | temperature |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {h} | {dm[h]['n']} | {dm[h]['accuracy']:.4f} | {dm[h]['macro_f1']:.4f} | "
            f"{dm[h].get('ece_uncalibrated', cal[h]['ece_before']):.4f} | {dm[h]['ece']:.4f} | "
            f"{cal[h]['temperature']:.3f} |"
            for h in ("sentiment", "topic")
        ],
        "",
        "## Parity (dev texts, argmax agreement / max probability difference)",
        "| comparison | topic | sentiment |",
        "|---|---|---|",
        *[
            f"| {name} | {v['topic_agreement']:.4f} / {v['topic_max_prob_diff']:.4f} | "
            f"{v['sentiment_agreement']:.4f} / {v['sentiment_max_prob_diff']:.4f} |"
            for name, v in par.items()
            if isinstance(v, dict)
        ],
        "",
    ]
    if card["comparisons"]:
        lines += [
            "## Comparisons (same dev split, torch fp32, before quantization)",
            "| run | method | pooling | lr | steps (epochs) | seconds | topic acc / F1 | sentiment acc / F1|",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in card["comparisons"].items():
            m = c["dev_metrics"]
            lines.append(
                f"| {name} | {c['method']} | {c['pooling']} | {c['lr']} | {c['steps']} ({c['epochs']}) | "
                f"{c['train_seconds']:.0f} | {m['topic_accuracy']:.4f} / {m['topic_macro_f1']:.4f} | "
                f"{m['sentiment_accuracy']:.4f} / {m['sentiment_macro_f1']:.4f} |"
            )
        lines.append("")
    if card.get("cpu_graph"):
        g = card["cpu_graph"]
        lines += [
            "## CPU graph",
            f"`{INT8_FILE}` was rewritten on {g['date']} by `{g['command']}` (same weights; the fused "
            f"SkipLayerNormalization and BiasGelu ops taken apart, faster on the CPU). It was sha256 "
            f"`{g['sha256_before']}`; the dev metrics and parity above were measured on that file. "
            f"{g['note']}",
            "",
        ]
    lines += [
        "## Files",
        *[f"- `{n}` {f['bytes']} bytes, sha256 `{f['sha256']}`" for n, f in card["files"].items()],
        "",
    ]
    return "\n".join(lines)
