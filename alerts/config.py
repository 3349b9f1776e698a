"""Settings of the alerting stage (section `alerts`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class AlertSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
