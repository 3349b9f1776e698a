"""Label names and the mapping of a dataset's own labels (ids, names, aliases) onto a model's labels.

Pure functions: the model's label lists always come from its `finsent_config.json`, never from code."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

SENTIMENT_ALIASES: Mapping[str, str] = {
    "bearish": "negative",
    "bullish": "positive",
    "neg": "negative",
    "pos": "positive",
    "neu": "neutral",
}


_FLOAT_INTEGER = re.compile(r"([0-9]+)\.0+")


def integer_form(raw: str) -> str:
    """`2.0` -> `2` (other labels as given, stripped): pandas writes an int column that had missing values
    as floats, and its ids must still match the dataset's `2`. `2.5` stays as it is."""
    key = raw.strip()
    match = _FLOAT_INTEGER.fullmatch(key)
    return match.group(1) if match else key


def sentiment_aliases(labels: Sequence[str], model_aliases: Mapping[str, str]) -> dict[str, str]:
    """The aliases a dataset's sentiment labels are read with: those `finsent train` reads data with that
    name one of `labels`, and the model's own (stored in its config; they win)."""
    return {**{k: v for k, v in SENTIMENT_ALIASES.items() if v in labels}, **model_aliases}


def normalise(name: str) -> str:
    """Case- and space-insensitive form of a label name, for matching."""
    return " ".join(name.strip().lower().split())


def parse_label_map(spec: str) -> dict[str, str]:
    """`0=negative,1=positive` or a path to a JSON object file -> {dataset label: model label}."""
    path = Path(spec)
    if spec.strip().endswith(".json") or (path.is_file() and "=" not in spec):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{spec}: cannot read the label map ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
            raise ValueError(f"{spec}: a label map file must hold a JSON object of label names")
        return {str(k).strip(): str(v).strip() for k, v in data.items()}
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"bad label map entry {part!r}: expected DATASET_LABEL=MODEL_LABEL")
        mapping[key.strip()] = value.strip()
    return mapping


def resolve_label(
    raw: str,
    labels: Sequence[str],
    *,
    id_map: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> int:
    """Index in `labels` of one dataset label `raw` (a name, an alias, or an id through `id_map`).

    `id_map` (dataset id or name -> model label name) wins; then exact/normalised names; then aliases;
    then, without a map, a bare integer is taken as the model's own index. An integer written as a float
    (`2.0`) counts as that integer unless the map or a label names it as written. Raises ValueError when
    nothing matches."""
    by_name = {normalise(name): i for i, name in enumerate(labels)}
    key = raw.strip()
    if key not in (id_map or {}) and normalise(key) not in by_name:
        key = integer_form(key)
    if id_map is not None and key in id_map:
        target = normalise(id_map[key])
        if target in by_name:
            return by_name[target]
        alias = (aliases or {}).get(target)
        if alias is not None and normalise(alias) in by_name:
            return by_name[normalise(alias)]
        raise ValueError(f"label map sends {key!r} to {id_map[key]!r}, which is not a model label")
    norm = normalise(key)
    if norm in by_name:
        return by_name[norm]
    alias = (aliases or {}).get(norm)
    if alias is not None and normalise(alias) in by_name:
        return by_name[normalise(alias)]
    # A bare index is the model's own only without a map: with one, a dataset id it leaves out would be
    # read in the model's order (TFNS "2" is neutral, the model's 2 positive).
    if id_map is None and key.isascii() and key.isdigit():  # not "٢" or "²", which isdigit() also takes
        index = int(key)
        if 0 <= index < len(labels):
            return index
    hint = "; the label map does not name it" if id_map is not None else ""
    raise ValueError(f"unknown label {raw!r}{hint}; model labels are {list(labels)}")


def dataset_ids(
    id_map: Mapping[str, str], labels: Sequence[str], *, aliases: Mapping[str, str] | None = None
) -> dict[int, str]:
    """{dataset id: model label name} for the integer ids of a dataset label map (entries keyed by a name
    are left out): a dataset's ids are not the model's label order (TFNS sentiment `2` is neutral, the
    model's index 2 positive). Raises ValueError for an id the map sends to no model label, and for one
    id written twice (`0` and `00`, `2` and `2.0`): which label it means would be a guess."""
    ids: dict[int, str] = {}
    for key in id_map:
        number = integer_form(key)
        if number.isascii() and number.isdigit():
            if int(number) in ids:
                raise ValueError(f"the label map names id {int(number)} twice (as {key!r} too)")
            ids[int(number)] = labels[resolve_label(key, labels, id_map=id_map, aliases=aliases)]
    return ids


def resolve_labels(
    raws: Sequence[str],
    labels: Sequence[str],
    *,
    id_map: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> list[int]:
    """`resolve_label` for a whole column."""
    return [resolve_label(r, labels, id_map=id_map, aliases=aliases) for r in raws]
