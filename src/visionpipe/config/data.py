"""The data and preprocess sections: which images, and how they become arrays."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from visionpipe.config import Section, Seed
from visionpipe.datasets import DATASETS


class DataConfig(Section):
    dataset: Literal[tuple(DATASETS)] = "cifar10"  # type: ignore[valid-type]
    # null: the dataset's official archive (via DATA_MIRROR first, when set). Otherwise a local path
    # or URL of that archive, or of an image-folder export (directory, .zip, .tar.gz, .tgz, .tar).
    # A number is a folder's name (`-S data.source=2024`: YAML and Hydra read it as an int).
    source: str | None = Field(default=None, coerce_numbers_to_str=True)
    # Optional hex SHA-256 of `source`; checked like the official MD5 is for the official archive.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    # Share of a flat image folder (<class>/<image>, no split folders) held out for testing;
    # null: 0.2. Only for such folders: datasets with their own test split refuse a number.
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of train held out for val
    seed: Seed = 0  # seeds the train/val split (and a flat folder's test split)
    on_bad_image: Literal["skip", "fail"] = "skip"  # undecodable images: skip and report, or stop

    @model_validator(mode="after")
    def _imagefolder_needs_source(self) -> DataConfig:
        if DATASETS[self.dataset].official is None and not self.source:
            raise ValueError(
                f"data.dataset {self.dataset!r} has no official archive: set data.source to a"
                " directory, .zip, .tar.gz or URL of class folders (<class>/<image>, or"
                " train/<class>/<image> plus test/ or val/); see docs/datasets.md,"
                " 'Your own photos'"
            )
        if DATASETS[self.dataset].official is not None and self.test_fraction is not None:
            raise ValueError(
                f"data.test_fraction = {self.test_fraction} applies to flat image folders only;"
                f" {self.dataset} has its own test split. Set data.test_fraction back to null"
            )
        return self


class PreprocessConfig(Section):
    # Side of the square images in pixels (shorter side resized, then center crop);
    # null: the dataset's default (32 for cifar10, 64 otherwise).
    image_size: int | None = Field(default=None, ge=8, le=1024)


class DataParams(Section):
    """What the download and preprocess stages read."""

    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()

    def image_size(self) -> int:
        return image_size(self.data, self.preprocess)


def image_size(data: DataConfig, preprocess: PreprocessConfig) -> int:
    if preprocess.image_size is not None:
        return preprocess.image_size
    return DATASETS[data.dataset].image_size
