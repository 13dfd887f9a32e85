"""The predict section: what the predict stage classifies besides the per-class samples."""

from __future__ import annotations

from pydantic import Field, field_validator

from visionpipe import paths
from visionpipe.config import Section


class PredictConfig(Section):
    # Extra images to classify besides the per-class samples: files, folders or globs.
    inputs: list[str] = Field(default_factory=list)
    topk: int = Field(default=3, ge=1)

    @field_validator("inputs")
    @classmethod
    def _expand(cls, value: list[str]) -> list[str]:
        # `~/photos` and `$HOME/photos` mean what they mean in the shell.
        return [str(paths.user_path(spec, "predict.inputs")) for spec in value]
