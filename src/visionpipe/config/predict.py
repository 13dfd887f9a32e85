"""The predict section: what the predict stage classifies besides the per-class samples."""

from __future__ import annotations

from pydantic import Field

from visionpipe.config import Section


class PredictConfig(Section):
    # Extra images to classify besides the per-class samples: files, folders or globs.
    inputs: list[str] = Field(default_factory=list)
    topk: int = Field(default=3, ge=1)
