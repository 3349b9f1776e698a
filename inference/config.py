"""Settings of the model used for labeling (section `model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: Path | None = Field(None, description="Model directory; empty uses the model shipped with finsent.")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="cuda fails fast if no GPU is usable.")
    threads: int | None = Field(
        None,
        ge=1,
        description="ONNX Runtime threads per labeler, shared by its streams; empty: one per CPU available "
        "(the CPUs the process is pinned to, capped by a container's CPU limit).",
    )
    streams: int | None = Field(
        None,
        ge=1,
        description="Slices of a batch run at once, each on threads / streams ONNX Runtime threads; "
        "empty: 2 on CPU (1 with a single thread), 1 on GPU.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Most texts in one slice: a batch is sorted by token length and run in slices; "
        "empty: 64 on CPU, 512 on GPU.",
    )
    slice_tokens: int | None = Field(
        None,
        ge=0,
        description="Token budget of a slice (texts x its longest text, padding included), so short texts "
        "run many to a slice and long ones few; a batch's slices are then evened out to a multiple of the "
        "streams, so none idles on an odd slice; 0: none (slices of batch_size texts); "
        "empty: 256 on CPU, none on GPU.",
    )
    max_chunks: int = Field(
        32,
        ge=1,
        description="A text longer than the model's max_length is labeled in chunks of whole sentences "
        "and the chunks' predictions are averaged; at most this many chunks (the first that hold a word: "
        "32 x 126 tokens, about 15,000 characters of news), so that one huge text cannot hold a batch up.",
    )

    @field_validator("dir", mode="before")
    @classmethod
    def _empty_dir_is_the_shipped_model(cls, value: object) -> object:
        """`FINSENT_MODEL__DIR=` (empty) means the shipped model, as documented, not Path('.')."""
        return None if isinstance(value, str) and not value.strip() else value
