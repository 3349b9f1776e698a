"""Plain values that cross the inference boundary: what a labeler returns for one text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Prediction:
    """Topic and sentiment for one text, with calibrated probabilities over every label of each head."""

    topic: str
    topic_score: float
    sentiment: str
    sentiment_score: float
    topic_probs: Mapping[str, float]
    sentiment_probs: Mapping[str, float]
    unreadable: bool = False
    """True when the model knows no word of the text, even as `inference.labeler.reread_text` spells it
    again: it read only unknown tokens (emoji, a script its vocabulary lacks, a word too long for the
    tokenizer), punctuation, symbols or nothing at all. The labels are then the model's answer to an empty
    input, not a reading: the pipeline dead-letters such a text (`unreadable`). Labelers that cannot tell
    leave it False."""


class Labeler(Protocol):
    """Anything that labels texts in batches (the ONNX Runtime labeler, or a fake in unit tests)."""

    @property
    def model_version(self) -> str: ...

    @property
    def topic_labels(self) -> Sequence[str]: ...

    @property
    def sentiment_labels(self) -> Sequence[str]: ...

    def label(self, texts: Sequence[str]) -> list[Prediction]: ...


@runtime_checkable
class StagedLabeler(Labeler, Protocol):
    """A labeler whose tokenizing runs apart from its model: a pipeline tokenizes batch N+1 while the model
    runs batch N. `label_encoded(encode(texts))` equals `label(texts)`."""

    def encode(self, texts: Sequence[str]) -> Any: ...

    def label_encoded(self, encoded: Any) -> list[Prediction]: ...
