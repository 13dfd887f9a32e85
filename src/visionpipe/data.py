"""The preprocessed splits: reading them from data/processed, and where they live while training."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from visionpipe import paths

log = logging.getLogger(__name__)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 NCHW, labels int64) of a preprocessed split."""
    blob = torch.load(paths.require(paths.split_file(split), "preprocess"), weights_only=True)
    return blob["images"], blob["labels"]


def read_meta() -> dict[str, Any]:
    """data/processed/meta.json: classes, image size, the train split's mean/std, counts."""
    return json.loads(paths.require(paths.PROCESSED_DIR / "meta.json", "preprocess").read_text())


@dataclass
class TrainingData:
    """What a training run reads: both splits it uses and the dataset's metadata."""

    train_x: torch.Tensor  # uint8 NCHW, on the device when it fits (`resident_device`)
    train_y: torch.Tensor
    val_x: torch.Tensor  # on the host: validation copies its batches over
    val_y: torch.Tensor
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]


def load_training_data(device: torch.device) -> TrainingData:
    """The train and validation splits (the test split when data.val_fraction is 0)."""
    train_x, train_y = load_split("train")
    val_x, val_y = load_split("val")
    if len(val_y) == 0:
        log.warning("data.val_fraction is 0: validating on the test split, as the tutorial does")
        val_x, val_y = load_split("test")
    # Data lives on the device as uint8: 4x smaller than float, converted per batch.
    where = resident_device(train_x, device)
    return TrainingData(train_x.to(where), train_y.to(where), val_x, val_y, read_meta())


def free_memory(device: torch.device) -> int | None:
    """Bytes free on an accelerator (MPS: its recommended working set), None on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    return None


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
