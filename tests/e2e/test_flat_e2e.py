"""A flat folder of photos (no split folders) through the six stages with the real DVC commands,
then more photos added: every earlier photo keeps its split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import dvc, make_project

pytestmark = pytest.mark.slow

COLORS = {"cats": (200, 60, 40), "dogs": (40, 160, 60), "owls": (50, 60, 200)}


def _add_photos(folder: Path, start: int, n: int) -> None:
    rng = np.random.default_rng(start)
    for cls, color in COLORS.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            size = (int(rng.integers(30, 60)), int(rng.integers(30, 60)))
            pixels = np.clip(np.array(color) + rng.integers(-40, 41, (*size[::-1], 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / cls / f"IMG_{i:04d}.jpg")


def _record(repo: Path) -> dict[str, str]:
    with open(repo / "data/processed/split.csv", newline="") as f:
        return {row["file"]: row["split"] for row in csv.DictReader(f)}


def test_flat_folder_runs_every_stage_and_new_photos_never_move_old_ones(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _add_photos(photos, 0, 14)
    repo = make_project(
        tmp_path / "repo",
        {
            "data": {"dataset": "imagefolder", "source": str(photos)},
            "preprocess": {"image_size": 16},
            "train": {"epochs": 2, "batch_size": 8, "log_every": 5},
            "export": {"parity_images": 8},
        },
    )
    out = dvc(repo, "repro").stdout
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        assert f"Running stage '{stage}'" in out
    meta = json.loads((repo / "data/processed/meta.json").read_text())
    assert meta["layout"] == "flat" and meta["classes"] == sorted(COLORS)
    before = _record(repo)
    assert len(before) == 42 and set(before.values()) == {"train", "val", "test"}
    assert sum(meta["counts"].values()) == 42
    per_class = json.loads((repo / "metrics/per_class.json").read_text())["classes"]
    assert sum(c["support"] for c in per_class) == meta["counts"]["test"]

    _add_photos(photos, 14, 10)
    # DVC does not watch a folder outside the project: the README says to re-run download.
    dvc(repo, "repro", "-f", "-s", "download")
    out = dvc(repo, "repro").stdout
    assert "Running stage 'preprocess'" in out and "Running stage 'train'" in out
    after = _record(repo)
    assert len(after) == 72
    assert {name: after[name] for name in before} == before, "an earlier photo changed split"
