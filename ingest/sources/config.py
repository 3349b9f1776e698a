"""Settings of the source producers (section `sources`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class SourcesSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    config_file: Path | None = Field(None, description="YAML file listing the sources.")
