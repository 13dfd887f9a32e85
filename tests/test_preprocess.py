"""Preprocess: ImageFolder layouts, bad images reported (skipped or fatal), splits and stats."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionpipe import paths, preprocess
from visionpipe.config import parse_params


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _make_zip(dest: Path, held_out: str = "val", extra: dict[str, bytes] | None = None) -> Path:
    colors = {"bees": (250, 200, 0), "ants": (90, 30, 10)}
    with zipfile.ZipFile(dest, "w") as z:
        for split, n in (("train", 10), (held_out, 4)):
            for cls, color in colors.items():
                for i in range(n):
                    z.writestr(f"photos/{split}/{cls}/{i}.jpg", _jpeg(color))
        z.writestr("photos/README.txt", "a note")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return dest


def _params(**data: object):
    return parse_params(
        {
            "data": {"dataset": "imagefolder", "source": "x", **data},
            "preprocess": {"image_size": 24},
        }
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / paths.RAW_DIR).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_imagefolder_zip_becomes_uint8_splits(workdir: Path, held_out: str) -> None:
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", held_out)
    meta = preprocess.run(_params(val_fraction=0.25, seed=3))
    assert meta["classes"] == ["ants", "bees"]  # sorted folder names, as ImageFolder
    assert meta["counts"] == {"train": 15, "val": 5, "test": 8}
    assert meta["test_split_source"] == held_out
    blob = torch.load(paths.split_file("train"), weights_only=True)
    assert blob["images"].dtype == torch.uint8 and blob["images"].shape == (15, 3, 24, 24)
    assert blob["labels"].dtype == torch.int64
    bees = blob["images"][blob["labels"] == 1].float().mean(dim=(0, 2, 3))
    assert bees[0] > 200 and bees[2] < 60  # RGB order kept
    assert sorted(p.name for p in paths.SAMPLES_DIR.iterdir()) == ["00_ants.png", "01_bees.png"]
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["ignored_files"] == 1 and report["skipped_bad_images"] == 0


def test_bad_images_are_listed_and_skipped_by_default(workdir: Path) -> None:
    good = _jpeg((1, 2, 3))
    bad = {
        "photos/train/ants/empty.jpg": b"",
        "photos/train/ants/text.jpg": b"hello",
        "photos/train/bees/cut.jpg": good[: len(good) // 3],
    }
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra=bad)
    meta = preprocess.run(_params())
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["skipped_bad_images"] == 3
    assert {b["file"] for b in report["bad_images"]} == set(bad)
    assert all(b["reason"] for b in report["bad_images"])
    assert meta["counts"]["train"] + meta["counts"]["val"] == 20


def test_on_bad_image_fail_stops_and_names_the_files(workdir: Path) -> None:
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra={"photos/train/ants/x.jpg": b""})
    with pytest.raises(preprocess.BadImagesError, match=r"photos/train/ants/x\.jpg"):
        preprocess.run(_params(on_bad_image="fail"))
    assert not paths.split_file("train").exists(), "a failed preprocess writes no split"


def test_layout_errors_are_explained(tmp_path: Path) -> None:
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("cats/1.jpg", _jpeg((0, 0, 0)))
    with pytest.raises(preprocess.DatasetLayoutError, match="train/<class>/<image>"):
        preprocess.decode_source(z, 8)
    z2 = tmp_path / "notest.zip"
    with zipfile.ZipFile(z2, "w") as f:
        f.writestr("train/cats/1.jpg", _jpeg((0, 0, 0)))
    with pytest.raises(preprocess.DatasetLayoutError, match="test/"):
        preprocess.decode_source(z2, 8)


def test_val_split_is_seeded_and_disjoint() -> None:
    split = preprocess.Split(np.zeros((50, 3, 2, 2), np.uint8), np.arange(50, dtype=np.int64))
    train_a, val_a = preprocess.split_train_val(split, 0.2, seed=1)
    _, val_b = preprocess.split_train_val(split, 0.2, seed=1)
    assert np.array_equal(val_a.labels, val_b.labels) and len(val_a.labels) == 10
    assert not set(train_a.labels) & set(val_a.labels)
    _, val_c = preprocess.split_train_val(split, 0.2, seed=2)
    assert not np.array_equal(val_a.labels, val_c.labels)


def test_channel_stats() -> None:
    imgs = np.zeros((2, 3, 2, 2), np.uint8)
    imgs[:, 0] = 255
    imgs[1, 1] = 255
    mean, std = preprocess.channel_stats(imgs)
    assert mean == [1.0, 0.5, 0.0] and std == [0.0, 0.5, 0.0]
