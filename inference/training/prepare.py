"""What `finsent train` is given, read and checked before any training (and before torch is imported):
the data files (labels mapped, with row counts; skipped, duplicate and conflicting rows counted; split
into train and dev) and `--base`. Every problem is one line naming the option, file and line."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.datasets import LabeledSet, skipped_note
from inference.labels import SENTIMENT_ALIASES, integer_form, normalise, resolve_label
from inference.training.data import (
    duplicate_counts,
    is_bare_integer,
    merge_spellings,
    near_duplicate_key,
    read_labeled_csv,
    stratified_split,
)

if TYPE_CHECKING:
    from inference.training.train import TrainConfig

log = logging.getLogger(__name__)

SENTIMENT_LABELS = ("negative", "neutral", "positive")
TFNS_SENTIMENT_IDS = {"0": "negative", "1": "positive", "2": "neutral"}
"""The bundled Twitter Financial News sentiment set's ids: the map for its data when none is given."""
TFNS_SENTIMENT_FOLDER = "tfns-sentiment"
"""A sentiment file in a folder of this name (the bundled ../shared/data/tfns-sentiment/) is taken for TFNS
data: its bare-integer labels get TFNS_SENTIMENT_IDS when no --sentiment-label-map is given. Anywhere
else bare integers need a map: the common 0/1/2 = negative/neutral/positive order would train with
neutral and positive swapped."""


class TrainInputError(ValueError):
    """A problem with what `finsent train` was given (data, --base, --out), found before the training;
    its message is one line naming the option and file."""


def topic_names_from_card(csv_path: Path) -> dict[str, str] | None:
    """`LABEL_<id>: name` pairs from a DATASET_CARD.md beside the CSV, as {id: name}."""
    card = csv_path.parent / "DATASET_CARD.md"
    if not card.is_file():
        return None
    pairs = re.findall(r'"LABEL_(\d+)"\s*:\s*"([^"]+)"', card.read_text(encoding="utf-8"))
    return {k: v for k, v in pairs} or None


def is_bundled_tfns(path: Path) -> bool:
    """Whether `path` is the bundled TFNS sentiment data (a file in a `tfns-sentiment` folder)."""
    return path.resolve().parent.name == TFNS_SENTIMENT_FOLDER


def base_problem(base: str) -> str | None:
    """Why `--base` cannot be trained from (no such directory, not a model directory), or None. Models
    are not downloaded: the base is a local directory or the bundled MiniLM (empty `base`)."""
    if not base:
        return None
    how = (
        "the base must be a local model directory (models are not downloaded here: fetch one on a machine "
        "with network, e.g. `huggingface-cli download NAME --local-dir DIR`, and copy DIR here) or left "
        "out for the bundled MiniLM"
    )
    path = Path(base)
    if not path.exists():
        return f"--base {base}: no such directory; {how}"
    if not path.is_dir():
        return f"--base {base}: not a directory; {how}"
    missing = [
        what
        for what, names in (
            ("config.json", ("config.json",)),
            ("tokenizer.json or vocab.txt", ("tokenizer.json", "vocab.txt")),
            (
                "model.safetensors or pytorch_model.bin",
                (
                    "model.safetensors",
                    "pytorch_model.bin",
                    "model.safetensors.index.json",
                    "pytorch_model.bin.index.json",
                ),
            ),
        )
        if not any((path / name).is_file() for name in names)
    ]
    if missing:
        return f"--base {base}: not a model directory (no {', no '.join(missing)}); {how}"
    return None


@dataclass
class HeadData:
    """One head's labeled rows, resolved to class indices and split."""

    data: LabeledSet
    y: list[int]
    train: list[int]
    dev: list[int]
    duplicate_rows: int
    conflicting_texts: int


@dataclass
class TrainingData:
    """Both heads' data, read and checked before torch is imported (`prepare_data`)."""

    sentiment: HeadData
    topic: HeadData
    sentiment_labels: list[str]
    topic_labels: list[str]
    sentiment_id_map: dict[str, str]
    topic_map: dict[str, str]


def _read(path: Path, option: str, limit: int | None) -> LabeledSet:
    try:
        data = read_labeled_csv(path, limit=limit)
    except OSError as e:
        raise TrainInputError(f"{option} {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise TrainInputError(f"{option} {e}") from None
    if not data.texts:
        raise TrainInputError(f"{option} {path}: no labeled rows ({skipped_note(data)})")
    return data


def _resolve(data: LabeledSet, option: str, labels: list[str], resolve: Any, what: str) -> list[int]:
    """Each row's class index; an unknown label raises TrainInputError naming the file, line and `what`
    (how labels are mapped, as the end of the sentence)."""
    ys: list[int] = []
    for i, raw in enumerate(data.labels):
        try:
            ys.append(resolve(raw))
        except ValueError:
            line = data.line_of(i)
            where = f"line {line}: " if line is not None else ""
            raise TrainInputError(
                f"{option} {data.path}: {where}label {raw!r} is none of {labels}, {what}"
            ) from None
    return ys


def _check_classes(option: str, data: LabeledSet, y: list[int], labels: list[str]) -> None:
    """A head needs two labels with rows; a label with none is warned about (it can never be predicted)."""
    counts = Counter(y)
    if len(counts) < 2:
        only = labels[next(iter(counts))]
        raise TrainInputError(
            f"{option} {data.path}: every labeled row is {only!r}; a head needs rows of at least two labels"
        )
    empty = [name for k, name in enumerate(labels) if not counts.get(k)]
    if empty:
        log.warning(
            "%s %s: no rows labeled %s: the model will never predict %s",
            option,
            data.path,
            ", ".join(repr(n) for n in empty),
            "it" if len(empty) == 1 else "them",
        )


def _mapping_note(data: LabeledSet, y: list[int], labels: list[str]) -> str:
    """`'0' -> negative (300), '1' -> positive (200)`: how the file's labels were read, with row counts."""
    raws: dict[int, list[str]] = {}
    for raw, k in zip(data.labels, y, strict=True):
        if raw not in raws.setdefault(k, []):
            raws[k].append(raw)
    counts = Counter(y)
    return ", ".join(
        f"{', '.join(repr(r) for r in sorted(raws[k]))} -> {labels[k]} ({counts[k]})" for k in sorted(raws)
    )


def _head(option: str, data: LabeledSet, y: list[int], labels: list[str], cfg: TrainConfig) -> HeadData:
    _check_classes(option, data, y, labels)
    # on the labels as resolved: `Earnings`/`earnings` or `0`/`negative` are one label, not a conflict
    exact, conflicting = duplicate_counts(data.texts, [str(k) for k in y])
    log.info("%s %s: %d labeled rows: %s", option, data.path, len(y), _mapping_note(data, y, labels))
    (log.warning if data.skipped or exact or conflicting else log.info)(
        "%s %s: skipped %d rows with an empty text or label; %d exact duplicate rows; %d texts with "
        "conflicting labels",
        option,
        data.path,
        data.skipped,
        exact,
        conflicting,
    )
    # near-copies (the same tweet with another link) stay on one side, or dev would score them as seen
    groups = [near_duplicate_key(t) for t in data.texts]
    train_idx, dev_idx = stratified_split(y, cfg.dev_fraction, cfg.seed, groups=groups)
    if not dev_idx:
        raise TrainInputError(
            f"{option} {data.path}: no rows left for the dev split (a label gives dev rows only when it "
            f"has two or more different texts; {len(y)} labeled rows): add rows"
        )
    return HeadData(data, y, train_idx, dev_idx, exact, conflicting)


def prepare_data(cfg: TrainConfig) -> TrainingData:
    """Read, map, check and split both data files (no torch: quick, before the model is loaded). Raises
    TrainInputError (one line naming the option, file and line) for a file without labeled rows, a label
    nothing maps, a head with one label, or no dev rows; logs how the labels were read, with row counts."""
    sent_set = _read(cfg.sentiment_csv, "--sentiment-data", cfg.limit)
    topic_set = _read(cfg.topic_csv, "--topic-data", None)
    if cfg.limit is not None:  # small samples keep every topic: take rows spread over the sorted file
        step = max(len(topic_set.texts) // cfg.limit, 1)
        keep = list(range(0, len(topic_set.texts), step))[: cfg.limit]
        topic_set = LabeledSet(
            topic_set.path,
            [topic_set.texts[i] for i in keep],
            [topic_set.labels[i] for i in keep],
            topic_set.skipped,
            [topic_set.lines[i] for i in keep],
        )

    sentiment_labels = list(SENTIMENT_LABELS)
    id_map = cfg.sentiment_id_map
    if id_map is None:
        numbers = sorted(
            {raw for raw in sent_set.labels if is_bare_integer(integer_form(raw))}, key=lambda r: (len(r), r)
        )
        if numbers and not is_bundled_tfns(cfg.sentiment_csv):
            raise TrainInputError(
                f"--sentiment-data {cfg.sentiment_csv}: its labels are numbers ({', '.join(numbers)}): say "
                "what each means with --sentiment-label-map, e.g. 0=negative,1=neutral,2=positive (the "
                f"bundled TFNS data's order, {_spec(TFNS_SENTIMENT_IDS)}, is applied only to files in a "
                f"`{TFNS_SENTIMENT_FOLDER}` folder)"
            )
        id_map = dict(TFNS_SENTIMENT_IDS) if numbers else {}
    sent_map = id_map
    known = {normalise(name) for name in sentiment_labels}
    wrong = [
        f"{k}={v}"
        for k, v in sent_map.items()
        if normalise(SENTIMENT_ALIASES.get(normalise(v), v)) not in known
    ]
    if wrong:
        raise TrainInputError(
            f"--sentiment-label-map: {', '.join(wrong)}: the labels are {', '.join(sentiment_labels)} "
            f"(or an alias: {', '.join(SENTIMENT_ALIASES)})"
        )
    sent_what = (
        f"and --sentiment-label-map ({_spec(sent_map)}) does not name it"
        if sent_map
        else "nor an alias of one; map the file's labels with --sentiment-label-map"
    )
    sent_y = _resolve(
        sent_set,
        "--sentiment-data",
        sentiment_labels,
        lambda raw: resolve_label(raw, sentiment_labels, id_map=sent_map, aliases=SENTIMENT_ALIASES),
        sent_what,
    )

    card = topic_names_from_card(cfg.topic_csv)
    if card is not None:
        topic_map = card
        topic_labels = [card[k] for k in sorted(card, key=lambda s: (len(s), s))]
        topic_what = f"and {cfg.topic_csv.parent / 'DATASET_CARD.md'} (the topic names) does not name it"
    else:
        # `2.0` and `2` are one label (resolve_label reads `2.0` as `2`), not two classes
        topic_map = merge_spellings([integer_form(raw) for raw in topic_set.labels])
        topic_labels = sorted(set(topic_map.values()), key=lambda s: (len(s), s))
        topic_what = "the file's own labels"  # every label is one of them: never shown
    topic_y = _resolve(
        topic_set,
        "--topic-data",
        topic_labels,
        lambda raw: resolve_label(raw, topic_labels, id_map=topic_map),
        topic_what,
    )
    return TrainingData(
        sentiment=_head("--sentiment-data", sent_set, sent_y, sentiment_labels, cfg),
        topic=_head("--topic-data", topic_set, topic_y, topic_labels, cfg),
        sentiment_labels=sentiment_labels,
        topic_labels=topic_labels,
        sentiment_id_map=sent_map,
        topic_map=topic_map,
    )


def _spec(mapping: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in mapping.items())
