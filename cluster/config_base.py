"""What every part of the cluster config shares: the strict model base and the error a bad config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending field."""


class Strict(BaseModel):
    """A config section: unknown fields are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
