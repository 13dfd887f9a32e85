"""The files, folders and globs `visionpipe predict` is given, expanded to the photos preprocess
would read: system files left out, broken links, pipes and looping links named, not followed."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tests.tiny_onnx import write_tiny_onnx
from visionpipe.cli import main
from visionpipe.inputs import collect_inputs


def test_a_folder_gives_the_photos_preprocess_would_read_not_mac_or_nas_leftovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / ".photos"  # a hidden folder named on purpose is still searched
    for rel in ["cats/a.jpg", "cats/b.JFIF", "._a.jpg", "cats/._a.jpg", ".ipynb_checkpoints/c.png",
                "cats/@eaDir/a.jpg/SYNOFILE_THUMB_M.jpg", "cats/Thumbs.db",
                "cats/IMG_1.MOV"]:  # fmt: skip
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    inputs = collect_inputs([str(folder)])
    assert [p.relative_to(folder).as_posix() for p in inputs.files] == ["cats/a.jpg", "cats/b.JFIF"]
    assert inputs.errors == []
    # What gets no prediction is counted, as preprocess lists what it leaves out.
    assert f"{folder}: left out 1 file not named as an image (cats/IMG_1.MOV)" in caplog.text
    assert "DICOM" not in caplog.text
    (folder / "cats/scan.DCM").write_bytes(bytes(128) + b"DICM")
    collect_inputs([str(folder / "cats")])
    assert (
        "(IMG_1.MOV, scan.DCM): a photo needs its format's suffix (.jpg, .png, ...); DICOM "
        "scans are not read: export them as PNG or TIFF, stretched to the full 16 bits"
    ) in caplog.text
    # A disc's files have no suffix: told by their first bytes.
    (folder / "cats/scan.DCM").unlink()
    (folder / "cats/IM_0001").write_bytes(bytes(128) + b"DICM")
    caplog.clear()
    collect_inputs([str(folder / "cats")])
    assert "left out 2 files not named as an image" in caplog.text
    assert "IM_0001" in caplog.text and "; DICOM scans" in caplog.text
    # A PACS export names each by its instance UID, whose "suffix" is digits.
    (folder / "cats/IM_0001").rename(folder / "cats/1.2.840.113619.2.55.3.604688119.969.320")
    caplog.clear()
    collect_inputs([str(folder / "cats")])
    assert "604688119.969.320" in caplog.text and "; DICOM scans" in caplog.text


def test_system_files_a_shell_s_star_names_are_passed_over_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `visionpipe predict *` in a folder copied from Windows or unzipped from a Mac: the shell
    # names Explorer's and Finder's files as a folder's walk would never give them.
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (20, 20), "red").save("a.jpg")
    Image.new("RGB", (20, 20), "red").save(".b.jpg")  # a hidden photo named: asked for
    for name in ("Thumbs.db", "desktop.ini", ".DS_Store", "._a.jpg", "__MACOSX/._a.jpg"):
        Path(name).parent.mkdir(exist_ok=True)
        Path(name).write_bytes(b"\0\5\26\7")
    Path("@eaDir/a.jpg").mkdir(parents=True)  # a Synology share's thumbnails of each photo
    Image.new("RGB", (20, 20), "red").save("@eaDir/a.jpg/SYNOPHOTO_THUMB_M.jpg")
    named = ["Thumbs.db", "__MACOSX", "@eaDir", "a.jpg", "desktop.ini", ".DS_Store", "._a.jpg"]
    found = collect_inputs([*named, ".b.jpg"])
    assert [p.name for p in found.files] == ["a.jpg", ".b.jpg"] and found.errors == []
    assert (
        "passed over 6 system files among the inputs: Thumbs.db, __MACOSX, @eaDir, desktop.ini, "
        ".DS_Store and 1 more"
    ) in caplog.text
    # Named alone, they are what was asked for: each an error, not an empty success.
    alone = collect_inputs(["Thumbs.db", "__MACOSX"])
    assert alone.files == [] and [e[0] for e in alone.errors] == ["Thumbs.db", "__MACOSX"]
    assert alone.in_order([], ["t", "m"]) == ["t", "m"]
    assert [why for _, why in alone.errors] == [
        "a system file (Explorer's, Finder's or a NAS's), no photo",
        "a system folder (Explorer's, Finder's or a NAS's) that holds no image files",
    ]
    # A system folder of photos named alone (a NAS's recycle bin): its photos are asked for.
    Path("#recycle").mkdir()
    Image.new("RGB", (20, 20), "red").save("#recycle/old.jpg")
    binned = collect_inputs(["#recycle"])
    assert [str(p) for p in binned.files] == ["#recycle/old.jpg"] and binned.errors == []
    twice = collect_inputs(["#recycle", "./#recycle/"])  # each photo once, as any folder's
    assert [str(p) for p in twice.files] == ["#recycle/old.jpg"] and twice.errors == []
    twice = collect_inputs(["Thumbs.db", "./Thumbs.db", "__MACOSX", "__MACOSX/"])  # each error once
    assert [name for name, _ in twice.errors] == ["Thumbs.db", "__MACOSX"], twice.errors
    assert main(["predict", "Thumbs.db", "--model", str(write_tiny_onnx(tmp_path / "m.onnx"))])


def test_a_broken_or_looping_symlink_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to("deleted.jpg")
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    inputs = collect_inputs([str(tmp_path / n) for n in ("gone.jpg", "a.jpg", "none.jpg")])
    assert [why for _, why in inputs.errors] == [
        "broken symlink: 'deleted.jpg' does not exist; fix or remove the link",
        "symlink to 'b.jpg' loops back on itself",
        "no such file or directory",
    ]


def test_a_glob_leaves_out_what_a_folder_argument_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("photos/cats/a.jpg", "photos/@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), "red").save(name)
    by_folder = collect_inputs(["photos"]).files
    for spec in ("photos/**/*.jpg", f"{tmp_path}/photos/**/*.jpg", "**/*.jpg"):
        found = collect_inputs([spec]).files
        assert [p.name for p in found] == [p.name for p in by_folder] == ["a.jpg"], spec
    # Named in the literal part of the glob, the system folder is what the user asked for.
    assert [p.name for p in collect_inputs(["photos/@eaDir/*/*.jpg"]).files] == [
        "SYNOPHOTO_THUMB_XL.jpg"
    ]


def test_a_folder_s_or_glob_s_broken_photo_link_is_named_not_passed_over(tmp_path: Path) -> None:
    # Photos linked from a drive that is not mounted: each gets its error line, as the same link
    # given by name does, so the predictions plus the errors account for every photo.
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "here.png")
    (folder / "away.jpg").symlink_to(tmp_path / "usb" / "away.jpg")
    (folder / "notes.txt").symlink_to(tmp_path / "usb" / "notes.txt")  # not a photo: no line
    gone = "broken symlink: '{}' does not exist; fix or remove the link"
    for spec in (str(folder), str(folder / "*")):
        inputs = collect_inputs([spec])
        assert [p.name for p in inputs.files] == ["here.png"], spec
        assert inputs.errors == [
            (str(folder / "away.jpg"), gone.format(tmp_path / "usb" / "away.jpg"))
        ], spec


def test_a_folder_or_glob_of_broken_links_only_names_each_and_nothing_more(
    tmp_path: Path,
) -> None:
    # Two lines for two photos on a drive not mounted, not a third saying the folder or glob
    # holds nothing (which would count as another failed input).
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).symlink_to(tmp_path / "usb" / name)
    for spec in (str(folder), str(folder / "*.jpg")):
        inputs = collect_inputs([spec])
        assert inputs.files == [] and [e[0] for e in inputs.errors] == [
            str(folder / "a.jpg"),
            str(folder / "b.jpg"),
        ], (spec, inputs.errors)


def test_a_folder_two_links_lead_into_is_walked_once(tmp_path: Path) -> None:
    # cats/ext -> elsewhere/extra, and dogs/up -> elsewhere, which holds extra/ too: its photo
    # is one photo, predicted once, as the first link found it.
    _photo(tmp_path / "elsewhere" / "extra" / "o.jpg")
    _photo(tmp_path / "photos" / "cats" / "c.jpg")
    (tmp_path / "photos" / "dogs").mkdir()
    (tmp_path / "photos" / "cats" / "ext").symlink_to(tmp_path / "elsewhere" / "extra")
    (tmp_path / "photos" / "dogs" / "up").symlink_to(tmp_path / "elsewhere")
    files = collect_inputs([str(tmp_path / "photos")]).files
    rel = [p.relative_to(tmp_path / "photos").as_posix() for p in files]
    assert rel == ["cats/c.jpg", "cats/ext/o.jpg"], rel
    # A link to a folder inside, sorted before the folder itself, leaves that folder walked.
    _photo(tmp_path / "inside" / "z" / "z.jpg")
    (tmp_path / "inside" / "a").symlink_to(tmp_path / "inside" / "z")
    assert [p.name for p in collect_inputs([str(tmp_path / "inside")]).files] == ["z.jpg"]


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_a_glob_through_a_link_back_up_takes_each_photo_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `**` follows links to folders: one to `..` (or to the folder itself) would repeat every
    # photo about 40 times, each a level deeper, as the kernel's limit on links allows.
    monkeypatch.chdir(tmp_path)
    for name in ("photos/cats/a.jpg", "photos/dogs/b.jpg", "elsewhere/c.jpg"):
        _photo(tmp_path / name)
    (tmp_path / "photos" / "dogs" / "up").symlink_to("..")
    (tmp_path / "photos" / "again").symlink_to(tmp_path / "photos")
    (tmp_path / "photos" / "more").symlink_to(tmp_path / "elsewhere")  # outside: followed
    expected = ["cats/a.jpg", "dogs/b.jpg", "more/c.jpg"]
    for spec in ("photos/**/*.jpg", f"{tmp_path}/photos/**/*.jpg", "photos"):
        found = collect_inputs([spec]).files
        assert [(tmp_path / p).relative_to(tmp_path / "photos").as_posix() for p in found] == (
            expected
        ), spec
    monkeypatch.chdir(tmp_path / "photos")
    found = collect_inputs(["**/*.jpg"]).files
    assert [p.as_posix() for p in found] == expected


def test_a_quoted_glob_of_folders_predicts_the_photos_in_them_as_the_shell_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    for name in ("cat/a.jpg", "cat/2019/b.jpg", "dog/c.jpg", "loose.jpg"):
        _photo(photos / name)
    (photos / "videos").mkdir()
    (photos / "videos" / "clip.mov").write_bytes(b"x")
    for spec in (f"{photos}/*", f"{photos}/*/"):
        inputs = collect_inputs([spec])
        names = [p.relative_to(photos).as_posix() for p in inputs.files]
        loose = [] if spec.endswith("/") else ["loose.jpg"]  # `*/` matches folders alone
        assert names == ["cat/2019/b.jpg", "cat/a.jpg", "dog/c.jpg", *loose], spec
        assert inputs.errors == [], spec
        assert inputs.tops[str(photos / "cat" / "2019" / "b.jpg")] == str(photos), spec
    assert collect_inputs([f"{photos}/v*"]).errors == [
        (f"{photos}/v*", "glob matched no image files")
    ]
    assert collect_inputs([f"{photos}/x*"]).errors == [(f"{photos}/x*", "glob matched no files")]
    model = str(write_tiny_onnx(tmp_path / "model.onnx", ["cat", "dog"]))
    assert main(["predict", f"{photos}/*", "--model", model]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4 and "accuracy" not in out  # the table: a line a file
    assert "accuracy on the 3 images in folders named after a class:" in err


def test_a_pipe_named_like_a_photo_is_named_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reading a named pipe would wait for a writer forever.
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg")
    os.mkfifo(photos / "x.jpg")
    os.mkfifo(photos / ".hidden.jpg")  # hidden: left out without a word, as a .DS_Store
    why = "not a regular file but a named pipe (FIFO), which holds no image; give the photo's file"
    for spec in (str(photos), f"{photos}/*.jpg"):
        inputs = collect_inputs([spec])
        assert [p.name for p in inputs.files] == ["a.jpg"], spec
        assert inputs.errors == [(str(photos / "x.jpg"), why)], spec
    assert collect_inputs([str(photos / "x.jpg")]).errors == [(str(photos / "x.jpg"), why)]
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    assert main(["predict", str(photos / "x.jpg"), "--model", model]) == 1
    assert f"x.jpg: ERROR {why}" in capsys.readouterr().out


def test_a_link_between_two_folders_a_glob_matches_is_not_followed(tmp_path: Path) -> None:
    # `photos/*` matches cat/ and dog/; dog/birds -> ../bird would give every bird photo a
    # second time, counted as a dog. Named as folders, `photos` takes each photo once; so does
    # the glob.
    photos = tmp_path / "photos"
    for name in ("bird/a.jpg", "dog/b.jpg"):
        _photo(photos / name)
    (photos / "dog" / "birds").symlink_to(photos / "bird")
    for spec in (str(photos), f"{photos}/*", f"{photos}/*/", f"{photos}/**"):
        found = collect_inputs([spec]).files
        assert [p.relative_to(photos).as_posix() for p in found] == ["bird/a.jpg", "dog/b.jpg"]


def test_predictions_come_in_the_order_the_files_were_named(tmp_path: Path) -> None:
    # A missing path among photos: its ERROR line where it was named, not first.
    for name in ("a.jpg", "folder/b.jpg", "folder/c.jpg"):
        _photo(tmp_path / name)
    (tmp_path / "folder" / "d.jpg").symlink_to("gone.jpg")
    names = ["a.jpg", "gone.jpg", "folder", "a.jpg"]
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    out = tmp_path / "out.json"
    specs = [str(tmp_path / n) for n in names]
    assert main(["predict", *specs, "--model", model, "--json", str(out)]) == 1
    got = [(Path(p["file"]).relative_to(tmp_path).as_posix(), bool(p["error"]))
           for p in json.loads(out.read_text())]  # fmt: skip
    assert got == [
        ("a.jpg", False),
        ("gone.jpg", True),
        ("folder/b.jpg", False),
        ("folder/c.jpg", False),
        ("folder/d.jpg", True),  # a folder's unusable files after its photos
    ]  # a.jpg named again: predicted where first named


def test_a_photo_several_arguments_name_is_predicted_once_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("photos/cats/a.jpg", "photos/cats/b.jpg", "photos/dogs/c.jpg"):
        _photo(tmp_path / name)
    specs = ["photos/cats/b.jpg", "photos", "photos/*/*.jpg", "./photos/cats/a.jpg"]
    found = collect_inputs(specs)
    assert [p.as_posix() for p in found.files] == [
        "photos/cats/b.jpg",
        "photos/cats/a.jpg",
        "photos/dogs/c.jpg",
    ]
    assert not found.errors
    repeated = "photos/cats/b.jpg, photos/cats/a.jpg, photos/dogs/c.jpg"
    assert f"3 files named more than once, each predicted once: {repeated}\n" in caplog.text


def test_a_missing_file_or_a_photo_named_twice_by_other_paths_comes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photos" / "cat" / "0.jpg")
    (tmp_path / "photos" / "cat" / "gone.jpg").symlink_to("nowhere.jpg")
    (tmp_path / "alias").symlink_to("photos")  # a link to the folder: the same photos
    (tmp_path / "photos" / "cat" / "l.jpg").symlink_to("0.jpg")  # a name of its own
    specs = ["nope.jpg", "photos/../photos/cat/0.jpg", "photos", "alias/cat", "nope.jpg"]
    found = collect_inputs(specs)
    assert [p.as_posix() for p in found.files] == ["photos/../photos/cat/0.jpg", "photos/cat/l.jpg"]
    assert [file for file, _ in found.errors] == ["nope.jpg", "photos/cat/gone.jpg"]
    assert (
        "4 files named more than once, each predicted once: photos/../photos/cat/0.jpg,"
        " photos/cat/l.jpg, photos/cat/gone.jpg, nope.jpg\n"
    ) in caplog.text
    # Across calls too: the predict stage's samples, then predict.inputs naming them again.
    seen: dict[Path, str] = {}
    collect_inputs(["photos/cat/0.jpg"], seen)
    assert collect_inputs(["photos"], seen).files == [Path("photos/cat/l.jpg")]


def test_an_empty_argument_is_an_error_not_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `predict "$PHOTO"` with PHOTO unset: as a path "" is ".", every photo below here.
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "a.jpg")
    found = collect_inputs(["", "a.jpg"])
    assert found.errors == [("", "an empty name: give a file, folder or glob")]
    assert [p.name for p in found.files] == ["a.jpg"]
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    for flag in ("--json", "--csv", "--grid", "--model"):
        with pytest.raises(SystemExit) as exc:
            main(["predict", "a.jpg", "--model", model, flag, ""])
        assert exc.value.code == 2
        assert f"argument {flag}: an empty name: give a file name" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "model.onnx"]


def test_a_windows_style_path_names_the_path_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `.\cats\a.jpg` from a Windows habit: on Linux and macOS one file name with backslashes.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.jpg").write_bytes(b"x")
    found = collect_inputs(
        [
            *(".\\cats\\a.jpg", "dogs\\b.jpg", ".\\cats\\*.jpg", "C:\\Users\\me\\dog.png"),
            *("\\\\?\\C:\\x\\dog.png", "\\\\?\\UNC\\nas\\share\\dog.png"),  # Win32's long form
            *("C:\\pics\\*.jpg", "D:/pics/*.jpg"),  # globs of a drive's
        ]
    )
    assert found.errors == [
        (
            ".\\cats\\a.jpg",
            "no such file or directory; this system separates folders with /: ./cats/a.jpg",
        ),
        ("dogs\\b.jpg", "no such file or directory"),
        (
            ".\\cats\\*.jpg",
            "glob matched no files; this system separates folders with /: ./cats/*.jpg",
        ),
        (
            "C:\\Users\\me\\dog.png",
            "no such file or directory: a Windows path; here, write /mnt/c/Users/me/dog.png",
        ),
        (
            "\\\\?\\C:\\x\\dog.png",
            "no such file or directory: a Windows path; here, write /mnt/c/x/dog.png",
        ),
        (
            "\\\\?\\UNC\\nas\\share\\dog.png",
            "no such file or directory: a Windows path; here, write its path on this machine"
            " (where the share is mounted)",
        ),
        ("C:\\pics\\*.jpg", "glob matched no files: a Windows path; here, write /mnt/c/pics/*.jpg"),
        ("D:/pics/*.jpg", "glob matched no files: a Windows path; here, write /mnt/d/pics/*.jpg"),
    ]


def test_a_folder_of_icloud_placeholders_says_its_photos_are_not_downloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        (tmp_path / f".IMG_{i}.HEIC.icloud").write_bytes(b"bplist00")
    assert collect_inputs([str(tmp_path)]).errors == [
        (
            str(tmp_path),
            "folder holds no image files, but 3 iCloud Drive placeholders of photos not"
            " downloaded: download them (Finder's Download Now on the folder) and copy the"
            " folder again",
        )
    ]
    assert "placeholders of photos not downloaded" not in caplog.text  # said once, above
    # Beside downloaded photos, the ones still online are named too.
    (tmp_path / "2024").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "IMG_9.jpg")
    (tmp_path / "2024" / ".IMG_5.JPG.icloud").write_bytes(b"bplist00")
    inputs = collect_inputs([str(tmp_path)])
    assert inputs.errors == [] and [p.name for p in inputs.files] == ["IMG_9.jpg"]
    # A glob of the photos matches their placeholders only; a placeholder named is one.
    inputs = collect_inputs([str(tmp_path / "IMG_*.HEIC"), str(tmp_path / ".IMG_0.HEIC.icloud")])
    assert inputs.errors == [
        (
            str(tmp_path / "IMG_*.HEIC"),
            "glob matched no files, but 3 iCloud Drive placeholders of photos not downloaded:"
            " download them (Finder's Download Now on the folder)",
        ),
        (
            str(tmp_path / ".IMG_0.HEIC.icloud"),
            "iCloud Drive's placeholder of IMG_0.HEIC, not downloaded: download it (Finder's"
            " Download Now) and give the photo",
        ),
    ]
    assert (
        f"{tmp_path}: 4 photos not predicted, iCloud Drive's placeholders of photos not"
        " downloaded (IMG_0.HEIC, IMG_1.HEIC, IMG_2.HEIC and 1 more): download them"
    ) in caplog.text
    # A glob that matches photos beside placeholders of others says so too.
    (tmp_path / "IMG_7.HEIC").write_bytes(b"heic")  # named: not read to be found
    caplog.clear()
    assert [p.name for p in collect_inputs([str(tmp_path / "IMG_*.HEIC")]).files] == ["IMG_7.HEIC"]
    assert (
        f"{tmp_path / 'IMG_*.HEIC'}: 1 photo beside 3 iCloud Drive placeholders of photos not"
        " downloaded: download them"
    ) in caplog.text
    (tmp_path / "IMG_7.HEIC").unlink()
    # A glob whose folders are wildcards too (`**/`, `*/`) counts the placeholders they hold,
    # past a folder of many files (only folders count towards the few hundred looked in).
    for i in range(600):
        (tmp_path / "2024" / f"{i:03d}.txt").write_bytes(b"")
    for spec in ("**/IMG_*.JPG", "*/IMG_*.JPG"):
        (error,) = collect_inputs([str(tmp_path / spec)]).errors
        assert error[1].startswith("glob matched no files, but 1 iCloud Drive placeholder"), spec


def test_names_a_mac_wrote_decomposed_are_found_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder copied from a Mac: "café/été.jpg" in NFD on disk, typed in NFC, as macOS finds it.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / unicodedata.normalize("NFD", "caf\u00e9")
    folder.mkdir()
    (folder / unicodedata.normalize("NFD", "\u00e9t\u00e9.jpg")).write_bytes(b"x")
    (folder / "b.jpg").write_bytes(b"x")
    typed = ["caf\u00e9/\u00e9t\u00e9.jpg", "caf\u00e9/*.jpg", str(tmp_path / "caf\u00e9")]
    for spec in typed:
        found = collect_inputs([spec])
        assert not found.errors, (spec, found.errors)
        assert {p.resolve() for p in found.files} <= set(folder.resolve().iterdir()), spec
    assert len(collect_inputs(typed[1:2]).files) == 2
    assert collect_inputs(["caf\u00e9/x.jpg"]).errors  # in no form there
    # An output named there goes into that folder, not into a second one looking the same.
    Image.new("RGB", (8, 8), "red").save(folder / "b.jpg", "JPEG")
    model = str(write_tiny_onnx(tmp_path / "model.onnx"))
    assert main(["predict", "caf\u00e9/b.jpg", "--model", model, "--json", "caf\u00e9/o.json"]) == 0
    out = "caf\u00e9/2024/o.json"  # a new folder in it too
    assert main(["predict", "caf\u00e9/b.jpg", "--model", model, "--json", out]) == 0
    assert (folder / "o.json").is_file() and (folder / "2024" / "o.json").is_file()
    assert sorted(os.listdir(tmp_path)) == sorted(["model.onnx", folder.name])


def test_a_space_that_is_not_a_plain_one_is_named_in_a_missing_file_s_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Chinese input method's full-width space looks like any other in the table.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "狗 1.png").write_bytes(b"x")
    (tmp_path / "Screenshot at 10.00.00\u202fAM.png").write_bytes(b"x")  # as macOS names it
    typed = ["狗\u30001.png", "猫\u00a02.png", "狗\u200b 1.png", "Screenshot at 10.00.00 AM.png"]
    found = collect_inputs([*typed, "دانش\u200cآموز.png"])  # a Persian word's joiner is no space
    assert found.errors == [
        (
            "狗\u30001.png",
            "no such file or directory; the name holds U+3000 (IDEOGRAPHIC SPACE), not a plain"
            " space, and '狗 1.png' is there",
        ),
        (
            "猫\u00a02.png",
            "no such file or directory; the name holds U+00A0 (NO-BREAK SPACE), not a plain space",
        ),
        (
            "狗\u200b 1.png",
            "no such file or directory; the name holds U+200B (ZERO WIDTH SPACE), not a plain"
            " space, and '狗 1.png' is there",
        ),
        (
            "Screenshot at 10.00.00 AM.png",
            "no such file or directory; 'Screenshot at 10.00.00\\u202fAM.png' is there, with"
            " U+202F (NARROW NO-BREAK SPACE) for a space",
        ),
        ("دانش\u200cآموز.png", "no such file or directory"),
    ]


def test_an_unknown_option_after_a_command_shows_that_command_s_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "x.png", "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: visionpipe predict") and "unrecognized arguments: -q" in err
    with pytest.raises(SystemExit):  # before the command: the top one's
        main(["--bogus", "predict", "x.png"])
    err = capsys.readouterr().err
    assert err.startswith("usage: visionpipe [-h]") and "unrecognized arguments: --bogus" in err
    for command, said in (("serve", "Exit status: 0 once stopped"), ("params", "Exit status: 0")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert said in " ".join(capsys.readouterr().out.split())
