"""Preprocess: image-folder layouts, bad images reported (skipped or fatal), splits and stats."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.datasets.folder import find_classes

from visionpipe import paths, preprocess, split_plan
from visionpipe.config.params import parse_params
from visionpipe.split_tensors import load_split


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


def _params(image_size: int | None = 24, **data: object):
    return parse_params(
        {
            "data": {"dataset": "imagefolder", "source": "x", **data},
            "preprocess": {"image_size": image_size},
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
    images, labels = load_split("train")
    assert images.dtype == torch.uint8 and images.shape == (15, 3, 24, 24)
    assert labels.dtype == torch.int64
    bees = images[labels == 1].float().mean(dim=(0, 2, 3))
    assert bees[0] > 200 and bees[2] < 60  # RGB order kept
    assert sorted(p.name for p in paths.SAMPLES_DIR.iterdir()) == ["00_ants.png", "01_bees.png"]
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["ignored_files"] == 1 and report["skipped_bad_images"] == 0


def test_a_long_decode_says_how_far_it_got(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of large photos take minutes between "decoding" and "decoded": a count now
    and then says it goes on (every chunk here, where 30 s is made 0)."""
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", "test")
    monkeypatch.setattr(preprocess, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(preprocess, "chunk_items", lambda size: 4)  # several chunks
    with caplog.at_level(logging.INFO, logger="visionpipe.preprocess"):
        meta = preprocess.run(_params())
    total = sum(meta["counts"].values())
    counts = re.findall(rf"decoded (\d+) of {total} images", caplog.text)
    assert counts and [int(c) for c in counts] == sorted(int(c) for c in counts), caplog.text
    assert all(int(c) < total for c in counts)


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


def test_files_left_out_are_told_apart_by_what_to_do(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = {"photos/ants/IMG_2": _jpeg((1, 2, 3)), "photos/more.zip": b"PK", "photos/a.mp4": b""}
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 8, "bees": 8}, extra=extra)
    preprocess.run(_params())
    warned = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert warned == [
        "ignoring 3 files (listed in metrics/preprocess.json): archives inside the source, not "
        "opened (unpack them into it) (1): photos/more.zip; without a suffix (a photo needs its "
        "format's: .jpg, .png, ...) (1): photos/ants/IMG_2; not images by their suffix (1): "
        "photos/a.mp4"
    ]


def test_more_files_left_out_than_the_report_lists_are_said_to_be_the_first_ones(
    workdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A RAW + JPEG shooter's folder: a .CR2 and a .xmp beside each photo, 100,000 of them on a
    # NAS; the report (a DVC metric file) lists the first ones.
    monkeypatch.setattr(preprocess, "IGNORED_LISTED", 2)
    extra = {f"photos/ants/IMG_{i}.CR2": b"raw" for i in range(3)}
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 8, "bees": 8}, extra=extra)
    preprocess.run(_params())
    assert "ignoring 3 files (listed in metrics/preprocess.json, the first 2): " in caplog.text
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["ignored_files"] == 3 and len(report["ignored"]) == 2


@pytest.mark.parametrize("layout", ["flat", "split"])
def test_a_class_with_no_decodable_image_is_refused(workdir: Path, layout: str) -> None:
    good = _jpeg((1, 2, 3))
    fish = {"empty.jpg": b"", "cut.jpg": good[: len(good) // 3], "text.jpg": b"hello"}
    folder = "photos/fish" if layout == "flat" else "photos/train/fish"
    extra = {f"{folder}/{name}": data for name, data in fish.items()}
    source = workdir / paths.RAW_DIR / "photos.zip"
    if layout == "flat":
        _flat_zip(source, {"ants": 10, "bees": 10}, extra=extra)
    else:
        _make_zip(source, extra=extra | {"photos/val/fish/x.jpg": b""})
    with pytest.raises(preprocess.EmptyClassError) as err:
        preprocess.run(_params())
    said = str(err.value)
    n = 3 if layout == "flat" else 4
    assert said.startswith(
        "1 class would have no image to train or test on, every file skipped as undecodable"
        " (all listed under 'bad_images' in metrics/preprocess.json):\n"
        f"  'fish': {n} files, none decodable:\n"
    ), said
    assert f"{folder}/empty.jpg: empty file (0 bytes)" in said
    assert said.endswith(
        "Remove the class's folder (in split folders, each split's), or add"
        " photos to it or fix its files." + preprocess.FIXED_SOURCE
    )
    assert not paths.PROCESSED_DIR.exists() and not paths.SAMPLES_DIR.exists()
    assert [p.name for p in paths.PROCESSED_DIR.parent.iterdir()] == ["raw"]  # no temp left
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert {b["file"] for b in report["bad_images"]} >= set(extra)


def test_a_class_missing_from_some_split_folders_is_warned_not_refused(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = {"photos/train/wasps/0.jpg": _jpeg((20, 20, 220)), "photos/val/wasps/x.jpg": b""}
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra=extra)
    meta = preprocess.run(_params())
    assert meta["classes"] == ["ants", "bees", "wasps"]
    assert "class 'wasps' has no val images" in caplog.text


def test_the_counts_logged_are_those_decoded(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"photos/train/ants/empty.jpg": b"", "photos/val/bees/text.jpg": b"hello"}
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra=bad)
    with caplog.at_level(logging.INFO):
        meta = preprocess.run(_params(val_fraction=0))
    assert meta["counts"] == {"train": 20, "val": 0, "test": 8}
    said = [r.getMessage() for r in caplog.records]
    assert any(
        "2 classes ('ants', 'bees'), 30 image files to decode (train 21, val 0, test 9)" in m
        for m in said
    ), said
    assert "decoded 28 images (train 20, val 0, test 8), 2 skipped" in said


def test_on_bad_image_fail_lists_every_file_when_there_are_many(workdir: Path) -> None:
    bad = {f"photos/train/ants/{i:03d}.jpg": b"" for i in range(60)}
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra=bad)
    with pytest.raises(preprocess.BadImagesError) as err:
        preprocess.run(_params(on_bad_image="fail"))
    assert "60 images cannot be decoded (data.on_bad_image: fail; all listed in " in str(err.value)
    assert "ants/049.jpg: empty" in str(err.value) and "ants/050.jpg" not in str(err.value)
    assert "\n  ... and 10 more\n" in str(err.value)
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert [b["file"] for b in report["bad_images"]] == sorted(bad)


def test_an_image_too_large_to_unpack_is_a_bad_image_its_class_counts_without(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe import archive

    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 4096)
    bomb = {"photos/train/ants/bomb.jpg": bytes(5000)}
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra=bomb)
    with pytest.raises(
        preprocess.BadImagesError, match=r"bomb\.jpg: unpacks to more than 4\.0 KiB"
    ):
        preprocess.run(_params(on_bad_image="fail"))
    preprocess.run(_params())
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert [b["file"] for b in report["bad_images"]] == list(bomb)
    assert report["skipped_bad_images"] == 1


def test_on_bad_image_fail_stops_and_names_the_files(workdir: Path) -> None:
    _make_zip(workdir / paths.RAW_DIR / "photos.zip", extra={"photos/train/ants/x.jpg": b""})
    with pytest.raises(
        preprocess.BadImagesError, match=r"(?s)^1 image cannot.*photos/train/ants/x\.jpg"
    ):
        preprocess.run(_params(on_bad_image="fail"))
    assert not paths.split_file("train").exists(), "a failed preprocess writes no split"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cats/1.jpg", "cats/2.jpg"], "found only one class folder, 'cats'"),
        (["1.jpg", "2.jpg"], "found 0 class folders under '.'"),
        (
            ["cover.png", "photos/cats/1.jpg", "photos/dogs/2.jpg"],
            r"found 1 class folder under '\.', 'photos', beside images outside any class "
            r"folder \(cover\.png\): move those images into a class folder or out of the source",
        ),
        (["photos/cats/1.jpg", "photos/cats/2.jpg"], "found only one class folder, 'cats'"),
        (["x/photos/cats/1.jpg", "x/photos/dogs/2.jpg", "x/0.jpg"], r"'x', 'photos', .*\(x/0"),
        (["train/cats/1.jpg"], r"no held-out split.*; or point data.source at 'train/' itself"),
        (
            ["x/car/1.jpg", "x/bus/2.jpg", "x/train/2023/3.jpg", "y/z/4.jpg"],
            r"if 'train' is a class beside bus, car, rename its folder \(trains/\)",
        ),
        (
            ["ds/train/cats/1.jpg", "ds/test/1.jpg", "ds/test/2.jpg"],
            r"class folders \(2 unlabelled images lie outside any class folder there, e\.g\. "
            r"ds/test/1\.jpg: sort them into class folders",
        ),
        (["a/train/cats/1.jpg", "b/train/cats/1.jpg", "a/test/cats/2.jpg"], "several folders"),
        (  # a course's cats and dogs, Kaggle's Intel images: splits, not two classes
            [f"dataset/{s}/{c}/1.jpg" for s in ("training_set", "test_set") for c in "ab"],
            r"the class folders found are split folders \(test_set, training_set\): name them",
        ),
        (
            [f"{s}/{s}/{c}/1.jpg" for s in ("seg_train", "seg_test") for c in "ab"],
            r"split folders \(seg_test, seg_train\)",
        ),
        (  # with the course's folder of photos to try beside them
            [f"dataset/{s}/{c}/1.jpg" for s in ("training_set", "test_set") for c in "ab"]
            + ["dataset/single_prediction/1.jpg"],
            r"split folders \(test_set, training_set\) \(beside them single_prediction, which",
        ),
        (
            ["train/a/1.jpg", "test_set/a/2.jpg"],
            r"'test_set/' is none of them.*rename it to 'test/'",
        ),
        (  # Keras' validation/: said what it becomes
            ["train/a/1.jpg", "validation/a/2.jpg"],
            r"rename it to 'val/' \(beside train/ alone, that one held-out folder is the test",
        ),
        (["train/a/1.jpg", "test/a/3.jpg", "validation/a/2.jpg"], r"rename it to 'val/' \(or move"),
        (["train/cats/1.jpg", "test/dogs/1.jpg"], "classes not in train/: dogs"),
        (["notes.txt"], "no image files"),
        (  # a class of scans in a format not read: the folder is named, and what to do
            ["scans/normal/1.png", "scans/normal/2.png", "scans/abnormal/a.dcm", "scans/b.txt"],
            r"found only one class folder, 'normal'.*share one folder \(2 in 'scans/normal'.*"
            r"Folders with files but no image .*: 'scans/abnormal/' \(1 file: a\.dcm\); DICOM",
        ),
        (  # the same in split folders (Kaggle's chest X-rays): refused too, not trained
            ["x/train/NORMAL/1.png", "x/test/NORMAL/2.png", "x/train/PNEUMONIA/a.dcm"],
            r"found only one class folder in x/train/, 'NORMAL': a model needs two or more; .*"
            r"'x/train/PNEUMONIA/' \(1 file: a\.dcm\); DICOM",
        ),
    ],
)
def test_layout_errors_are_explained(names: list[str], message: str) -> None:
    with pytest.raises(split_plan.DatasetLayoutError, match=message):
        split_plan.plan_image_folder(names, None, 0.1, 0)


def test_val_split_is_seeded_and_disjoint() -> None:
    val_a = split_plan.carve_val(50, 0.2, seed=1)
    assert np.array_equal(val_a, split_plan.carve_val(50, 0.2, seed=1)) and val_a.sum() == 10
    assert not np.array_equal(val_a, split_plan.carve_val(50, 0.2, seed=2))
    with pytest.raises(split_plan.DatasetLayoutError, match="leaves no training images"):
        split_plan.carve_val(3, 0.9, seed=0)


def test_channel_stats_are_exact_whatever_the_chunks() -> None:
    from visionpipe.split_files import channel_sums, mean_std

    imgs = np.zeros((2, 3, 2, 2), np.uint8)
    imgs[:, 0] = 255
    imgs[1, 1] = 255
    assert mean_std(*channel_sums(imgs), 2 * 4) == ([1.0, 0.5, 0.0], [0.0, 0.5, 0.0])
    parts = [channel_sums(imgs[:1]), channel_sums(imgs[1:])]
    summed = tuple(a + b for a, b in zip(*parts, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(summed, channel_sums(imgs), strict=True))


def _flat_zip(dest: Path, per_class: dict[str, int], extra: dict[str, bytes] | None = None) -> Path:
    """A flat collection: photos/<class>/<n>.jpg, each image one solid colour per class."""
    colors = {"ants": (90, 30, 10), "bees": (250, 200, 0), "wasps": (20, 20, 220)}
    with zipfile.ZipFile(dest, "w") as z:
        for cls, n in per_class.items():
            for i in range(n):
                z.writestr(f"photos/{cls}/{i:03d}.jpg", _jpeg(colors[cls], (40 + i, 30)))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return dest


def test_files_left_out_are_named_in_the_log_but_not_mac_junk(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = {"photos/ants/IMG_1.CR2": b"raw", "photos/cover.jpg": _jpeg((1, 2, 3))}
    extra |= {"photos/.DS_Store": b"x", "__MACOSX/photos/ants/._000.jpg": b"x"}
    extra |= {"photos/ants/Thumbs.db": b"x", "photos/bees/desktop.ini": b"x"}
    extra |= {"photos/bees/Icon\r": b""}  # Finder's custom folder icon
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 8, "bees": 8}, extra=extra)
    preprocess.run(_params())
    warned = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("ignoring 2 files"), warned
    assert "not images by their suffix (1): photos/ants/IMG_1.CR2; images outside the" in warned[0]
    assert warned[0].endswith("class folders (1): photos/cover.jpg")
    assert all(
        junk not in warned[0] for junk in ("DS_Store", "MACOSX", "Thumbs", "desktop", "Icon")
    )


def test_the_same_photos_under_another_archive_or_top_folder_make_the_same_data(
    workdir: Path,
) -> None:
    # A teammate's copy named otherwise, or zipped inside a folder of another name: the same
    # photos must make the same data/processed, or DVC re-runs train on it.
    made = []
    for archive, top in (
        ("photos.zip", "photos/"),
        ("cifar-small (1).zip", "my stuff/"),
        ("a.zip", ""),
    ):
        for old in (workdir / paths.RAW_DIR).iterdir():
            old.unlink()
        source = _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 12, "bees": 12})
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(workdir / "moved.zip", "w") as zout:
            for name in zin.namelist():
                zout.writestr(top + name.removeprefix("photos/"), zin.read(name))
        source.unlink()
        (workdir / "moved.zip").rename(workdir / paths.RAW_DIR / archive)
        preprocess.run(_params())
        made.append({f.name: f.read_bytes() for f in sorted(paths.PROCESSED_DIR.iterdir())})
    assert made[0] == made[1] == made[2]
    assert _record()[0]["file"].startswith(("ants/", "bees/"))


def _record(folder: Path = paths.PROCESSED_DIR) -> list[dict[str, str]]:
    with open(folder / paths.SPLIT_RECORD.name, newline="") as f:
        return list(csv.DictReader(f))


def test_flat_folder_is_split_recorded_and_counted(workdir: Path) -> None:
    _flat_zip(
        workdir / paths.RAW_DIR / "photos.zip",
        {"ants": 30, "bees": 30, "wasps": 2},
        extra={"photos/bees/broken.jpg": b"not a jpeg"},
    )
    meta = preprocess.run(_params(test_fraction=0.3))
    assert meta["layout"] == "flat" and meta["test_split_source"] == "carved"
    assert meta["classes"] == ["ants", "bees", "wasps"]
    rows = _record()
    assert len(rows) == 63 and sum(r["split"] == "skipped" for r in rows) == 1
    for split in split_plan.SPLITS:
        images, labels = load_split(split)
        mine = [r for r in rows if r["split"] == split]
        assert (
            [int(r["index"]) for r in mine] == list(range(len(labels))) == list(range(len(images)))
        )
        assert [meta["classes"][y] for y in labels.tolist()] == [r["class"] for r in mine]
        assert sum(meta["class_counts"][split].values()) == meta["counts"][split] == len(labels)
    # Each row of the arrays is the file the record names: bees are yellow, ants brown.
    test_images, test_labels = load_split("test")
    red = test_images.float().mean(dim=(2, 3))[:, 0]
    assert all(
        (r > 200) == (meta["classes"][y] == "bees")
        for r, y in zip(red, test_labels.tolist(), strict=True)
    )
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert any("'wasps'" in w for w in report["warnings"]), report["warnings"]


def test_many_thin_classes_are_warned_about_in_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    classes = [f"c{i:02d}" for i in range(30)]
    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    written = preprocess.write_samples(images, [0, 1], classes, tmp_path)
    assert [p.name for p in written] == ["00_c00.png", "01_c01.png"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        "no test image of 28 classes: no sample written for them ('c02', 'c03', 'c04', 'c05',"
        " 'c06', 'c07', 'c08', 'c09', 'c10', 'c11', 'c12', 'c13', 'c14', 'c15', 'c16', 'c17',"
        " 'c18', 'c19', 'c20', 'c21' and 8 more)"
    )
    caplog.clear()
    counts = {s: {c: 1 if s == "train" else 0 for c in classes} for s in ("train", "test")}
    counts["train"]["c29"] = 0  # one class with no train images: said first, not crowded out
    warnings = preprocess._warn_thin_classes(counts, 0.0)
    assert len(warnings) == 60  # each in the report
    said = [r.getMessage() for r in caplog.records]
    first = ", ".join(map(repr, classes[:20]))
    assert said == [
        "1 class has no train images: 'c29'",
        f"30 classes have no test images: {first} and 10 more",
        f"29 classes have fewer than 5 train images: {first} and 9 more",
        f"(each class's line in {paths.PREPROCESS_REPORT})",
    ]
    # A few: each its line.
    caplog.clear()
    preprocess._warn_thin_classes({"train": {"a": 1, "b": 9}, "test": {"a": 0, "b": 3}}, 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "class 'a' has no test images",
        "class 'a' has only 1 train image",
        "class 'b' has only 3 test images",
    ]


def test_samples_of_many_classes_sort_in_class_order(tmp_path: Path) -> None:
    classes = [f"class_{i}" for i in range(120)]
    labels = list(range(120))
    written = preprocess.write_samples(
        np.zeros((120, 3, 8, 8), np.uint8), labels, classes, tmp_path
    )
    assert [p.name for p in written][:2] == ["000_class_0.png", "001_class_1.png"]
    assert sorted(p.name for p in written) == [p.name for p in written]


def test_a_sample_s_name_holds_no_character_a_fat_drive_refuses() -> None:
    # A class folder `a:b` or `what?` (made on Linux) in a project on an exFAT card: preprocess
    # stopped with EINVAL on data/.samples.x.tmp/01_a:b.png.
    classes = ["a:b", "what?", 'x"<y>|*\\', "tab\there"]
    names = [preprocess.sample_name(i, c, 4) for i, c in enumerate(classes)]
    assert names == ["00_a_b.png", "01_what_.png", "02_x__y____.png", "03_tab_here.png"]


def test_a_source_of_other_classes_than_the_named_dataset_s_is_warned_about(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 8, "wasps": 8})
    meta = preprocess.run(_params(dataset="hymenoptera"))
    line = (
        "data.dataset is hymenoptera, but data.source holds classes that are not hymenoptera's"
        " ('wasps'): for your own photos set data.dataset=imagefolder"
    )
    assert line in caplog.text
    assert line in json.loads(paths.PREPROCESS_REPORT.read_text())["warnings"][0]
    # Or conf/'s data.source was left at another dataset's when data.dataset changed.
    assert "; for hymenoptera itself, data.source=null takes its official archive" in caplog.text
    assert meta["classes"] == ["ants", "wasps"]
    caplog.clear()
    preprocess.run(_params(dataset="imagefolder"))
    assert "data.dataset is" not in caplog.text


def test_a_validation_split_the_images_all_miss_is_said_so(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Six images: a 1% share for validation draws none of them (each by its name).
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 3, "bees": 3})
    meta = preprocess.run(_params(test_fraction=0.2, val_fraction=0.01))
    assert meta["counts"]["val"] == 0 and meta["counts"]["train"] > 0
    line = "data.val_fraction=0.01 put none of the {} training images in the validation split"
    assert line.format(meta["counts"]["train"]) in caplog.text
    assert any(w.startswith("data.val_fraction=0.01") for w in _report_warnings())
    caplog.clear()
    preprocess.run(_params(test_fraction=0.2, val_fraction=0.0))  # asked for: nothing to say
    assert "val_fraction" not in caplog.text


def _report_warnings() -> list[str]:
    return json.loads(paths.PREPROCESS_REPORT.read_text())["warnings"]


def test_parallel_decoding_writes_the_same_bytes_as_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _flat_zip(
        tmp_path / "photos.zip",
        {"ants": 25, "bees": 25},
        extra={"photos/ants/cut.jpg": _jpeg((1, 2, 3))[:200], "photos/bees/empty.jpg": b""},
    )
    monkeypatch.setattr(preprocess, "MAX_CHUNK_ITEMS", 4)  # 13 chunks over 2 processes
    data = _params().data
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        out.mkdir()
        result = preprocess.decode_source(source, 24, data, out, workers)
        outputs[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        assert [b["file"] for b in result.bad_images] == [
            "photos/ants/cut.jpg",
            "photos/bees/empty.jpg",
        ]
    assert sorted(outputs[1]) == [
        "split.csv",
        "test.json",
        "test.npy",
        "train.json",
        "train.npy",
        "val.json",
        "val.npy",
    ]
    assert outputs[1] == outputs[2]


def test_predict_sees_the_pixels_preprocess_wrote(workdir: Path) -> None:
    from visionpipe.images import read_image_file

    rng = np.random.default_rng(0)
    photos = {}
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "big.zip", "w") as z:
        for i in range(12):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((1200, 900), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            name = f"album/{'cats' if i % 2 else 'dogs'}/{i}.jpg"
            z.writestr(name, buf.getvalue())
            photos[name] = buf.getvalue()
    preprocess.run(_params(image_size=None))  # imagefolder default: 64 px, JPEG drafts at 1/4
    for row in _record():
        path = workdir / Path(row["file"]).name
        path.write_bytes(photos[f"album/{row['file']}"])  # named below the folder of them all
        images, _ = load_split(row["split"])
        assert np.array_equal(images[int(row["index"])].numpy(), read_image_file(path, 64))


def test_too_little_disk_space_is_said_before_decoding(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _flat_zip(workdir / paths.RAW_DIR / "photos.zip", {"ants": 10, "bees": 10})
    monkeypatch.setattr(
        preprocess.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000)
    )
    with pytest.raises(
        preprocess.DiskSpaceError,
        match=r"20 images take 33\.8 KiB at 24x24 pixels and \S*data has 1000 bytes free.*lower",
    ):
        preprocess.run(_params())
    assert not paths.PROCESSED_DIR.exists()


def test_class_names_of_any_script_keep_imagefolders_order(workdir: Path, tmp_path: Path) -> None:
    # Numbers sort as text (10 before 2), as torchvision's ImageFolder sorts them; a class name
    # of 252 bytes (the file system's limit is 255) still gets its sample image.
    classes = ["2", "10", "1", "0", "猫", "🐱", "Dog", "dog", "two words", "字" * 84]
    tree = tmp_path / "photos"
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "w") as z:
        for split, n in (("train", 3), ("test", 1)):
            for k, cls in enumerate(classes):
                for i in range(n):
                    (tree / split / cls).mkdir(parents=True, exist_ok=True)
                    (tree / split / cls / f"{i}.jpg").write_bytes(_jpeg((k * 20, 0, 0)))
                    z.write(tree / split / cls / f"{i}.jpg", f"photos/{split}/{cls}/{i}.jpg")
    meta = preprocess.run(_params(image_size=8, val_fraction=0.0))
    assert meta["classes"] == find_classes(tree / "train")[0]
    assert meta["classes"][:4] == ["0", "1", "10", "2"]
    samples = sorted(p.name for p in paths.SAMPLES_DIR.iterdir())
    assert len(samples) == len(classes) and samples[0] == "00_0.png"
    assert f"07_{'字' * 66}.png" in samples  # cut to 200 bytes, at a character


def test_one_class_name_in_two_unicode_forms_is_refused() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # what Linux and a Mac's zip write
    names = [f"{cls}/{i}.jpg" for cls in (composed, decomposed, "tea") for i in range(5)]
    with pytest.raises(split_plan.DatasetLayoutError, match="one name in two Unicode forms") as e:
        split_plan.plan_image_folder(names, None, 0.1, 0)
    assert r"'cafe\u0301' and 'caf\xe9'" in str(e.value)


def test_one_class_name_with_and_without_a_trailing_space_is_refused() -> None:
    names = [f"{cls}/{i}.jpg" for cls in ("dogs", "dogs ", "cats") for i in range(5)]
    with pytest.raises(split_plan.DatasetLayoutError) as e:
        split_plan.plan_image_folder(names, None, 0.1, 0)
    assert "'dogs' and 'dogs ' are one name but for spaces at the ends" in str(e.value)


def _noisy(seed: int) -> bytes:
    """A JPEG of noise: no two seeds decode alike, as no two photos do."""
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _noisy_zip(dest: Path, files: dict[str, int]) -> Path:
    """A zip of `name: seed` noise JPEGs: a seed used twice is one photo copied."""
    with zipfile.ZipFile(dest, "w") as z:
        for name, seed in files.items():
            z.writestr(name, _noisy(seed))
    return dest


def _seeds(folder: str, classes: tuple[str, ...], n: int, first: int = 0) -> dict[str, int]:
    """`n` distinct photos per class folder of `folder`, for `_noisy_zip`."""
    return {
        f"{folder}/{c}/{i}.jpg": first + 10 * k + i for k, c in enumerate(classes) for i in range(n)
    }


def test_copies_across_classes_and_splits_are_warned_and_listed(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _seeds("photos/train", ("ants", "bees"), 8) | _seeds(
        "photos/test", ("ants", "bees"), 3, 100
    )
    files["photos/train/bees/copy_of_ant.jpg"] = 3  # photos/train/ants/3.jpg, in a second class
    files["photos/test/ants/seen.jpg"] = 5  # photos/train/ants/5.jpg, scored as unseen
    files["photos/train/ants/5 (1).jpg"] = 5  # and a third copy of it
    files["photos/train/bees/again.jpg"] = 12  # photos/train/bees/2.jpg: same class, harmless split
    caplog.set_level("INFO")
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "a") as z:
        z.writestr("photos/train/ants/empty1.jpg", b"")  # two undecodable files are no copies
        z.writestr("photos/train/bees/empty2.jpg", b"")
    preprocess.run(_params(val_fraction=0.0))
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["identical_images"] == 4
    groups = [
        [(c["file"].removeprefix("photos/"), c["class"], c["split"]) for c in g]
        for g in report["identical"]
    ]
    assert groups == [  # in archive order: test/ before train/, "5 (1).jpg" before "5.jpg"
        [
            ("test/ants/seen.jpg", "ants", "test"),
            ("train/ants/5 (1).jpg", "ants", "train"),
            ("train/ants/5.jpg", "ants", "train"),
        ],
        [("train/ants/3.jpg", "ants", "train"), ("train/bees/copy_of_ant.jpg", "bees", "train")],
        [("train/bees/2.jpg", "bees", "train"), ("train/bees/again.jpg", "bees", "train")],
    ]
    warned = [r.getMessage() for r in caplog.records if "identical pixels" in r.getMessage()]
    assert warned == report["warnings"][-2:]
    assert warned[0].startswith(
        "1 picture is in more than one class (identical pixels at 24x24, the model's input, e.g. "
    )
    assert (
        "photos/train/ants/3.jpg (ants, train) = photos/train/bees/copy_of_ant.jpg (bees, train)"
        in warned[0]
    )
    assert warned[1].startswith(
        "1 picture is in more than one split (identical pixels at 24x24, the model's input, e.g. "
        "photos/test/ants/"
        "seen.jpg (ants, test) = photos/train/ants/5 (1).jpg (ants, train) = "
    )
    assert (
        "delete all copies but one (all listed under 'identical' in metrics/preprocess.json)"
        in warned[1]
    )
    # The copy in its own class and split is said too, beside the warnings of the others.
    assert "1 image has an identical copy in its class and split (counted twice there" in (
        caplog.text
    )


def test_blank_frames_of_two_sizes_are_one_picture_at_the_model_size(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two black frames, a 640x480 JPEG and a 100x100 PNG, are different files but one input
    to the model: the warning says they are alike at the size compared, not as files."""
    files = _seeds("photos", ("day", "night"), 6)
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "a") as z:
        for name, size, kind in (
            ("day/black.jpg", (640, 480), "JPEG"),
            ("night/black.png", (100, 100), "PNG"),
        ):
            buf = io.BytesIO()
            Image.new("RGB", size).save(buf, format=kind)
            z.writestr(f"photos/{name}", buf.getvalue())
    preprocess.run(_params(val_fraction=0.0))
    warned = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    assert warned[0].startswith(
        "1 picture is in more than one class (identical pixels at 24x24, the model's input, e.g."
        " photos/day/black.jpg (day, "
    )
    (blank,) = [
        r.getMessage() for r in caplog.records if "all black or all white" in r.getMessage()
    ]
    assert blank.startswith(
        "Of these, 1 picture is all black or all white at 24x24 (e.g. photos/day/black.jpg ="
        " photos/night/black.png): blank frames, or transparent images"
    )


def test_transparent_icons_that_decode_alike_are_told_apart_from_copies(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Black shapes on a transparent background, the way icon sets come, are all black once
    their alpha is dropped: the warning says so and how to flatten them, not only to delete."""
    files = _seeds("icons", ("arrows", "circles"), 6)
    files["icons/circles/copy.jpg"] = 3  # a copy of icons/arrows/3.jpg: noise, not blank
    _noisy_zip(workdir / paths.RAW_DIR / "icons.zip", files)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "icons.zip", "a") as z:
        for cls, box in (("arrows", (2, 8, 30, 24)), ("circles", (4, 4, 28, 28))):
            icon = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
            ImageDraw.Draw(icon).rectangle(box, fill=(0, 0, 0, 255))
            buf = io.BytesIO()
            icon.save(buf, format="PNG")
            z.writestr(f"icons/{cls}/icon.png", buf.getvalue())
    preprocess.run(_params(val_fraction=0.0))
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    (blank,) = [w for w in report["warnings"] if "all black or all white" in w]
    assert blank.startswith("Of these, 1 picture is all black or all white at 24x24 (e.g. icons")
    assert "e.g. icons/arrows/icon.png = icons/circles/icon.png)" in blank
    assert "flatten those onto a background" in blank


def test_a_copy_in_its_own_class_and_split_is_counted_without_a_warning(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _seeds("photos", ("ants", "bees"), 9)
    files["photos/ants/train/again.jpg"] = 4  # split_of puts it in photos/ants/4.jpg's split
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    preprocess.run(_params(test_fraction=0.5, val_fraction=0.0))
    rows = {r["file"]: r["split"] for r in _record()}
    assert rows["ants/4.jpg"] == rows["ants/train/again.jpg"]
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    assert report["identical_images"] == 1 and len(report["identical"]) == 1
    assert not [w for w in report["warnings"] if "identical" in w]
    assert not [
        r for r in caplog.records if r.levelname == "WARNING" and "identical" in r.getMessage()
    ]


def test_a_layout_warning_is_logged_and_reported(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _seeds("photos/animals", ("cats", "dogs"), 6) | _seeds("photos", ("birds",), 6, 50)
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    caplog.set_level(logging.INFO, logger="visionpipe")
    preprocess.run(_params(test_fraction=0.3))
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    warned = [
        r.getMessage() for r in caplog.records if "holds no images of its own" in r.getMessage()
    ]
    assert len(warned) == 1 and warned[0] in report["warnings"]
    assert "classes ('animals', 'birds')" in caplog.text


def test_a_split_file_the_system_refuses_is_named(tmp_path: Path) -> None:
    # FAT32's 4 GiB or `ulimit -f` stop train.npy midway: the error must say which file.
    import errno

    from visionpipe.split_files import SplitWriter

    class TooLarge(io.BytesIO):
        def write(self, b: object) -> int:
            raise OSError(errno.EFBIG, "File too large")

    with SplitWriter(tmp_path, "train", 4) as writer:
        writer._file.close()
        writer._file = TooLarge()
        with pytest.raises(OSError) as err:
            writer.append(np.zeros((2, 3, 4, 4), np.uint8), np.zeros(2, np.int64))
    assert err.value.filename == str(tmp_path / "train.npy")


def test_what_a_killed_run_left_beside_its_outputs_is_removed(workdir: Path) -> None:
    _make_zip(workdir / paths.RAW_DIR / "photos.zip")
    left = [
        paths.PROCESSED_DIR.parent / ".processed.x1.tmp",
        paths.SAMPLES_DIR.parent / ".samples.x2.tmp",
    ]
    for folder in left:
        (folder / "part").mkdir(parents=True)
    preprocess.run(_params())
    assert not any(folder.exists() for folder in left)


@pytest.mark.parametrize("kind", ["zip", "windows.zip", "tar.gz"])
def test_an_archive_names_its_empty_class_folders(
    workdir: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A zip or tar made of a folder whose class folder is still empty keeps that folder's entry:
    the class is missing from the model all the same, and said so, as a folder source says."""
    tree = tmp_path / "photos"
    for split, n in (("train", 10), ("val", 4)):
        for cls, color in (("bees", (250, 200, 0)), ("ants", (90, 30, 10))):
            (tree / split / cls).mkdir(parents=True)
            for i in range(n):
                (tree / split / cls / f"{i}.jpg").write_bytes(_jpeg(color))
    (tree / "train" / "wasps").mkdir()
    (tree / "train" / "flies" / "2019").mkdir(parents=True)
    (tree / "train" / "flies" / ".DS_Store").write_bytes(b"\0")  # hidden: flies/ has no files
    (tree / "val" / "__MACOSX").mkdir()  # a system folder is no class to miss
    dest = workdir / paths.RAW_DIR / f"photos.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(dest, "w") as z:
            for path in sorted(tree.rglob("*")):
                z.write(path, path.relative_to(tmp_path).as_posix())
    elif kind == "windows.zip":  # PowerShell 5's: '\\' between folders, a folder's too at its end
        with zipfile.ZipFile(dest, "w") as z:
            for path in sorted(tree.rglob("*")):
                name = str(path.relative_to(tmp_path)).replace("/", "\\")
                info = zipfile.ZipInfo(name + "\\" * path.is_dir())
                info.create_system = 0  # written on Windows (Python's zipfile says Unix here)
                z.writestr(info, b"" if path.is_dir() else path.read_bytes())
    else:
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(tree, "photos")
    with caplog.at_level(logging.WARNING):
        meta = preprocess.run(_params())
    assert meta["classes"] == ["ants", "bees"]
    assert (
        f"photos.{kind}: 2 folders hold no files, so no class or split comes of them: "
        "photos/train/flies/, photos/train/wasps/"
    ) in caplog.text
    assert "MACOSX" not in caplog.text


def test_an_empty_test_folder_is_named_before_the_layout_error_it_causes(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "w") as z:
        for cls, color in (("bees", (250, 200, 0)), ("ants", (90, 30, 10))):
            for i in range(5):
                z.writestr(f"train/{cls}/{i}.jpg", _jpeg(color))
        z.writestr("test/", "")
    with caplog.at_level(logging.WARNING), pytest.raises(split_plan.DatasetLayoutError):
        preprocess.run(_params())
    said = "photos.zip: 1 folder holds no files, so no class or split comes of it: test/"
    assert said in caplog.text


def _preprocessed_pngs(dest: Path, images: list[np.ndarray], test_fraction: float) -> dict:
    """Preprocess a zip of `images` as PNGs, in turn of two classes; its report."""
    with zipfile.ZipFile(dest, "w") as z:
        for i, pixels in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            z.writestr(f"set/{('one', 'two')[i % 2]}/{i}.png", buf.getvalue())
    preprocess.run(_params(val_fraction=0.0, test_fraction=test_fraction))
    return json.loads(paths.PREPROCESS_REPORT.read_text())


@pytest.mark.parametrize(
    ("scale", "bright", "warned"), [(1, 0, True), (16, 0, False), (1, 3, True)]
)
def test_12_bit_scans_in_16_bit_files_are_said_to_read_nearly_black(
    workdir: Path, caplog: pytest.LogCaptureFixture, scale: int, bright: int, warned: bool
) -> None:
    # An X-ray export: 12-bit values (0-4095) in 16-bit PNGs read as levels 0-15 of 255; the
    # same scans stretched to 16 bits are fine. A few ordinary photos among them change nothing.
    rng = np.random.default_rng(0)
    scans = [rng.integers(0, 4096, (30, 30)).astype(np.uint16) * scale for _ in range(12)]
    scans += [np.full((30, 30), 200, np.uint8)] * bright
    report = _preprocessed_pngs(workdir / paths.RAW_DIR / "scans.zip", scans, 0.3)
    dark = [w for w in report["warnings"] if "nearly black" in w]
    assert bool(dark) == warned, report["warnings"]
    if warned:
        train = report["images"]["train"]
        said = (
            rf"(\d+) of the {train} train images are nearly black as the model sees them \(resized"
            r" to 24x24, their brightest pixel below"
        )
        found = re.match(said, dark[0])
        assert found and train - bright <= int(found[1]) <= train, dark[0]
        assert "stretch such files to the full 16 bits" in dark[0] and dark[0] in caplog.text
        # Files fixed where they are: DVC does not watch them, the hint says how to re-read them.
        assert dark[0].endswith(preprocess.FIXED_SOURCE)


def test_icloud_placeholders_in_a_zip_are_named_as_photos_not_downloaded(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A folder zipped on a Mac with photos iCloud keeps online: their placeholders are hidden
    # files, and a class folder of them alone is one that holds no files.
    files = _seeds("photos", ("ants", "bees"), 6)
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "a") as z:
        z.writestr("photos/bees/.IMG_9.HEIC.icloud", b"bplist00")
        z.mkdir("photos/wasps")  # as `zip -r` lists a folder
        z.writestr("photos/wasps/.IMG_1.JPG.icloud", b"bplist00")
    preprocess.run(_params(val_fraction=0.0))
    said = caplog.text
    placeholders = said.index("photos.zip: left out 2 files, iCloud Drive's placeholders")
    assert (
        "(photos/bees/.IMG_9.HEIC.icloud, photos/wasps/.IMG_1.JPG.icloud, of photos/bees/" in said
    )
    empty = said.index("1 folder holds no files, so no class or split comes of it: photos/wasps/")
    assert placeholders < empty  # said first: it explains the empty folder
    # Fixed at the same path, the source is packed anew only by the download stage.
    assert (
        "Download Now on the folder) and zip the folder again, then `uv run dvc repro -f -s" in said
    )


def test_a_layout_error_says_how_a_fixed_source_is_read_again(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", _seeds("photos", ("ants",), 6))
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params())
    said = str(err.value)
    assert said.startswith("found only one class folder, 'ants'")
    assert said.endswith(preprocess.FIXED_SOURCE)
    assert "`uv run dvc repro -f -s download` in the project's folder" in said
    assert "a queued run: queue it again with -f" in said
    # So does every error a fix of the source mends: a file that does not decode...
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", _seeds("photos", ("ants", "bees"), 6))
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "a") as z:
        z.writestr("photos/bees/cut.jpg", b"\xff\xd8\xff")
    with pytest.raises(preprocess.BadImagesError) as err:
        preprocess.run(_params(on_bad_image="fail"))
    assert str(err.value).endswith(preprocess.FIXED_SOURCE)
    # ... but not a param that does not fit the source (set back, nothing to re-read).
    split = {
        "photos/train/ants/1.jpg": 1,
        "photos/train/bees/2.jpg": 2,
        "photos/test/ants/3.jpg": 3,
    }
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", split)
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params(test_fraction=0.2))
    assert "set data.test_fraction back to null" in str(err.value)
    assert "dvc repro" not in str(err.value)
    # Nor fractions that leave no training images, of a flat folder or of train/ alone.
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", _seeds("photos", ("ants", "bees"), 6))
    with pytest.raises(split_plan.LayoutParamError) as err:
        preprocess.run(_params(test_fraction=0.9, val_fraction=0.99))
    assert str(err.value).endswith("leave no training images out of 12; lower them")
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", split)
    with pytest.raises(split_plan.LayoutParamError) as err:
        preprocess.run(_params(val_fraction=0.99))
    assert str(err.value).endswith("leaves no training images out of 2; lower it")
    # A source of DICOM scans alone says so.
    with pytest.raises(split_plan.DatasetLayoutError, match="DICOM scans are not read"):
        split_plan.plan_image_folder(["scans/normal/IM_0.dcm", "scans/DICOMDIR"], None, 0.1, 0)
    # So does one whose scans no name marks (a disc's IM_0000; a UID), by their first bytes.
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "w") as z:
        for cls in ("normal", "abnormal"):
            z.writestr(f"scans/{cls}/IM0000", bytes(128) + b"DICM")
            z.writestr(f"scans/{cls}/1.2.840.113619.2.55.3.{len(cls)}", bytes(128) + b"DICM")
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params())
    said = str(err.value)
    assert said.startswith("no image files found among the 4 files of the source"), said
    assert "(DICOM scans are not read: export them as PNG or TIFF" in said
    assert said.endswith(preprocess.FIXED_SOURCE)
    # Beside photos that train: the files left out are said to be scans too.
    files = _seeds("photos", ("ants", "bees"), 6)
    _noisy_zip(workdir / paths.RAW_DIR / "photos.zip", files)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "a") as z:
        z.writestr("photos/ants/IM0000", bytes(128) + b"DICM")
    with caplog.at_level(logging.WARNING):
        preprocess.run(_params())
    assert "ignoring 1 file" in caplog.text and "IM0000" in caplog.text
    assert "DICOM scans are not read" in caplog.text


@pytest.mark.parametrize(("width", "warned"), [(72, True), (70, False)])
def test_a_set_of_long_images_is_told_the_model_sees_their_centre_square(
    workdir: Path, caplog: pytest.LogCaptureFixture, width: int, warned: bool
) -> None:
    # Panoramas and phone screenshots: the centre square is half of each or less (72x36).
    rng = np.random.default_rng(0)
    shapes = [(36, width, 3)] * 10 + [(36, 36, 3)] * 2
    photos = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in shapes]
    report = _preprocessed_pngs(workdir / paths.RAW_DIR / "wide.zip", photos, 0.25)
    said = [w for w in report["warnings"] if "times as long as" in w]
    assert bool(said) == warned, report["warnings"]
    if warned:
        train = report["images"]["train"]
        assert re.match(rf"\d+ of the {train} train images are at least 2 times as long", said[0])
        assert "the model sees the centre square of each" in said[0] and said[0] in caplog.text
        assert said[0].endswith(preprocess.FIXED_SOURCE)


def test_a_train_split_left_empty_by_undecodable_files_names_them(workdir: Path) -> None:
    # Raising data.test_fraction, the advice for an empty test split, would empty train more.
    files = _seeds("photos", ("ants", "bees"), 10)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "photos.zip", "w") as z:
        for name, seed in files.items():
            where = split_plan.split_of(name.split("/", 1)[1], 0, 0.2, 0.1)
            z.writestr(name, b"not a jpeg" if where != "test" else _noisy(seed))
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params())
    said = str(err.value)
    train = sum(split_plan.split_of(n.split("/", 1)[1], 0, 0.2, 0.1) == "train" for n in files)
    assert said.startswith(f"no decodable image landed in the train split ({train} train "), said
    assert "undecodable: photos/ants/" in said and "fix or replace the undecodable files" in said
    assert "test_fraction" not in said and said.endswith(preprocess.FIXED_SOURCE)


def test_a_test_folder_of_undecodable_files_is_named_with_its_own_count(workdir: Path) -> None:
    # The split's own images, not the whole source's; test_fraction carves no test/ folder.
    files = _seeds("ds", ("ants", "bees"), 6)
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "split.zip", "w") as z:
        for name, seed in files.items():
            _, cls, leaf = name.split("/")
            z.writestr(f"ds/train/{cls}/{leaf}", _noisy(seed))
            z.writestr(f"ds/test/{cls}/{leaf}", b"not a jpeg")
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params())
    said = str(err.value)
    assert said.startswith("no decodable image landed in the test split (12 test images, 12 "), said
    assert "undecodable: ds/test/ants/" in said, said
    assert ": fix or replace the undecodable files, or add images" + preprocess.FIXED_SOURCE in said
    assert "test_fraction" not in said
    # A flat folder's test split is carved by data.test_fraction: raising it is a way too.
    (workdir / paths.RAW_DIR / "split.zip").unlink()
    with zipfile.ZipFile(workdir / paths.RAW_DIR / "flat.zip", "w") as z:
        for name, seed in files.items():
            where = split_plan.split_of(name.split("/", 1)[1], 0, 0.2, 0.1)
            z.writestr(name, b"not a jpeg" if where == "test" else _noisy(seed))
    with pytest.raises(split_plan.DatasetLayoutError) as err:
        preprocess.run(_params())
    said = str(err.value)
    test = sum(split_plan.split_of(n.split("/", 1)[1], 0, 0.2, 0.1) == "test" for n in files)
    assert f"({test} test images, {test} undecodable: ds/" in said, said
    assert "undecodable files, or add images, or raise data.test_fraction" in said
