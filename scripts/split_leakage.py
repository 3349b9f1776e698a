"""How many dev rows of the shipped model's held-out split have a near-copy (the same post with another
link, case or spacing: `near_duplicate_key`) in its train rows, against the grouped split `finsent train`
makes now. The split is rebuilt from the model card (data files, seed, dev fraction) and the label maps in
the model's own config, as training built it.

    .venv/bin/python scripts/split_leakage.py [--model DIR]
"""

from __future__ import annotations

import argparse
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
