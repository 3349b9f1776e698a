"""How many dev rows have a near-copy (the same post with another link, case or spacing:
`near_duplicate_key`) in the train rows, for the split by row (models up to finsent-minilm-l6-mt-80df9a9d68)
and the grouped split `finsent train` makes now. Both splits are rebuilt from a model card (data files,
seed, dev fraction) and the label maps in the model's own config, as training built them.

`--unseen-out DIR` also writes `unseen_<task>.csv`: the rows in both dev splits with no near-copy in
either train split, which neither a by-row model nor a grouped one has seen, so that `finsent evaluate`
can compare the two fairly on them.

    .venv/bin/python scripts/split_leakage.py [--model DIR] [--unseen-out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.labels import SENTIMENT_ALIASES, resolve_labels
from inference.model_dir import default_model_dir, read_model_config
from inference.training.data import (
    leaked_dev_rows,
    near_duplicate_key,
    read_labeled_csv,
    stratified_split,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--unseen-out", type=Path, default=None, help="write unseen_<task>.csv here")
    args = parser.parse_args()
    config = read_model_config(args.model)
    card = json.loads((args.model / "model_card.json").read_text(encoding="utf-8"))
    training = card["training"]
    print(f"model {config.model_version}: seed {training['seed']}, dev fraction {training['dev_fraction']}")
    print(f"{'task':<10} {'dev rows':>8} {'leaked, by row':>15} {'leaked, grouped':>16}")
    for entry in card["data"]:
        task = entry["task"]
        path = Path(entry["path"])
        if not path.is_file():
            print(f"{task:<10} {path} is missing")
            continue
        data = read_labeled_csv(path)
        labels = config.topic_labels if task == "topic" else config.sentiment_labels
        aliases = SENTIMENT_ALIASES if task == "sentiment" else None
        y = resolve_labels(data.labels, labels, id_map=config.dataset_label_maps.get(task), aliases=aliases)
        by_row = stratified_split(y, training["dev_fraction"], training["seed"])
        groups = [near_duplicate_key(t) for t in data.texts]
        grouped = stratified_split(y, training["dev_fraction"], training["seed"], groups=groups)
        leaked_row, leaked_group = leaked_dev_rows(data.texts, *by_row), leaked_dev_rows(data.texts, *grouped)
        print(
            f"{task:<10} {len(by_row[1]):>8} {leaked_row:>6} ({leaked_row / len(by_row[1]):5.1%})"
            f" {leaked_group:>7} ({leaked_group / max(len(grouped[1]), 1):5.1%})"
        )
        if args.unseen_out is not None:
            rows = unseen_rows(groups, by_row, grouped)
            args.unseen_out.mkdir(parents=True, exist_ok=True)
            out = args.unseen_out / f"unseen_{task}.csv"
            with out.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows((data.texts[i], data.labels[i]) for i in rows)
            print(f"{'':<10} {len(rows)} rows unseen by either split's training: {out}")
    return 0


def unseen_rows(
    groups: list[str], by_row: tuple[list[int], list[int]], grouped: tuple[list[int], list[int]]
) -> list[int]:
    """Rows in both dev sides whose near-copy key is in neither train side, in file order."""
    trained = {groups[i] for i in by_row[0]} | {groups[i] for i in grouped[0]}
    both_dev = set(by_row[1]) & set(grouped[1])
    return [i for i in sorted(both_dev) if groups[i] not in trained]


if __name__ == "__main__":
    raise SystemExit(main())
