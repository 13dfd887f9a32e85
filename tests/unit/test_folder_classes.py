"""Predict on photos sorted into folders named after classes: the accuracy line, the folder class
in the JSON and CSV, and the folders that name no class."""

from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import run_stage
from tests.tiny_onnx import write_tiny_onnx
from visionpipe import paths
from visionpipe.cli import main
from visionpipe.folder_classes import FolderClasses

# The tiny model's rule: class k wins on an image brightest in channel k (cat, dog, frog).
RED, GREEN, BLUE = (220, 10, 10), (10, 220, 10), (10, 10, 220)


def _photo(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), colour).save(path)
    return path


def _sorted_photos(root: Path) -> Path:
    """photos/ as a user sorts them: cat/ (two right, one a dog), Dog/ in another case, a
    misspelt cats/, one loose photo and one broken file in frog/."""
    photos = root / "photos"
    for name, colour in (("cat/1.png", RED), ("cat/2.png", RED), ("cat/3.png", GREEN)):
        _photo(photos / name, colour)
    for name, colour in (("Dog/1.png", GREEN), ("Dog/2.png", GREEN), ("cats/1.png", RED)):
        _photo(photos / name, colour)
    _photo(photos / "loose.png", BLUE)
    (photos / "frog").mkdir()
    (photos / "frog" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (photos / "frog" / "gone.png").symlink_to(root / "unplugged" / "1.png")
    return photos


def _accuracy_in(err: str) -> str:
    """The accuracy line of a predict's stderr (its stdout is the table: a line a file)."""
    lines = [line for line in err.splitlines() if line.startswith("accuracy on")]
    assert len(lines) == 1, err
    return lines[0]


def _accuracy_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert "accuracy" not in out, out
    return _accuracy_in(err)


def test_photos_in_class_folders_get_an_accuracy_line_and_their_folder_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    photos = _sorted_photos(tmp_path)
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    argv = ["predict", str(photos), "--model", str(model), "--json", str(out_json)]
    assert main([*argv, "--csv", str(out_csv)]) == 1  # the broken file and link
    assert _accuracy_line(capsys) == (
        "accuracy on the 5 images in folders named after a class: 80.0% (4/5); per class: "
        "cat 66.7% (2/3), dog 100.0% (2/2); not counted: 2 predicted images in no class folder"
    )
    assert (
        "folders named after no class of the model, not counted: cats/ (1 image), "
        "photos/ (1 image); its classes: cat, dog, frog" in caplog.text
    )
    records = {_rel(r["file"], photos): r for r in json.loads(out_json.read_text())}
    assert {name: r["folder_class"] for name, r in records.items()} == {
        "Dog/1.png": "dog",
        "Dog/2.png": "dog",
        "cat/1.png": "cat",
        "cat/2.png": "cat",
        "cat/3.png": "cat",
        "cats/1.png": None,
        "frog/cut.png": "frog",  # named, though it could not be predicted and is not counted
        "frog/gone.png": "frog",  # so is a link to a file that is gone
        "loose.png": None,
    }
    assert list(records["cat/3.png"]) == ["file", "top", "error", "folder_class"]
    with open(out_csv, encoding="utf-8", newline="") as f:
        rows = {_rel(r["file"], photos): r for r in csv.DictReader(f)}
    assert {name: r["folder_class"] or None for name, r in rows.items()} == {
        name: r["folder_class"] for name, r in records.items()
    }
    assert rows["cat/3.png"]["class_1"] == "dog"


def _rel(file: str, folder: Path) -> str:
    return Path(file).relative_to(folder).as_posix()


def test_a_file_named_by_itself_counts_by_the_folder_it_sits_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    _photo(tmp_path / "frog" / "1.png", BLUE)
    _photo(tmp_path / "frog" / "2.png", BLUE)
    _photo(tmp_path / "cat" / "1.png", BLUE)
    monkeypatch.chdir(tmp_path / "frog")
    assert main(["predict", "1.png", "../cat/../frog/2.png", "../cat/1.png", "--model", model]) == 0
    last = _accuracy_line(capsys)
    assert last.startswith("accuracy on the 3 images in folders named after a class: 66.7% (2/3);")
    assert "per class: cat 0.0% (0/1), frog 100.0% (2/2)" in last
    # With --topk below the class count, the share whose class is among their k first too.
    args = ["predict", "1.png", "../cat/1.png", "--model", model, "--json", "p.json"]
    assert main([*args, "--topk", "2"]) == 0
    frog, cat = json.loads(Path("p.json").read_text())
    assert frog["top"][0]["class"] == "frog" and cat["top"][0]["class"] != "cat"
    among = [cat["top"][1]["class"] == "cat", True]  # frog's is its first
    assert _accuracy_line(capsys).startswith(
        "accuracy on the 2 images in folders named after a class: 50.0% (1/2), top-2 "
        f"{sum(among) / 2:.1%} ({sum(among)}/2);"
    )


def test_photos_filed_by_year_below_a_class_folder_count_up_to_the_folder_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    # Under frog/ (a folder above the one named: not a class of these photos), cat/2019/ and
    # dog/Trip to Rome/2024/ are filed by date and place, as training counts them to their class.
    photos = tmp_path / "frog" / "photos"
    _photo(photos / "cat" / "2019" / "1.png", RED)
    _photo(photos / "dog" / "Trip to Rome" / "2024" / "1.png", RED)
    _photo(photos / "unsorted" / "1.png", BLUE)
    monkeypatch.chdir(tmp_path)
    for spec in (str(photos), "frog/photos", "frog/photos/**/*.png", f"{photos}/*/**/*.png"):
        assert main(["predict", spec, "--model", model, "--json", "p.json"]) == 0, spec
        records = json.loads((tmp_path / "p.json").read_text())
        labels = {_rel(str(tmp_path / r["file"]), photos): r["folder_class"] for r in records}
        assert labels == {
            "cat/2019/1.png": "cat",
            "dog/Trip to Rome/2024/1.png": "dog",
            "unsorted/1.png": None,
        }, spec
        assert _accuracy_line(capsys).startswith(
            "accuracy on the 2 images in folders named after a class: 50.0% (1/2)"
        )
    # Named by itself, a file counts by the folder it sits in alone, as a glob in it does.
    monkeypatch.chdir(photos / "cat" / "2019")
    for spec in ("1.png", "*.png"):
        assert main(["predict", spec, "--model", model, "--json", "p.json"]) == 0
        assert [r["folder_class"] for r in json.loads(Path("p.json").read_text())] == [None]


def test_json_to_stdout_stays_json_and_no_class_folder_means_no_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    photo = _photo(tmp_path / "dog" / "1.png", GREEN)
    assert main(["predict", str(photo), "--model", model, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [
        {
            "file": str(photo),
            "top": json.loads(out)[0]["top"],
            "error": None,
            "folder_class": "dog",
        }
    ]
    assert "accuracy on the 1 image in folders named after a class: 100.0% (1/1)" in err
    assert main(["predict", str(photo), "--model", model, "--csv", "-"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(",,dog")
    elsewhere = _photo(tmp_path / "photos" / "1.png", GREEN)
    assert main(["predict", str(elsewhere), "--model", model]) == 0
    out, err = capsys.readouterr()
    assert "accuracy" not in out + err and "near misses" not in err


def test_folders_that_miss_every_class_name_by_a_plural_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Sorted as README's `photos/cats/` example, for a model whose classes are `cat`, `dog`:
    # without a folder that counts, the line of uncounted folders never came.
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    for name in ("cats/1.png", "Dogs/2023/1.png", "2024/1.png"):
        _photo(tmp_path / "sorted" / name, GREEN)
    (tmp_path / "sorted" / "frog").mkdir()
    (tmp_path / "sorted" / "frog" / "cut.png").write_bytes(b"\x89PNG")  # read: no count, no miss
    assert main(["predict", str(tmp_path / "sorted"), "--model", model]) == 1
    assert (
        "no photo is in a folder named after one of the model's classes, so no accuracy line;"
        " near misses: Dogs/ for 'dog', cats/ for 'cat': rename the folders" in caplog.text
    )
    assert "2024" not in caplog.text and "frog/ for" not in caplog.text
    # Plurals as English makes them; a word that ends so is no plural of another class.
    from visionpipe.folder_classes import near_misses

    folders = ["buses", "Frogs", "canes", "butterflies", "potatoes", "knives", "wolves"]
    classes = ["bus", "frog", "can", "butterfly", "potato", "knife", "wolf"]
    said = near_misses([f"a/{f}/1.png" for f in folders], classes)
    assert said is not None and "Frogs/ for 'frog', buses/ for 'bus', butterflies/ for" in said
    assert "canes" not in said and "potatoes/ for 'potato' and 1 more" in said  # wolves/
    assert near_misses(["a/toes/1.png", "a/does/2.png"], ["to", "do"]) is None
    # The other way: hymenoptera's classes are plural, a user's folders singular.
    said = near_misses(["new/ant/1.jpg", "new/bee/2.jpg"], ["ants", "bees"])
    assert said is not None and "ant/ for 'ants', bee/ for 'bees'" in said
    # Only where every class is a plural: 'news' and 'glasses' among others, or a split's
    # folder, are no near miss.
    classes = ["news", "glasses", "trains", "cat"]
    assert near_misses([f"p/{f}/1.jpg" for f in ("new", "glass", "train")], classes) is None
    assert near_misses(["p/test/1.jpg"], ["tests"]) is None
    # Words that end in s with no plural in them: no singular cut from them (bu/ for 'bus').
    classes = ["bus", "glass", "axis", "gas"]
    folders = ("bu", "glas", "axi", "ga")
    assert near_misses([f"p/{f}/1.jpg" for f in folders], classes) is None
    said = near_misses(["p/buses/1.jpg", "p/glasses/2.jpg"], classes)
    assert said is not None and "buses/ for 'bus', glasses/ for 'glass'" in said
    # A sub-folder's photo counts for the class folder above it, up to the folder named.
    tops = {"p/cats/2024/1.jpg": "p"}
    said = near_misses(list(tops), ["cat", "dog"], tops)
    assert said is not None and "cats/ for 'cat'" in said
    assert near_misses(["cats/2024/1.jpg"], ["cat"]) is None  # named alone: its folder only


def test_a_hundred_classes_show_the_lowest_and_highest_five(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = [f"class{i:02d}" for i in range(100)]
    model = str(write_tiny_onnx(tmp_path / "model.onnx", classes))
    for i, name in enumerate(classes):
        _photo(tmp_path / "test" / name / "1.png", (RED, GREEN, BLUE)[i % 3])
    assert main(["predict", str(tmp_path / "test"), "--model", model]) == 0
    last = _accuracy_line(capsys)
    assert last.startswith(
        "accuracy on the 100 images in folders named after a class: 3.0% (3/100)"
    )
    assert "; per class, the 5 lowest of 100: class00 0.0% (0/1), class01 0.0% (0/1)," in last
    assert "; the 5 highest: class99 100.0% (1/1), class98 100.0% (1/1), class97 100.0%" in last
    assert len(last) < 400


def test_a_folder_matches_its_class_in_any_case_unless_two_classes_share_that_name() -> None:
    lookup = FolderClasses(["A", "a", "Cat", "café"])
    assert lookup.of("x/A/1.png") == "A" and lookup.of("x/a/1.png") == "a"
    assert lookup.of("x/CAT/1.png") == lookup.of("x/cat/1.png") == "Cat"
    assert lookup.of(f"x/{unicodedata.normalize('NFD', 'Café')}/1.png") == "café"  # a Mac's name
    assert lookup.of("x/cats/1.png") is None and lookup.of("1.png") is None


def test_the_stage_scores_predict_inputs_sorted_by_class_and_not_its_own_samples(
    tmp_path: Path,
) -> None:
    """predict.inputs naming photos sorted by class gets the accuracy line; data/samples, which
    the stage always predicts (one image per class in one folder), is neither counted nor named
    as a folder of no class."""
    write_tiny_onnx(tmp_path / paths.ONNX_MODEL)
    for name, colour in (("00_cat.png", RED), ("01_dog.png", GREEN), ("02_frog.png", BLUE)):
        _photo(tmp_path / paths.SAMPLES_DIR / name, colour)
    for name, colour in (("cat/1.png", RED), ("cat/2.png", GREEN), ("dog/1.png", GREEN)):
        _photo(tmp_path / "photos" / name, colour)
    (tmp_path / "params.yaml").write_text("predict:\n  inputs: [photos]\n")
    proc = run_stage("predict", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" not in proc.stdout
    assert _accuracy_in(proc.stderr) == (
        "accuracy on the 3 images in folders named after a class: 66.7% (2/3); per class: "
        "cat 50.0% (1/2), dog 100.0% (1/1)"
    )
    assert "not counted" not in proc.stderr
    records = json.loads((tmp_path / paths.PREDICTIONS).read_text())
    assert [(Path(r["file"]).name, r["folder_class"]) for r in records] == [
        ("00_cat.png", None),
        ("01_dog.png", None),
        ("02_frog.png", None),
        ("1.png", "cat"),
        ("2.png", "cat"),
        ("1.png", "dog"),
    ]


def test_a_photo_named_twice_counts_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    _photo(photos / "cat" / "1.png", RED)
    _photo(photos / "dog" / "1.png", RED)
    specs = [str(photos), str(photos / "cat"), str(photos / "cat" / "1.png")]
    assert main(["predict", *specs, "--model", str(model)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # each photo once, where first named (a warning says so)
    assert _accuracy_in(err) == (
        "accuracy on the 2 images in folders named after a class: 50.0% (1/2); per class: "
        "cat 100.0% (1/1), dog 0.0% (0/1)"
    )


def test_a_test_set_of_links_to_class_folders_is_predicted_and_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`testset/cat -> /data/cats`: the links are followed, each folder once (`cat/again` and
    `dog/up` lead back up, which would loop), and a photo's class is the name of the link it
    sits in."""
    model = write_tiny_onnx(tmp_path / "model.onnx")
    _photo(tmp_path / "data" / "cats" / "1.png", RED)
    _photo(tmp_path / "data" / "dogs" / "1.png", RED)
    testset = tmp_path / "testset"
    testset.mkdir()
    (testset / "cat").symlink_to(tmp_path / "data" / "cats")
    (testset / "dog").symlink_to(tmp_path / "data" / "dogs")
    (testset / "cat" / "again").symlink_to(testset)
    (testset / "dog" / "up").symlink_to(tmp_path)  # above the test set: it would loop too
    (testset / "kitten").symlink_to(tmp_path / "data" / "cats")  # the cats a second time
    out_json = tmp_path / "p.json"
    assert main(["predict", str(testset), "--model", str(model), "--json", str(out_json)]) == 0
    assert _accuracy_line(capsys) == (
        "accuracy on the 2 images in folders named after a class: 50.0% (1/2); per class: "
        "cat 100.0% (1/1), dog 0.0% (0/1)"
    )
    records = json.loads(out_json.read_text())
    assert [(_rel(r["file"], testset), r["folder_class"]) for r in records] == [
        ("cat/1.png", "cat"),
        ("dog/1.png", "dog"),
    ]
