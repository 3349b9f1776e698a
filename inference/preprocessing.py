"""Text clean-up a model was trained with, named in its `finsent_config.json` (`preprocessing`) and applied
the same way when serving: training and serving must see the same text, or the model meets inputs it
never learned. A model without the key gets the text as it is (models from before the key existed)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ingest.decode import read_entities

__all__ = ["DEFAULT_STEPS", "STEPS", "URL_PLACEHOLDER", "check_steps", "preprocess", "preprocessor"]

URL_PLACEHOLDER = "link"  # one word piece in the MiniLM (BERT uncased) vocabulary
_URL = re.compile(r"(?:https?://|www\.)\S*", re.IGNORECASE)


def url_placeholder(text: str) -> str:
    """Every link becomes one word: a t.co code is 10-15 word pieces of noise that the model can learn
    by heart (the same post recurs with another code), while "this post has a link" is a real signal."""
    return _URL.sub(URL_PLACEHOLDER, text)


def html_unescape(text: str) -> str:
    """`&amp;` as `&`: scraped tweets carry HTML entities, a news feed the plain character; one spelling.
    (`ingest.decode.read_entities`: html.unescape, safe on hostile references; the blank check uses it.)"""
    return read_entities(text)


STEPS: dict[str, Callable[[str], str]] = {
    "html_unescape": html_unescape,
    "url_placeholder": url_placeholder,
}
DEFAULT_STEPS: tuple[str, ...] = ("html_unescape", "url_placeholder")


def check_steps(names: Sequence[str]) -> tuple[str, ...]:
    """The step names as a tuple; ValueError naming an unknown or repeated one (a model trained with a step
    this finsent does not know must not be served without it)."""
    unknown = [name for name in names if name not in STEPS]
    if unknown:
        raise ValueError(f"unknown preprocessing step(s) {unknown}; known: {sorted(STEPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"preprocessing steps repeat: {list(names)}")
    return tuple(names)


def preprocessor(names: Sequence[str]) -> Callable[[str], str]:
    """One function applying the named steps in order."""
    steps = [STEPS[name] for name in check_steps(names)]

    def apply(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return apply


def preprocess(texts: Sequence[str], names: Sequence[str]) -> list[str]:
    """The texts after the named steps (a new list; the input is not changed)."""
    if not names:
        return list(texts)
    apply = preprocessor(names)
    return [apply(text) for text in texts]
