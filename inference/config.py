"""Settings of the model used for labeling (section `model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dir: Path | None = Field(None, description="Model directory; empty uses the model shipped with finsent.")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="cuda fails fast if no GPU is usable.")
    threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads per labeler; empty: one per physical core."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Sub-batch size: a batch is sorted by token length and run in such slices; "
        "empty: 8 on CPU, 512 on GPU.",
    )
