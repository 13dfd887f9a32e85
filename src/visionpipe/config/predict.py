"""The predict section: what the predict stage classifies besides the per-class samples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from visionpipe import paths
from visionpipe.config import Section


class PredictConfig(Section):
    # Extra images to classify besides the per-class samples: files, folders or globs.
    inputs: list[str] = Field(default_factory=list)
    topk: int = Field(default=3, ge=1)
    # A file of predict.inputs that is there but is no usable image (truncated, not an image, a
    # broken link in a folder): skip and report it, or fail the stage. A path that is not there
    # is a mistake in the params and always fails.
    on_bad_image: Literal["skip", "fail"] = "skip"

    @field_validator("inputs")
    @classmethod
    def _expand(cls, value: list[str]) -> list[str]:
        # An empty entry (`['$PHOTOS']` with PHOTOS unset) would be ".", the whole project.
        if any(not spec.strip() for spec in value):
            raise ValueError("an empty entry (an unset variable?): give a file, folder or glob")
        # `~/photos` and `$HOME/photos` mean what they mean in the shell.
        return [str(paths.user_path(spec, "predict.inputs")) for spec in value]
