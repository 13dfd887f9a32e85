"""The datasets `data.dataset` names, in one table: each one's classes, default image size and
official archive. A new kind of dataset is an entry here (docs/development.md, "Adding a
dataset"); the params schema, the download and preprocess stages read it.

No numpy, torch or I/O: every stage's params loader imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Official:
    """Where `dvc repro` fetches a dataset when data.source is null, and how a copy is checked."""

    url: str
    filename: str
    md5: str | None  # published checksum, verified when known
    # Where no checksum is published: files per (split, class) under folder `root` of the
    # archive, so that a truncated or other archive under the same name is refused.
    layout: dict[tuple[str, str], int] = field(default_factory=dict)
    root: str = ""


@dataclass(frozen=True)
class Dataset:
    image_size: int  # preprocess.image_size when that is null
    classes: tuple[str, ...] | None  # None: the source's class folders name them
    official: Official | None  # None: data.source is required; the source has no test split


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(
        32,
        CIFAR10_CLASSES,
        Official(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "hymenoptera": Dataset(
        64,
        ("ants", "bees"),
        Official(
            "https://download.pytorch.org/tutorial/hymenoptera_data.zip",
            "hymenoptera_data.zip",
            None,
            # train/ants includes the placeholder imageNotFound.gif.
            {
                ("train", "ants"): 124,
                ("train", "bees"): 121,
                ("val", "ants"): 70,
                ("val", "bees"): 83,
            },
            "hymenoptera_data",
        ),
    ),
    "imagefolder": Dataset(64, None, None),  # your own photos, from data.source
}
