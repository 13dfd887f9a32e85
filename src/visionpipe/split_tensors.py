"""The preprocessed splits: reading them from data/processed, and where they live while training.

A split's images stay in their memory-mapped file unless they are worth copying: training puts
the train split on the GPU when it fits there, else in host memory when it fits the memory
budget, else gathers each batch straight from the file (the OS keeps what it can in its page
cache). Every path gives the same bytes, so the same weights.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from visionpipe import paths, split_files
from visionpipe.fsutil import size_text
from visionpipe.memory import MEMORY_BUDGET_ENV, free_memory, memory_budget

log = logging.getLogger(__name__)


def load_split(split: str, in_memory: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 NCHW, labels int64) of a preprocessed split, from data/processed/<split>.npy.
    An image folder's come class by class (in file order): a sample of a split is taken spread
    over it (`export.spread`), not its first N.

    `in_memory`: True reads the images into memory; False maps them read-only (nothing is read
    until touched, and a write into them crashes the process: torch has no read-only tensor);
    None, for code of one's own (a notebook's), reads them where they fit the memory budget, so
    the tensor one gets can be written to, and maps a split too large for that."""
    index_path = paths.require(paths.split_file(split), "preprocess")
    index = split_files.read_index(index_path)
    chosen = in_memory is not None
    if in_memory is None:
        size, budget = index_path.with_name(index["images"]).stat().st_size, memory_budget()
        in_memory = size <= budget
        if not in_memory:
            _say_mapped(split, size, budget)
    try:
        images = split_files.open_images(index_path, index, in_memory)
    except MemoryError:
        if chosen:
            raise
        _say_mapped(split, size, budget)  # a limit the budget could not see
        images = split_files.open_images(index_path, index)
    with warnings.catch_warnings():
        # A mapped split is read-only. Nothing in the pipeline writes to split images: batches,
        # augmentation and model inputs are all new tensors gathered or converted from them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(images), torch.tensor(index["labels"], dtype=torch.int64)


def _say_mapped(split: str, size: int, budget: int) -> None:
    log.warning(
        "the %s split (%s) does not fit the memory budget (%s): mapped from its file,"
        " read-only; a write into its images crashes Python: change a copy (.clone()), or ask"
        " for load_split(%r, in_memory=True)",
        split,
        size_text(size),
        size_text(budget),
        split,
    )


def read_meta() -> dict[str, Any]:
    """data/processed/meta.json: classes, image size, the train split's mean/std, counts."""
    return json.loads(paths.require(paths.PROCESSED_DIR / "meta.json", "preprocess").read_text())


@dataclass
class TrainingData:
    """What a training run reads: both splits it uses and the dataset's metadata."""

    train_x: torch.Tensor  # uint8 NCHW: on the device, in host memory or memory-mapped
    train_y: torch.Tensor
    val_x: torch.Tensor  # on the host (memory or mapped): validation copies its batches over
    val_y: torch.Tensor
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


def load_training_data(device: torch.device, budget: int | None = None) -> TrainingData:
    """The train and validation splits (the test split when there is no validation split).

    `budget`: bytes of images that may be read into host memory (default `memory_budget()`);
    a split over what is left of it stays memory-mapped.
    """
    budget = memory_budget() if budget is None else budget
    train_x, train_y = load_split("train", in_memory=False)
    val_split = "val"
    val_x, val_y = load_split(val_split, in_memory=False)
    if len(val_y) == 0:
        log.warning(
            "no validation split (data.val_fraction is 0, or too few images to draw one): scoring"
            " each epoch on the test split, as the tutorial does"
        )
        val_split = "test"
        val_x, val_y = load_split(val_split, in_memory=False)
    # Data lives on the device as uint8: 4x smaller than float, converted per batch.
    where = resident_device(train_x, device)
    if where.type != "cpu":
        train_x = train_x.to(where)  # straight from the mapped file: no host copy
    else:
        train_x, budget = _in_memory_if_it_fits(train_x, "train", budget)
    val_x, _ = _in_memory_if_it_fits(val_x, val_split, budget)
    return TrainingData(train_x, train_y.to(where), val_x, val_y, read_meta())


def _in_memory_if_it_fits(
    images: torch.Tensor, split: str, budget: int
) -> tuple[torch.Tensor, int]:
    """The memory-mapped `images` of `split` read into host memory when they fit `budget`
    bytes; returns them and the budget left."""
    size = images.numel() * images.element_size()
    if size <= budget:
        try:
            return load_split(split, in_memory=True)[0], budget - size
        except MemoryError as exc:  # a limit memory_budget() could not see
            log.warning(
                "%s split (%s) did not fit in memory (%s): reading its batches from the "
                "memory-mapped file; set %s lower to skip the attempt",
                split,
                size_text(size),
                exc,
                MEMORY_BUDGET_ENV,
            )
            return images, 0
    log.warning(
        "%s split is %s, over the %s memory budget (%s): reading its batches from "
        "the memory-mapped %s",
        split,
        size_text(size),
        size_text(max(budget, 0)),
        MEMORY_BUDGET_ENV,
        paths.split_file(split).with_suffix(".npy"),
    )
    return images, budget


def resident_device(images: torch.Tensor, device: torch.device) -> torch.device:
    """Where the uint8 train set lives: on the accelerator when it takes under half its free
    memory, else in host memory with each batch copied over."""
    free = free_memory(device)
    if free is None:
        return device
    size = images.numel() * images.element_size()
    if size < free // 2:
        return device
    log.warning(
        "train split is %.1f GiB, over half the %s's free %.1f GiB: keeping it in host memory "
        "and copying each batch",
        size / 2**30,
        device.type,
        free / 2**30,
    )
    return torch.device("cpu")
