"""Tiny preprocessed datasets and the training settings the tests share, made on the fly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from visionpipe import paths
from visionpipe.config.params import parse_params
from visionpipe.config.training import TrainingParams
from visionpipe.models import MODELS
from visionpipe.split_files import SplitWriter

CLASSES = ["cat", "dog", "frog"]


def write_processed(
    root: Path,
    n_train: int = 96,
    n_val: int = 24,
    n_test: int = 30,
    size: int = 16,
    seed: int = 0,
    classes: list[str] = CLASSES,
) -> None:
    """Learnable tiny splits under `root`/data/processed: class k is brightest in channel k
    (of three: k % 3 with more classes)."""
    rng = np.random.default_rng(seed)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    folder = root / paths.PROCESSED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        labels = np.arange(n) % len(classes)
        images = rng.integers(0, 100, size=(n, 3, size, size), dtype=np.uint8)
        images[np.arange(n), labels % 3] += 120
        with SplitWriter(folder, split, size) as writer:
            writer.append(images, labels)
            writer.close()
    meta = {
        "dataset": "imagefolder",
        "classes": classes,
        "image_size": size,
        "mean": [0.3, 0.3, 0.3],
        "std": [0.2, 0.2, 0.2],
        "counts": counts,
    }
    (root / paths.PROCESSED_DIR / "meta.json").write_text(json.dumps(meta))


def kill_at_validation(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make train's `call`-th validation raise KeyboardInterrupt: power lost mid-epoch."""
    from visionpipe import train

    real_eval = train.evaluate_split
    calls = {"n": 0}

    def dying_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_split", dying_eval)


def train_anew(params: TrainingParams) -> dict[str, Any]:
    """train.run as the next `dvc repro -f` runs it once dvc.lock holds the last run's model:
    the finished run's kept checkpoint is gone, and the run trains from its first epoch (a plain
    second train.run of the same params only writes the finished run's outputs again)."""
    from visionpipe import checkpoints, train

    checkpoints.discard()
    return train.run(params)


def tiny_params(model: dict[str, object] | None = None, **train: object):
    return parse_params(
        {
            "data": {"dataset": "imagefolder", "source": "unused"},
            "model": model or {},
            "train": {"epochs": 2, "batch_size": 16, "log_every": 2, **train},
        }
    )


# airbench94's recipe (README "fast"), scaled to the tiny data: every knob it turns is on.
FAST_MODEL = {"name": "fast", "normalize": True, "tta": 2}


FAST_TRAIN: dict[str, object] = {
    "batch_size": 32,
    "lr": 1.5 * 32 / 1024,  # the recipe's lr is per 1024 images: it scales with the batch
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 0.00133,
    "bias_lr_scale": 64,
    "label_smoothing": 0.2,
    "schedule": "triangle",
    "lookahead": True,
    "augment": {"crop_padding": 2, "padding_mode": "reflect", "flip": "alternate"},
}


# Every model with the augmentation, lookahead and TTA the recipes use, for `processed32` (32 px,
# vgg16's minimum): tests/unit/test_gpu_paths.py (fake GPU) and tests/unit/test_cuda.py (real one).
ZOO = {
    arch: (
        {**FAST_MODEL} if arch == "fast" else {"name": arch, "normalize": True, "tta": 2},
        {**FAST_TRAIN} if arch == "fast" else {"augment": {"crop_padding": 2, "flip": True}},
    )
    for arch in MODELS
}
