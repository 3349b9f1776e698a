"""Reading a model directory: `finsent_config.json` holds everything the serving code needs to know
(label lists, temperatures, max length, file names); nothing about the labels is hard-coded."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.preprocessing import check_steps

CONFIG_FILE = "finsent_config.json"
MIN_LENGTH = 8
MAX_POSITIONS = 512  # BERT-style encoders (MiniLM) have 512 position embeddings


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    return Path(__file__).resolve().parent / "models" / "default"


@dataclass(frozen=True)
class ModelConfig:
    """The parsed `finsent_config.json` of one model directory."""

    directory: Path
    model_version: str
    topic_labels: tuple[str, ...]
    sentiment_labels: tuple[str, ...]
    temperatures: Mapping[str, float]
    max_length: int
    tokenizer_file: str
    variants: Mapping[str, str]
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    dataset_label_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    sentiment_aliases: Mapping[str, str] = field(default_factory=dict)
    preprocessing: tuple[str, ...] = ()  # inference.preprocessing steps the model was trained with

    def variant_path(self, name: str) -> Path:
        """Path of the ONNX file for variant `cpu` or `cuda`."""
        if name not in self.variants:
            raise FileNotFoundError(
                f"{self.directory}: the model has no {name!r} variant ({dict(self.variants)})"
            )
        return self.directory / self.variants[name]


# Calibration temperatures a fit can produce. Logits divided by a tiny one overflow to inf and the
# probabilities become NaN (1e-320 passed a check of "above 0"); a huge one flattens every prediction.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


def _temperature(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):  # float(True) is 1.0
        raise ValueError(f"a temperature is a number, not {value!r}")
    return float(value)


def read_model_config(directory: Path) -> ModelConfig:
    """Parse and check `<directory>/finsent_config.json`."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a finsent model directory: {CONFIG_FILE} is missing")
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    try:
        config = ModelConfig(
            directory=directory,
            model_version=str(raw["model_version"]),
            topic_labels=_labels(raw["topic_labels"], "topic_labels"),
            sentiment_labels=_labels(raw["sentiment_labels"], "sentiment_labels"),
            temperatures={str(k): _temperature(v) for k, v in raw.get("temperatures", {}).items()},
            max_length=int(raw.get("max_length", 128)),
            tokenizer_file=str(raw.get("tokenizer", "tokenizer.json")),
            variants={str(k): str(v) for k, v in raw["variants"].items()},
            special_tokens={str(k): str(v) for k, v in raw.get("special_tokens", {}).items()},
            dataset_label_maps={
                str(task): {str(k): str(v) for k, v in m.items()}
                for task, m in raw.get("dataset_label_maps", {}).items()
            },
            sentiment_aliases={str(k): str(v) for k, v in raw.get("sentiment_aliases", {}).items()},
            preprocessing=_preprocessing(raw.get("preprocessing", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: a list for a map
        raise ValueError(f"{path}: malformed model config ({exc})") from exc
    if not config.model_version.strip():  # stamped on every prediction, labeled event and document
        raise ValueError(f"{path}: model_version is empty")
    if not config.topic_labels or not config.sentiment_labels:
        raise ValueError(f"{path}: empty label list")
    if not MIN_LENGTH <= config.max_length <= MAX_POSITIONS:
        raise ValueError(f"{path}: max_length must be {MIN_LENGTH}..{MAX_POSITIONS}, not {config.max_length}")
    unknown = sorted(set(config.temperatures) - {"topic", "sentiment"})
    if unknown:  # a misnamed head would leave its probabilities uncalibrated without a word
        raise ValueError(
            f"{path}: temperatures of unknown heads {unknown}; the heads are 'topic' and 'sentiment'"
        )
    for head, t in config.temperatures.items():
        if not (math.isfinite(t) and MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise ValueError(
                f"{path}: temperature of {head!r} must be a number from {MIN_TEMPERATURE} to "
                f"{MAX_TEMPERATURE}, not {t}"
            )
    for name in (config.tokenizer_file, *config.variants.values()):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: named in {CONFIG_FILE} but missing")
    return config


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (model cards, serving versions)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def serving_version(config: ModelConfig, variant: str) -> str:
    """The version stamped on predictions: `<model_version>+<variant>.<8 hex>`.

    `model_version` names the trained weights (the int8 file's hash at export), but what labels a text is
    also the variant served (fp16 on CUDA gives slightly different numbers; a rewritten graph too), the
    tokenizer and the config's labels, temperatures and max length. The suffix hashes all of them, so
    documents and labeled events from another variant or an edited calibration can be told apart."""
    digest = hashlib.sha256()
    for path in (config.variant_path(variant), config.directory / config.tokenizer_file):
        digest.update(sha256_file(path).encode())
    served = {
        "topic_labels": config.topic_labels,
        "sentiment_labels": config.sentiment_labels,
        "temperatures": dict(config.temperatures),
        "max_length": config.max_length,
        "special_tokens": dict(config.special_tokens),
        "sentiment_aliases": dict(config.sentiment_aliases),
    }
    if config.preprocessing:  # absent before the key existed: those models keep their versions
        served["preprocessing"] = list(config.preprocessing)
    digest.update(json.dumps(served, sort_keys=True).encode())
    return f"{config.model_version}+{variant}.{digest.hexdigest()[:8]}"


def _preprocessing(value: Any) -> tuple[str, ...]:
    """The `preprocessing` step names: a list of strings that `inference.preprocessing` knows."""
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError("preprocessing must be a list of step names")
    return check_steps(value)


def _labels(value: Any, name: str) -> tuple[str, ...]:
    """A label list: non-empty, unique strings (a plain string would be split into characters)."""
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has duplicates")
    return tuple(value)
