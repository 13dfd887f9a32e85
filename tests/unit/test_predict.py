"""Predict: the CLI a user types, bad inputs, both backends, and the torch-free ONNX path."""

from __future__ import annotations

import csv
import errno
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, env, full_disk, pipeline_skeleton, run_stage
from tests.tiny_onnx import write_tiny_onnx
from visionpipe import fsutil, paths
from visionpipe.cli import main
from visionpipe.grids import Layout
from visionpipe.predict import OnnxBackend, Prediction, predict_files, write_grid

GUARDED = "names one of the pipeline's, DVC's, git's or uv's own files"  # the output guard's


def _images(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {}
    for i, (mode, ext) in enumerate(
        [("RGB", "jpg"), ("RGBA", "png"), ("L", "png"), ("P", "gif"), ("CMYK", "jpg")]
    ):
        path = folder / f"img{i}.{ext}"
        arr = rng.integers(0, 255, (50 + i * 7, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(path)
        files[path.name] = path
    return files


def test_cli_predicts_good_files_and_reports_each_bad_one(
    exported_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = _images(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("not an image")
    jpeg = (good["img0.jpg"]).read_bytes()
    (bad / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    Image.new("1", (10000, 10000)).save(bad / "huge.png")
    (tmp_path / "nothing").mkdir()
    out_json, out_csv, grid = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "grid.png"

    specs = [str(tmp_path / n) for n in ("good", "bad", "missing.jpg", "nothing", "*.none")]
    model = str(exported_model / "model.onnx")
    outputs = ["--json", str(out_json), "--csv", str(out_csv), "--grid", str(grid)]
    code = main(["predict", *specs, "--model", model, "--topk", "2", *outputs])
    assert code == 1, "any failed input must make the command exit non-zero"
    preds = {Path(p["file"]).name: p for p in json.loads(out_json.read_text())}
    for name in good:
        assert preds[name]["error"] is None and len(preds[name]["top"]) == 2
        assert preds[name]["top"][0]["class"] in ("cat", "dog", "frog")
    failures = ("empty.jpg", "notes.png", "cut.jpg", "huge.png", "missing.jpg", "nothing")
    reasons = {name: preds[name]["error"] for name in (*failures, "*.none")}
    assert "empty" in reasons["empty.jpg"]
    assert "not a recognised image" in reasons["notes.png"]
    assert "cannot decode" in reasons["cut.jpg"]
    assert "10000x10000" in reasons["huge.png"]
    assert reasons["missing.jpg"] == "no such file or directory"
    assert "no image files" in reasons["nothing"]
    assert "matched no files" in reasons["*.none"]
    assert "ERROR" in capsys.readouterr().out
    failed = f"{len(reasons)} of {len(preds)} inputs failed: "
    assert failed in caplog.text and "and 4 more; each is an ERROR line of the table" in caplog.text
    assert out_csv.read_text().splitlines()[0] == (
        "file,class_1,probability_1,class_2,probability_2,error,folder_class"
    )
    assert Image.open(grid).size[0] > 0


def test_the_grid_of_class_folders_marks_each_prediction_right_or_wrong(
    exported_model: Path, tmp_path: Path
) -> None:
    for cls in ("cat", "dog", "frog"):
        (tmp_path / "photos").mkdir(exist_ok=True)
        _images(tmp_path / "photos" / cls)
    grid, out_json = tmp_path / "grid.png", tmp_path / "p.json"
    args = ["predict", str(tmp_path / "photos"), "--model", str(exported_model / "model.onnx")]
    assert main([*args, "--grid", str(grid), "--json", str(out_json)]) == 0
    preds = json.loads(out_json.read_text())
    right = [p["top"][0]["class"] == p["folder_class"] for p in preds]
    assert any(right) and not all(right)  # the tiny model: both kinds to tell apart
    sheet = np.asarray(Image.open(grid).convert("RGB")).astype(int)
    layout = Layout(128, 5, lines=2, font_size=13)
    for n, ok in enumerate(right):
        x, y = (n % 5) * 128, (n // 5) * layout.row_height + 128
        first_line = sheet[y : y + layout.line_height, x : x + 128].reshape(-1, 3)
        green = (np.abs(first_line - (0, 100, 0)).sum(1) < 30).any()
        red = (np.abs(first_line - (178, 34, 34)).sum(1) < 30).any()
        assert (green, red) == (ok, not ok), (n, preds[n])
    # Not by colour alone: a wrong guess's second line says the class it is.
    from visionpipe.predict import Prediction, _grid_caption

    top = [{"class": "dog", "probability": 0.6}]
    wrong = _grid_caption(Prediction("photos/cat/1.jpg", top), "cat")
    assert [text for text, *_ in wrong] == ["dog", "is cat: 1.jpg"]
    right = _grid_caption(Prediction("photos/dog/2.jpg", top), "dog")
    assert [text for text, *_ in right] == ["dog", "2.jpg"]
    assert right[0][2] == " 60%"


def test_small_probabilities_are_reported_to_six_significant_digits() -> None:
    # Rounded to 6 decimals, 1.37e-6 read 0.000001 (0.00010%), and below 5e-7, 0.0%.
    from visionpipe.predict import format_table, top_k

    probs = np.array([0.9876543219, 1.37e-6, 4.2e-7, 0.0123456789], np.float64)
    top = top_k(probs, ["a", "b", "c", "d"], 4)
    assert [t["probability"] for t in top] == [0.987654, 0.0123457, 1.37e-06, 4.2e-07]
    assert format_table([Prediction("x.jpg", top)]) == (
        "x.jpg: a 98.8%, d 1.2%, b 0.00014%, c 0.000042%"
    )


def test_small_probabilities_keep_two_significant_digits() -> None:
    # A young model of a thousand classes gives each about 0.1%: whole or one-decimal
    # percentages would read 0% or 0.1% for every guess.
    from visionpipe.predict import Prediction, _grid_caption, format_table

    top = [
        {"class": "n01440764", "probability": 0.0012},
        {"class": "tench", "probability": 0.00098},
    ]
    assert format_table([Prediction("a.jpg", top)]) == "a.jpg: n01440764 0.12%, tench 0.098%"
    assert _grid_caption(Prediction("a.jpg", top), None)[0] == ("n01440764", "black", " 0.12%")
    top = [{"class": "cat", "probability": 0.256}, {"class": "dog", "probability": 0.0}]
    assert format_table([Prediction("b.jpg", top)]) == "b.jpg: cat 25.6%, dog 0.0%"


def test_a_grid_of_more_photos_than_it_holds_shows_the_wrong_guesses_and_says_so(
    exported_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = _images(tmp_path / "cat")
    model = OnnxBackend(exported_model / "model.onnx")
    preds = predict_files(sorted(photos.values()), model, topk=1)
    # The first two in folders of the class they are taken for, the others in another's: the
    # wrong guesses come last, where the first `limit` would leave them out.
    other = {"cat": "dog", "dog": "frog", "frog": "cat"}
    guesses = [p.top[0]["class"] for p in preds]
    labels = {
        p.file: g if i < 2 else other[g]
        for i, (p, g) in enumerate(zip(preds, guesses, strict=True))
    }
    wrong = preds[2:]
    grid = tmp_path / "grid.png"
    with caplog.at_level("WARNING"):  # as `visionpipe predict` logs
        write_grid(grid, preds, labels, limit=len(wrong))
    said = f"shows {len(wrong)} of the {len(preds)} predictions (the {len(wrong)} wrong ones first,"
    assert said in caplog.text
    sheet = np.asarray(Image.open(grid).convert("RGB")).astype(int)
    layout = Layout(128, 5, lines=2, font_size=13)
    for n in range(len(wrong)):  # every cell shown is a red one
        x, y = (n % 5) * 128, (n // 5) * layout.row_height + 128
        first_line = sheet[y : y + layout.line_height, x : x + 128].reshape(-1, 3)
        assert (np.abs(first_line - (178, 34, 34)).sum(1) < 30).any(), n


def test_a_sheet_of_a_collection_sorted_by_class_shows_each_class_s_wrong_guesses_in_turn() -> None:
    from visionpipe.predict import _grid_order

    # Folders cat/ (3 wrong, 1 right), dog/ (2 wrong), frog/ (1 wrong), in path order.
    files = ["cat/1", "cat/2", "cat/3", "cat/4", "dog/1", "dog/2", "frog/1"]
    preds = [Prediction(f, [{"class": "x", "probability": 1.0}]) for f in files]
    labels = {f: f.split("/")[0] for f in files}
    wrong = [f != "cat/4" for f in files]
    order = [files[i] for i in _grid_order(preds, labels, wrong)]
    assert order == ["cat/1", "dog/1", "frog/1", "cat/2", "dog/2", "cat/3", "cat/4"]


def test_a_topk_beyond_the_model_s_classes_gives_no_empty_csv_columns(
    exported_model: Path, tmp_path: Path
) -> None:
    photos = _images(tmp_path / "photos")
    out_csv, model = tmp_path / "p.csv", str(exported_model / "model.onnx")
    args = ["predict", str(photos["img0.jpg"]), "--model", model, "--topk", "5"]
    assert main([*args, "--csv", str(out_csv)]) == 0
    header, row = out_csv.read_text().splitlines()
    assert header.split(",")[-4:] == ["class_3", "probability_3", "error", "folder_class"]
    assert all(row.split(",")[1:7]), row  # the model's 3 classes, each with its probability


def test_a_photo_too_large_to_decode_whole_is_predicted_and_drawn_in_the_grid(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe import images

    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)  # a 200-megapixel photo, scaled down
    photo = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated, as phones save
    Image.new("RGB", (2048, 1536), (30, 120, 200)).save(photo, exif=exif.tobytes())
    grid, out_json = tmp_path / "grid.png", tmp_path / "p.json"
    model = str(exported_model / "model.onnx")
    args = ["predict", str(photo), "--model", model, "--grid", str(grid), "--json", str(out_json)]
    assert main(args) == 0
    assert json.loads(out_json.read_text())[0]["error"] is None
    cell = np.asarray(Image.open(grid).convert("RGB"))[40:90, 40:90].reshape(-1, 3)
    assert np.abs(cell.astype(int) - (30, 120, 200)).max() <= 3, "the photo is drawn in its cell"


def test_backends_agree_on_top1(exported_model: Path, tmp_path: Path) -> None:
    from visionpipe import predict

    files = sorted(_images(tmp_path / "imgs").values())
    onnx = predict.predict_files(files, predict.open_backend("onnx", exported_model / "model.onnx"))
    eager = predict.predict_files(files, predict.open_backend("torch", exported_model / "model.pt"))
    for a, b in zip(onnx, eager, strict=True):
        assert a.top[0]["class"] == b.top[0]["class"]
        assert abs(a.top[0]["probability"] - b.top[0]["probability"]) < 1e-4


def test_onnx_cli_never_imports_torch(photo: Path, exported_model: Path) -> None:
    model = str(exported_model / "model.onnx")
    code = (
        "import sys; from visionpipe.cli import main;"
        f"rc = main(['predict', {str(photo)!r}, '--model', {model!r}]);"
        "assert 'torch' not in sys.modules, 'the ONNX path imported torch';"
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "dog.png:" in proc.stdout


def test_a_name_the_terminal_cannot_show_comes_out_escaped(
    exported_model: Path, tmp_path: Path
) -> None:
    # A latin-1 terminal or locale: the table and the errors name 猫 as \u732b, no traceback.
    photos = _images(tmp_path / "猫 cat")
    missing = tmp_path / "狗.jpg"
    model = str(exported_model / "model.onnx")
    args = [str(photos["img0.jpg"]), str(missing), "--model", model]
    proc = subprocess.run(
        [sys.executable, "-m", "visionpipe.cli", "predict", *args],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "latin-1"},
    )
    out, err = proc.stdout.decode("latin-1"), proc.stderr.decode("latin-1")
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "\\u732b cat/img0.jpg: " in out and "\\u72d7.jpg: ERROR no such file" in out, out


def test_help_summary_is_a_whole_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "serve it over HTTP; compose params.yaml." in out


def test_predict_s_help_gives_every_option_s_default_and_the_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default onnx)" in out and "images in one model call (default 64)" in out
    assert "Exit status: 0 when every input was predicted and every output written, 1 when" in out
    assert "141 when the reader of stdout stopped reading" in out
    assert "2 when the model or the arguments cannot be used" in out


def test_version_names_the_package_release(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"visionpipe {importlib.metadata.version('visionpipe')}\n"


def test_missing_model_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["predict", "x.png", "--model", str(tmp_path / "model.onnx")]) == 2
    assert f"{tmp_path / 'model.onnx'} not found" in caplog.text


def test_each_backend_reads_the_model_the_pipeline_writes_by_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    # Outside a project (a predict-and-serve install): name the model file.
    assert main(["predict", "x.png"]) == 2
    assert f"{paths.ONNX_MODEL} not found, and {tmp_path} is not inside" in caplog.text
    assert "--model FILE" in caplog.text
    caplog.clear()
    assert main(["serve"]) == 2
    assert "is not inside a visionpipe project" in caplog.text and "--model FILE" in caplog.text
    caplog.clear()
    pipeline_skeleton(tmp_path)  # a project that has not run export
    assert main(["predict", "x.png"]) == 2
    assert f"{paths.ONNX_MODEL} not found: run 'uv run dvc repro export' first" in caplog.text
    caplog.clear()
    assert main(["predict", "x.png", "--backend", "torch"]) == 2
    assert f"{paths.MODEL} not found: run 'uv run dvc repro train' first" in caplog.text
    # A path of the user's own mistyped: not found, and no stage to run for it.
    for typo in ("modles/model.onnx", "models/model2.onnx"):
        caplog.clear()
        assert main(["predict", "x.png", "--model", typo]) == 2
        assert caplog.text.rstrip().endswith(f"{typo} not found"), caplog.text
    # Windows' separator, typed where '/' separates folders: the path meant is named.
    write_tiny_onnx(tmp_path / paths.ONNX_MODEL)
    caplog.clear()
    assert main(["predict", "x.png", "--model", "models\\model.onnx"]) == 2
    assert "models\\model.onnx not found: a Windows path; here, write models/model.onnx" in (
        caplog.text
    )
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--csv", "predictions\\out.csv"])
    assert "is a Windows path; here, write predictions/out.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--json", "C:\\Users\\me\\out.json"])
    assert "here, write /mnt/c/Users/me/out.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--json", "\\\\nas\\share\\out.json"])
    assert "here, write its path on this machine (where the share is mounted)" in (
        capsys.readouterr().err
    )
    # From '/', a path of this system's, whose file names may hold a backslash; Win32's long
    # form of a local path is its drive's.
    assert paths.meant_here(str(tmp_path / "a\\b.json")) is None
    assert paths.meant_here("\\\\?\\C:\\x\\m.onnx") == "/mnt/c/x/m.onnx"
    assert not list(tmp_path.glob("*out.csv"))


def test_a_subfolder_of_the_project_predicts_with_the_projects_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline_skeleton(tmp_path)
    write_tiny_onnx(tmp_path / paths.ONNX_MODEL)
    photos = tmp_path / "photos" / "2024"
    photos.mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(photos / "a.png")
    monkeypatch.chdir(photos)
    assert main(["predict", "a.png"]) == 0
    assert capsys.readouterr().out.startswith("a.png: ")
    # `../x.onnx` names the file beside this folder's parent: not one beside the project's.
    write_tiny_onnx(tmp_path.parent / "x.onnx")
    assert main(["predict", "--model", "../x.onnx", "a.png"]) == 2
    assert "a.png: " not in capsys.readouterr().out
    # Outside any project, nothing is searched for: the model is missing, as it is.
    monkeypatch.chdir(tmp_path.parent)
    assert main(["predict", str(photos / "a.png")]) == 2


def test_a_model_a_failed_run_deleted_names_the_checkout_that_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DVC deletes model.pt as train starts; a refused or stopped `dvc exp run` leaves none, and
    # `dvc repro train` would rerun the params that just failed.
    monkeypatch.chdir(tmp_path)
    pipeline_skeleton(tmp_path)
    assert main(["predict", "x.png", "--backend", "torch"]) == 2
    assert "'uv run dvc checkout --force train' restores" in caplog.text
    caplog.clear()
    assert main(["serve"]) == 2
    assert "'uv run dvc checkout --force export' restores" in caplog.text
    # A fresh clone: the model is on the team's DVC remote.
    assert "in a fresh clone, 'uv run dvc pull export' fetches" in caplog.text
    caplog.clear()
    assert main(["predict", "x.png", "--model", str(tmp_path / "mine.onnx")]) == 2
    assert "dvc checkout" not in caplog.text  # not a file DVC records
    # Named from another DVC project, or from outside any: the file's project, where the
    # commands run (the other project has no export stage to run).
    other = tmp_path.parent / f"{tmp_path.name}-other"
    (other / ".dvc").mkdir(parents=True)
    for where in (other, tmp_path.parent):  # another DVC project; none
        monkeypatch.chdir(where)
        for fresh in (True, False):  # a fresh clone has no models/ yet
            if not fresh:
                (tmp_path / "models").mkdir()
            caplog.clear()
            assert main(["predict", "x.png", "--model", str(tmp_path / paths.ONNX_MODEL)]) == 2
            assert "'uv run dvc checkout --force export' restores" in caplog.text
            assert caplog.text.rstrip().endswith(f"(run the dvc commands in {tmp_path})")
        (tmp_path / "models").rmdir()


def test_a_project_that_imports_the_model_is_told_to_pull_it_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Another DVC project (`dvc import` of models/model.onnx; no dvc.yaml): it has no export
    # stage to repro or pull, and its model is found from a subfolder as dvc finds the project.
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.onnx.dvc").write_text("deps: []\n")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (20, 20), "red").save(tmp_path / "photos" / "a.png")
    monkeypatch.chdir(tmp_path / "photos")
    assert main(["predict", "a.png"]) == 2
    assert "dvc repro" not in caplog.text and "pull export" not in caplog.text
    assert (
        f"models/model.onnx not found here or in the project {tmp_path}: if DVC tracks it there "
        f"(a .dvc file beside it, an import), 'uv run dvc --cd {tmp_path} pull models/model.onnx'"
        " where a DVC remote holds it"
    ) in caplog.text
    # A path into it from elsewhere is named as DVC names it there: from its root.
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    caplog.clear()
    assert main(["predict", "--model", "../models/model.onnx", "../photos/a.png"]) == 2
    assert f"'uv run dvc --cd {tmp_path} pull models/model.onnx' where a DVC" in caplog.text
    caplog.clear()  # a folder not made yet, named from here: from here too
    assert main(["predict", "--model", "../deploy/model.onnx", "../photos/a.png"]) == 2
    assert f"'uv run dvc --cd {tmp_path} pull deploy/model.onnx' where a DVC" in caplog.text
    monkeypatch.chdir(tmp_path / "photos")
    write_tiny_onnx(tmp_path / paths.ONNX_MODEL)
    assert main(["predict", "a.png"]) == 0


def test_the_torch_backend_refuses_an_onnx_file_rather_than_read_the_pt_beside_it(
    photo: Path, exported_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # model.pt and model.onnx are two artifacts: the .pt beside an .onnx may be another run's.
    onnx = exported_model / "model.onnx"
    assert main(["predict", str(photo), "--backend", "torch", "--model", str(onnx)]) == 2
    assert (
        f"--backend torch reads a .pt state_dict; {onnx} is an ONNX model: give --backend onnx, "
        f"or the .pt file (--model {exported_model / 'model.pt'})"
    ) in caplog.text


def test_a_model_whose_dvc_cache_file_is_gone_is_named_as_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # With `cache.type symlink`, models/model.onnx links into DVC's cache; a `dvc gc` in a project
    # sharing that cache removes the file and leaves the link, which `ls models` still shows.
    pipeline_skeleton(tmp_path)
    cached = tmp_path / "cache" / "files" / "md5" / "ab" / ("c" * 30)
    cached.parent.mkdir(parents=True)
    write_tiny_onnx(cached)
    (tmp_path / paths.ONNX_MODEL).parent.mkdir()
    (tmp_path / paths.ONNX_MODEL).symlink_to(cached)
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path / "photos")  # the project's model, found from a subfolder
    assert main(["predict", "../a.png"]) == 0
    cached.unlink()
    assert main(["predict", "../a.png"]) == 2
    assert f"models/model.onnx is a link to {cached}, which DVC's cache no longer holds" in (
        caplog.text
    )
    assert "'uv run dvc repro export', or 'uv run dvc pull export'" in caplog.text
    assert f"where a DVC remote holds it (run the dvc commands in {tmp_path})" in caplog.text
    caplog.clear()
    # A link of the user's own to a file that is gone is no DVC matter.
    (tmp_path / "mine.onnx").symlink_to(tmp_path / "gone.onnx")
    assert main(["predict", "../a.png", "--model", str(tmp_path / "mine.onnx")]) == 2
    assert f"is a link to {tmp_path / 'gone.onnx'}, which does not exist" in caplog.text
    assert "DVC" not in caplog.text
    caplog.clear()
    # A link to the project's model (a deployment's current.onnx) names where the chain breaks:
    # the project's link, which `ls` shows, exists.
    (tmp_path / "current.onnx").symlink_to(tmp_path / paths.ONNX_MODEL)
    assert main(["predict", "../a.png", "--model", str(tmp_path / "current.onnx")]) == 2
    assert (
        f"current.onnx is a link to {tmp_path / paths.ONNX_MODEL}, a link to {cached}, which"
        " DVC's cache no longer holds"
    ) in caplog.text
    (tmp_path / "loop.onnx").symlink_to(tmp_path / "loop.onnx")
    assert main(["predict", "../a.png", "--model", str(tmp_path / "loop.onnx")]) == 2
    assert "loop.onnx, which loops back on itself" in caplog.text


def test_the_stage_says_how_many_inputs_failed_and_how_to_fix_them(
    exported_model: Path, tmp_path: Path
) -> None:
    (tmp_path / paths.ONNX_MODEL).parent.mkdir()
    (tmp_path / paths.SAMPLES_DIR).parent.mkdir()
    shutil.copy(exported_model / "model.onnx", tmp_path / paths.ONNX_MODEL)
    _images(tmp_path / paths.SAMPLES_DIR)
    (tmp_path / "params.yaml").write_text("predict:\n  inputs: [missing.png]\n")
    proc = run_stage("predict", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert (
        "1 of 6 inputs failed: missing.png (no such file or directory); fix or remove each from "
        "predict.inputs" in proc.stderr
    )
    assert len(json.loads((tmp_path / paths.PREDICTIONS).read_text())) == 6
    assert Image.open(tmp_path / paths.PREDICTION_GRID).size == (5 * 128, 162)


def test_the_stage_shows_the_first_samples_of_many_classes_and_counts_the_rest(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thousand classes' samples, one a line, would push the earlier stages' warnings off the
    # screen; predict.inputs, which the user named, are all shown.
    from visionpipe import predict

    monkeypatch.chdir(tmp_path)
    shutil.copytree(exported_model, tmp_path / "models")
    (tmp_path / paths.SAMPLES_DIR).parent.mkdir()
    _images(samples := tmp_path / paths.SAMPLES_DIR)  # 5 photos
    for n in range(5, predict.SHOWN_SAMPLES + 5):
        shutil.copy(samples / "img0.jpg", samples / f"{n:02d}_cat.jpg")
    _images(photos := tmp_path / "photos")
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    code = predict.predict_command(
        [str(photos)], json_path=paths.PREDICTIONS, unscored=[str(paths.SAMPLES_DIR)]
    )
    assert code == 0
    lines = out.getvalue().splitlines()
    shown = predict.SHOWN_SAMPLES
    assert all(line.startswith(str(paths.SAMPLES_DIR)) for line in lines[:shown]), lines
    assert lines[shown] == f"... and 5 more samples, one a class: {paths.PREDICTIONS}"
    assert [Path(line.split(":")[0]).parent.name for line in lines[shown + 1 :]] == ["photos"] * 5
    assert len(json.loads(paths.PREDICTIONS.read_text())) == shown + 5 + 5  # all of them
    # As many as it shows: each its line.
    for extra in samples.glob("3*_cat.jpg"):
        extra.unlink()
    out.seek(0)
    out.truncate()
    predict.predict_command([], json_path=paths.PREDICTIONS, unscored=[str(paths.SAMPLES_DIR)])
    assert "more samples" not in out.getvalue()


@pytest.mark.parametrize("on_bad_image", ["skip", "fail"])
def test_the_stage_skips_a_file_of_predict_inputs_that_is_no_image_unless_told_to_fail(
    exported_model: Path, tmp_path: Path, on_bad_image: str
) -> None:
    (tmp_path / paths.ONNX_MODEL).parent.mkdir()
    (tmp_path / paths.SAMPLES_DIR).parent.mkdir()
    shutil.copy(exported_model / "model.onnx", tmp_path / paths.ONNX_MODEL)
    _images(tmp_path / paths.SAMPLES_DIR)
    photos = tmp_path / "photos"
    shutil.copytree(tmp_path / paths.SAMPLES_DIR, photos)
    (photos / "img0.jpg").write_bytes((photos / "img0.jpg").read_bytes()[:100])  # truncated
    (photos / "gone.jpg").symlink_to(photos / "deleted.jpg")
    params = f"predict:\n  inputs: [{photos}]\n  on_bad_image: {on_bad_image}\n"
    (tmp_path / "params.yaml").write_text(params)
    proc = run_stage("predict", tmp_path)
    records = json.loads((tmp_path / paths.PREDICTIONS).read_text())
    assert len(records) == 5 + 6
    errors = {Path(r["file"]).name: r["error"] for r in records if r["error"]}
    assert errors.keys() == {"img0.jpg", "gone.jpg"}, errors
    if on_bad_image == "skip":
        assert proc.returncode == 0, proc.stderr
        assert "2 of 11 inputs are not usable images and were skipped" in proc.stderr
        assert f"{photos / 'img0.jpg'}: SKIPPED " in proc.stdout
    else:
        assert proc.returncode == 1, proc.stderr
        assert "2 of 11 inputs failed: " in proc.stderr
        assert "; fix or remove each from predict.inputs, or set" in proc.stderr
        assert f"{photos / 'img0.jpg'}: ERROR " in proc.stdout
    # A path that is not there is a mistake in the params, whatever on_bad_image says.
    (tmp_path / "params.yaml").write_text(params.replace(str(photos), str(tmp_path / "nope")))
    proc = run_stage("predict", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 6 inputs failed" in proc.stderr


def test_exported_onnx_holds_no_machine_paths(exported_model: Path) -> None:
    # The exporter records a Python stack trace per node, with this checkout's absolute paths:
    # the same model exported from another clone would hash differently in dvc.lock.
    data = (exported_model / "model.onnx").read_bytes()
    src = Path(__file__).resolve().parents[2] / "src"
    assert b"stack_trace" not in data and str(src).encode() not in data


def _identity_onnx(path: Path, shape: list[int], metadata: dict[str, str] | None = None) -> Path:
    """An unrelated ONNX model: one Identity node over a float tensor of `shape`."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # one every onnxruntime reads
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def _bad_models(exported: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model file, what its error must say)"""
    import onnx

    good = (exported / "model.onnx").read_bytes()
    (tmp / "corrupt.onnx").write_bytes(bytes(range(256)) * 40)
    (tmp / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp / "empty.onnx").write_bytes(b"")
    stripped = onnx.load(str(exported / "model.onnx"))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp / "no-metadata.onnx"))
    meta = {"classes": '["a", "b"]', "image_size": "16"}
    whole_pt = (exported / "model.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(whole_pt[: len(whole_pt) // 3])
    (tmp / "README.md").write_text("# notes\n\nnot a model: 模型\n")
    not_onnx = "not an ONNX model: --model takes the ONNX export (models/model.onnx)"
    return {
        "corrupt": (tmp / "corrupt.onnx", "not a readable ONNX model"),
        "a photo": (tmp / "img.png", f"img.png: a PNG image, {not_onnx}"),
        "text": (tmp / "README.md", f"README.md: a text file, {not_onnx}"),
        "model.pt cut short": (tmp / "cut.pt", "PyTorch's weights file (torch.save), not an"),
        "truncated": (
            tmp / "truncated.onnx",
            "not a readable ONNX model (INVALID_PROTOBUF: Protobuf parsing failed.); a copy or"
            " download cut short reads so: copy it again",
        ),
        "empty": (tmp / "empty.onnx", "No graph was found in the protobuf.); a copy or download"),
        "model.pt": (exported / "model.pt", "PyTorch's weights file (torch.save), not an ONNX"),
        "a folder": (tmp, "a folder, not an ONNX model file"),
        "no metadata": (tmp / "no-metadata.onnx", "without visionpipe metadata"),
        "unrelated": (
            _identity_onnx(tmp / "mnist.onnx", [1, 1, 28, 28]),
            "without visionpipe metadata",
        ),
        "another input shape": (
            _identity_onnx(tmp / "other.onnx", [1, 1, 28, 28], meta),
            "does not take float [batch, 3, 16, 16] images to 2 logits",
        ),
        "missing": (tmp / "absent.onnx", "not found"),
    }


def test_the_projects_own_model_overwritten_by_another_file_gets_the_way_back(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A download that saved an error page where models/model.onnx was: not "--model takes ...",
    # which the user did not give; a text file saved by Notepad (a byte-order mark) is text too.
    pipeline_skeleton(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    (tmp_path / paths.ONNX_MODEL).write_text("<html><body>404 Not Found</body></html>")
    (tmp_path / paths.MODEL).write_text("<html><body>404 Not Found</body></html>")
    torch = ["--backend", "torch"]
    # Before any run (no dvc.lock): remade by its stage.
    for backend, stage in (([], "export"), (torch, "train")):
        assert main(["predict", "a.png", *backend]) == 2
        assert caplog.text.rstrip().endswith(
            f"copy it again, or make the project's own: run 'uv run dvc repro {stage}'"
        ), caplog.text
        caplog.clear()
    # Recorded, but not in this clone's cache (not pulled): a checkout would delete the file
    # and fail, so fetched or remade.
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], check=True)
    md5 = {"export": "0123456789abcdef0123456789abcdef", "train": "fedcba9876543210fedcba98765432"}
    lock = {
        stage: {"cmd": "x", "outs": [{"path": out.as_posix(), "md5": md5[stage], "size": 1}]}
        for stage, out in (("export", paths.ONNX_MODEL), ("train", paths.MODEL))
    }
    (tmp_path / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": lock}))
    for backend, stage in (([], "export"), (torch, "train")):
        assert main(["predict", "a.png", *backend]) == 2
        assert caplog.text.rstrip().endswith(
            f"copy it again, or fetch the project's own with 'uv run dvc pull {stage}' where a"
            f" DVC remote holds it, or run 'uv run dvc repro {stage}'"
        ), caplog.text
        caplog.clear()
    # In the cache: checked out.
    for stage in md5:
        cached = tmp_path / ".dvc/cache/files/md5" / md5[stage][:2] / md5[stage][2:]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"x")
    assert main(["predict", "a.png"]) == 2
    assert caplog.text.rstrip().endswith(
        "models/model.onnx: a text file, not an ONNX model: copy it again, or restore the"
        " project's own with 'uv run dvc checkout --force models/model.onnx'"
    ), caplog.text
    caplog.clear()
    assert main(["predict", "a.png", *torch]) == 2
    assert caplog.text.rstrip().endswith(
        "or a pickle); copy it again, or restore the project's own with 'uv run dvc checkout"
        " --force models/model.pt'"
    ), caplog.text
    caplog.clear()
    # Another of the project's files given as the model (a glob's first file lands in --model):
    # no checkout of it, which is fine as it is.
    (tmp_path / "data" / "samples").mkdir(parents=True)
    shutil.copy(tmp_path / "a.png", sample := tmp_path / "data" / "samples" / "00_cat.png")
    assert main(["predict", "--model", str(sample), "a.png"]) == 2
    assert "00_cat.png: a PNG image, not an ONNX model: --model takes the ONNX" in caplog.text
    # The photo went to the option: predict says where photos go, the command as argparse
    # read it with the photo among the photos (serve, which takes none, not).
    assert caplog.text.rstrip().endswith(
        "the photos to predict come after the options, not as --model: `uv run visionpipe"
        f" predict -- {sample} a.png`"
    ), caplog.text
    with pytest.raises(SystemExit):  # the photo alone, as --model: argparse's error, then ours
        main(["predict", "--model", str(sample)])
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith(f"not as --model: `uv run visionpipe predict -- {sample}`")
    )
    # An option left without its value: no command is offered (a photo could become it).
    with pytest.raises(SystemExit):
        main(["predict", "a.png", "--model", str(sample), "--grid"])
    assert "not as --model" not in capsys.readouterr().err
    from visionpipe.cli import _photo_as_model, build_parser

    # Each suggestion parses, with the photo and the others as photos, the options as given
    # (abbreviated ones too, as argparse takes them: `--gr` is --grid).
    for argv, options in (
        (["predict", "--topk", "2", "--model", str(sample), "a.png", "b.png"], {"topk": 2}),
        (["predict", f"--model={sample}", "--backend", "torch", "a.png"], {"backend": "torch"}),
        (["predict", "--model", str(sample), "--gr", "g.png", "a.png"], {"grid": Path("g.png")}),
        (["predict", "--mod", str(sample), "--top=2", "a.png"], {"topk": 2}),
        (["predict", "-", "--model", str(sample)], {}),
    ):
        hint = _photo_as_model(argv)
        suggested = shlex.split(hint.split("`")[1])[3:]  # past `uv run visionpipe`
        args = build_parser().parse_args(suggested)
        assert args.inputs[0] == str(sample) and args.model is None, (argv, suggested)
        given = [a for a in argv[1:] if a in ("a.png", "b.png", "-")]
        assert args.inputs == [str(sample), *given], (argv, suggested)
        assert {k: getattr(args, k) for k in options} == options, (argv, suggested)
    assert "checkout" not in caplog.text
    caplog.clear()
    (notes := tmp_path / "notes.onnx").write_bytes("\ufeffnotes, UTF-8".encode("utf-8"))
    (wide := tmp_path / "wide.onnx").write_bytes("notes, UTF-16".encode("utf-16"))
    for other in (notes, wide):
        assert main(["predict", "a.png", "--model", str(other)]) == 2
        assert f"{other}: a text file, not an ONNX model: --model takes" in caplog.text


def test_onnxruntimes_reason_is_kept_where_its_error_runs_long(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its message names the C++ source line and function first, the reason last.
    model = _identity_onnx(tmp_path / "future.onnx", [1, 3, 4, 4])
    import onnx

    loaded = onnx.load(str(model))
    loaded.ir_version = 99
    onnx.save(loaded, str(model))
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(model)]) == 2
    assert "(FAIL: Unsupported model IR version: 99, max supported IR version" in caplog.text
    assert "onnxruntime_src" not in caplog.text and "::" not in caplog.text
    # A path holding "failed:" itself is cut whole from onnxruntime's prefix.
    odd = tmp_path / "run failed: again" / "m.onnx"
    odd.parent.mkdir()
    shutil.copy(model, odd)
    caplog.clear()
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(odd)]) == 2
    assert f"{odd}: not a readable ONNX model (FAIL: Unsupported model IR" in caplog.text
    # Another build's source path (macOS's wheel, conda's); a long reason keeps both ends.
    from visionpipe.onnxrt import _reason

    where = "/Users/runner/work/1/s/onnxruntime/core/graph/model_load_utils.h:46 void"
    signature = " onnxruntime::V(const std::map<std::string, int>&, const Logger&, bool) "
    long = "Opset 99 is under development. " + "Filler words. " * 30 + "Support is till opset 26."
    said = _reason(RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : {where}{signature}{long}"))
    assert said.startswith("FAIL: Opset 99 is under development.") and "::" not in said
    assert said.endswith("Support is till opset 26.") and len(said) <= 300


def test_a_bad_model_file_gets_one_line_and_exit_code_2(
    exported_model: Path, tmp_path: Path
) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), "red").save(image)
    for case, (model, message) in _bad_models(exported_model, tmp_path).items():
        proc = subprocess.run(
            [sys.executable, "-m", "visionpipe.cli", "predict", str(image), "--model", str(model)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2, (case, proc.stderr)
        assert proc.stdout == "", case
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, (case, proc.stderr)
        assert str(model) in lines[0] and message in lines[0], (case, lines[0])


def test_predicting_to_a_closed_stdout_is_an_error_not_a_silent_success(
    exported_model: Path, tmp_path: Path
) -> None:
    # `visionpipe predict photo.jpg >&-` in a script: Python's stdout is None, print() drops
    # the table, and exit 0 would tell the script all went well.
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), "red").save(image)
    model = exported_model / "model.onnx"
    cmd = [sys.executable, "-m", "visionpipe.cli", "predict", str(image), "--model", str(model)]
    closed = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr
    out = tmp_path / "preds.json"
    kept = subprocess.run([*cmd, "--json", str(out)], preexec_fn=lambda: os.close(1))
    assert kept.returncode == 0 and json.loads(out.read_text())[0]["file"] == str(image)


def test_a_half_precision_file_with_half_inputs_names_the_option_that_keeps_them(
    photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxconverter-common's float16 conversion without keep_io_types=True: float16 in and out.
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT16, ["batch", 3, 16, 16])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 3])
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Cast", ["m"], ["logits"], to=TensorProto.FLOAT16),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "half", [image], [logits]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    helper.set_model_props(model, {"classes": '["a", "b", "c"]', "image_size": "16"})
    path = tmp_path / "model.fp16.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["predict", str(photo), "--model", str(path)]) == 2
    assert "image tensor(float16) [batch, 3, 16, 16]" in caplog.text
    assert caplog.text.rstrip().endswith("convert it again with keep_io_types=True"), caplog.text


def test_the_torch_backend_names_a_bad_model_file_too(
    exported_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes((exported_model / "model.onnx").read_bytes())
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), "red").save(image)
    assert main(["predict", str(image), "--backend", "torch", "--model", str(bad)]) == 2
    # Not torch's words on unpickling it, which end in advice to load it unsafely.
    assert f"{bad}: not a PyTorch file (torch.save writes a zip archive" in caplog.text
    assert "weights_only" not in caplog.text
    # A plain pickle: torch's first sentence and what it met, not its advice, and not its warning
    # on the pickle's protocol. A model.pt cut short anywhere (torch says "failed finding central
    # directory", or raises EINVAL): damaged, and how to get it back. Another program's zip.
    import pickle
    import warnings
    import zipfile

    pickled = tmp_path / "pick.pt"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    pickle_said = "Weights only load failed: Unsupported operand 149)"  # what it met, kept
    cases = [(pickled, pickle_said)]
    whole = (exported_model / "model.pt").read_bytes()
    for size in (1000, len(whole) // 3, len(whole) // 2, len(whole) - 30):
        (cut := tmp_path / f"cut{size}.pt").write_bytes(whole[:size])
        cases.append((cut, f"{cut}: a damaged or incomplete file (a zip archive"))
        cases.append((cut, "a copy or download cut short); copy it again\n"))  # no DVC's
    (empty := tmp_path / "empty.pt").write_bytes(b"")
    cases.append((empty, f"{empty}: a damaged or incomplete file (empty: a copy or download"))
    with zipfile.ZipFile(other := tmp_path / "other.pt", "w") as archive:
        archive.writestr("notes.txt", "not weights")
    cases.append((other, f"{other}: a zip archive, but not one torch.save wrote"))
    (folder := tmp_path / "models").mkdir()
    cases.append((folder, f"{folder}: a folder, not a model.pt file"))
    for path, said in cases:
        caplog.clear()
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            assert main(["predict", str(image), "--backend", "torch", "--model", str(path)]) == 2
        assert said in caplog.text and "weights_only" not in caplog.text, caplog.text
        assert "likelihood" not in caplog.text and not shown, [str(w.message) for w in shown]
        assert "enforce fail" not in caplog.text and "Traceback" not in caplog.text
    # The pipeline's own model.pt cut short: DVC's copy of it, with --force (DVC's word for a
    # changed file), and from a subfolder where the dvc command runs.
    project = pipeline_skeleton(tmp_path / "project")
    (project / "models").mkdir()
    (project / paths.MODEL).write_bytes(whole[: len(whole) // 2])
    (project / "photos").mkdir()
    # A DVC-linked output (cache.type symlink) is named by its place, not its cache file's.
    cached = project / ".dvc" / "cache" / "files" / "md5" / "ab" / ("c" * 30)
    cached.parent.mkdir(parents=True)
    (project / paths.MODEL).rename(cached)
    (project / paths.MODEL).symlink_to(cached)
    # dvc.lock records another model.pt, which the cache holds: checked out.
    recorded = "de" + "f" * 30
    lock = {"stages": {"train": {"outs": [{"path": paths.MODEL.as_posix(), "md5": recorded}]}}}
    (project / paths.DVC_LOCK).write_text(json.dumps(lock))
    (project / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")  # DVC's own reading
    (held := cached.parent.parent / recorded[:2] / recorded[2:]).parent.mkdir()
    held.write_bytes(whole)
    away = f" (run the dvc commands in {project})"
    for where, named, said in (
        (project, [], ""),
        (project / "photos", [], away),
        (project / "photos", ["--model", "../models/model.pt"], away),  # as typed there
        (tmp_path, ["--model", str(project / paths.MODEL)], away),  # from outside the project
    ):
        monkeypatch.chdir(where)
        caplog.clear()
        assert main(["predict", str(image), "--backend", "torch", *named]) == 2
        assert caplog.text.rstrip().endswith(
            f"copy it again, or restore the project's own with 'uv run dvc checkout --force"
            f" {paths.MODEL}'{said}"
        ), caplog.text
    # The link is the one dvc.lock records: the damage is in DVC's cache file, which a checkout
    # would link again and a same-hash re-run keep. Linked hard, it is found by its hash.
    md5 = "ab" + "c" * 30
    lock = {"stages": {"train": {"outs": [{"path": paths.MODEL.as_posix(), "md5": md5}]}}}
    (project / paths.DVC_LOCK).write_text(json.dumps(lock))
    said = (
        "so DVC's own copy is the damaged one: remove both and make it again, with this line:"
        f" rm -f {paths.MODEL} {cached} && uv run dvc repro train"
    )
    monkeypatch.chdir(project)
    caplog.clear()
    assert main(["predict", str(image), "--backend", "torch"]) == 2
    assert caplog.text.rstrip().endswith(said), caplog.text
    monkeypatch.chdir(project / "photos")  # one line that runs here too
    caplog.clear()
    assert main(["predict", str(image), "--backend", "torch"]) == 2
    assert f"this line: cd {project} && rm -f {paths.MODEL} {cached} && uv run dvc" in caplog.text
    monkeypatch.chdir(project)
    (project / paths.MODEL).unlink()
    os.link(cached, project / paths.MODEL)
    caplog.clear()
    assert main(["predict", str(image), "--backend", "torch"]) == 2
    assert caplog.text.rstrip().endswith(said), caplog.text
    (project / paths.MODEL).unlink()  # a copy of its own: the checkout brings DVC's back
    shutil.copy(cached, project / paths.MODEL)
    caplog.clear()
    assert main(["predict", str(image), "--backend", "torch"]) == 2
    assert caplog.text.rstrip().endswith(f"--force {paths.MODEL}'"), caplog.text
    # A lesson's torch.save of another network over it, whole or as a state_dict: a PyTorch
    # file, but the project's model is what to get back, through the link its cache file too.
    import torch
    from torch import nn

    for saved in (nn.Linear(3, 2).state_dict(), {"state_dict": {}}):
        (project / paths.MODEL).unlink()
        (project / paths.MODEL).symlink_to(cached)
        torch.save(saved, project / paths.MODEL)
        caplog.clear()
        assert main(["predict", str(image), "--backend", "torch"]) == 2
        assert "not a visionpipe model.pt (KeyError: " in caplog.text, caplog.text
        assert "); it is a link to DVC's cache (cache.type symlink" in caplog.text, caplog.text
        assert caplog.text.rstrip().endswith(said), caplog.text
    # Another project's model.pt, passed by --model from here: the train stage's to pass.
    torch.save(nn.Linear(3, 2).state_dict(), lone := tmp_path / "lone.pt")
    caplog.clear()
    assert main(["predict", str(image), "--backend", "torch", "--model", str(lone)]) == 2
    assert caplog.text.rstrip().endswith(f"pass the {paths.MODEL} the train stage wrote")


@pytest.mark.parametrize("change", ["layers", "arch"])
def test_a_model_pt_of_other_visionpipe_code_says_to_retrain_it(
    exported_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    # A model.pt whose layers this code names otherwise, or of a model it no longer has, is this
    # project's file written by other code: retraining (or its ONNX export) is the way on.
    import torch

    blob = torch.load(exported_model / "model.pt", weights_only=True)
    if change == "layers":
        blob["state_dict"] = {f"old.{k}": v for k, v in blob["state_dict"].items()}
    else:
        blob["meta"]["arch"] = "retired_net"
    old = tmp_path / "model.pt"
    torch.save(blob, old)
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20), "red").save(image)
    assert main(["predict", str(image), "--backend", "torch", "--model", str(old)]) == 2
    assert f"{old}: a visionpipe model.pt this code cannot rebuild" in caplog.text
    assert "retrain it with 'uv run dvc repro train'" in caplog.text


def test_a_full_disk_under_json_output_is_one_error_line(
    exported_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 20), "red").save(photo)
    monkeypatch.setattr(fsutil, "open", full_disk(room=10), raising=False)
    out = tmp_path / "p.json"
    args = ["predict", str(photo), "--model", str(exported_model / "model.onnx")]
    assert main([*args, "--json", str(out)]) == 1
    assert f"error: no space left on the disk holding {out}" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_over_a_folder_is_one_line(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder of thousands of photos takes a while: stopping it is no bug to show a trace of.
    from visionpipe import predict

    def stopped(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "predict_files", stopped)
    args = ["predict", str(photo), "--model", str(write_tiny_onnx(tmp_path / "model.onnx"))]
    try:
        code = main(args)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C came out of visionpipe predict as a traceback")
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C)"


def test_an_output_path_that_cannot_be_a_file_is_one_error_line(
    photo: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    args = ["predict", str(photo), "--model", str(model)]
    for flag, dest, problem in (
        ("--json", tmp_path, f"{tmp_path} is a folder: name a file in it"),
        ("--csv", a_file / "p.csv", f"{a_file} is a file, not a folder"),
        ("--grid", a_file / "sub" / "g.png", f"{a_file} is a file, not a folder"),
    ):
        caplog.clear()
        assert main([*args, flag, str(dest)]) == 1
        assert f"cannot write {flag} {dest}: {problem}" in caplog.text
        assert "dog.png" in capsys.readouterr().out  # the predictions were printed all the same


def test_every_output_that_cannot_be_written_is_named_and_the_others_written(
    photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe import predict

    def read_only(dest: Path, *args: object) -> None:  # --csv on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system", str(dest))

    monkeypatch.setattr(predict, "write_csv", read_only)
    model = write_tiny_onnx(tmp_path / "model.onnx")
    grid, out_csv = tmp_path / "g.png", tmp_path / "ro" / "p.csv"
    args = ["predict", str(photo), "--model", str(model), "--json", str(tmp_path)]
    assert main([*args, "--csv", str(out_csv), "--grid", str(grid)]) == 1
    assert f"cannot write --json {tmp_path}: {tmp_path} is a folder" in caplog.text
    assert (
        f"cannot write --csv {out_csv}: read-only filesystem: give a file on a writable disk"
        in (caplog.text)
    )
    assert Image.open(grid).size[0] > 0  # written all the same


def test_a_file_size_limit_is_named_as_such(photo: Path, tmp_path: Path) -> None:
    # `ulimit -f` (or FAT32's 4 GiB): another folder of this user's would not help.
    model = write_tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "p.json"
    script = f"""
import resource, signal, sys
from visionpipe.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
sys.exit(main(["predict", {str(photo)!r}, "--model", {str(model)!r}, "--json", {str(out)!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env())
    assert done.returncode == 1, done.stderr
    assert f"cannot write --json {out}: file too large for its filesystem" in done.stderr
    assert "ulimit -f" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_json_or_csv_to_stdout_and_a_grid_in_the_format_its_name_says(
    photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    args = ["predict", str(photo), "--model", str(model)]
    assert main([*args, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["file"] == str(photo)  # stdout holds the JSON alone
    assert "dog.png:" in err  # the table went to stderr
    assert main([*args, "--csv", "-"]) == 0
    assert capsys.readouterr().out.startswith("file,class_1,probability_1,")
    assert not (tmp_path / "-").exists() and not Path("-").exists()
    # A .tsv asked for gets tabs, as pandas' sep="\t" and a spreadsheet's import read it.
    assert main([*args, "--csv", str(tmp_path / "p.tsv")]) == 0
    rows = list(csv.reader((tmp_path / "p.tsv").open(newline=""), delimiter="\t"))
    assert rows[0][:3] == ["file", "class_1", "probability_1"] and rows[1][0] == str(photo)
    assert len(rows[1]) == len(rows[0]) and float(rows[1][2]) > 0, rows
    for name, magic in (("g.jpg", b"\xff\xd8\xff"), ("g.webp", b"RIFF"), ("g.PNG", b"\x89PNG")):
        assert main([*args, "--grid", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(magic), name
    for extra, says in (
        (["--grid", str(tmp_path / "g.gif")], "name a .png, .jpg, .jpeg, .webp file"),
        (["--json", "-", "--csv", "-"], "both ask for stdout"),
        (["--json", "-", "--csv", "/dev/stdout"], "--json - and --csv /dev/stdout both ask for"),
        (["--json", "p", "--csv", "./p"], "--json and --csv both name p: give each its own file"),
        (["--csv", "IMG_1.JPG"], "--csv IMG_1.JPG is named like an image: give a .csv file"),
        (["--csv", "out.xlsx"], "--csv out.xlsx: the file is CSV text, which a spreadsheet opens"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*args, *extra])
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_an_output_named_like_a_photo_being_predicted_is_refused_before_anything_is_written(
    photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = Path(shutil.copy(photo, photos / "a.png"))
    before = photo.read_bytes()
    for spec in (str(photo), str(photos), f"{photos}/*.png"):
        assert main(["predict", spec, "--model", str(model), "--grid", str(photo)]) == 2
        assert f"--grid {photo} names a file being predicted" in caplog.text, spec
        assert photo.read_bytes() == before, spec
    # Another name of the same file: on a case-insensitive disk (macOS, a Windows share) A.PNG
    # is a.png; a hard link stands in for it here.
    upper = photos / "A.PNG"
    os.link(photo, upper)
    caplog.clear()
    assert main(["predict", str(photo), "--model", str(model), "--grid", str(upper)]) == 2
    assert f"--grid {upper} names a file being predicted ({photo})" in caplog.text
    assert os.path.samefile(photo, upper) and photo.read_bytes() == before
    # exFAT's FUSE driver gives Dog.png and dog.png inodes of their own: the name in any case
    # is the photo's where the folder finds it but lists only the photo's name. A copy stands
    # in for the name found, and the listing is such a folder's.
    upper.unlink()
    shutil.copy(photo, upper)
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda d=".": [n for n in listdir(d) if n != upper.name])
    caplog.clear()
    assert main(["predict", str(photo), "--model", str(model), "--grid", str(upper)]) == 2
    assert f"--grid {upper} names a file being predicted ({photo})" in caplog.text
    assert upper.read_bytes() == before and photo.read_bytes() == before
    monkeypatch.undo()
    # On a disk that tells case, A.PNG beside a.png is a file of its own, or none yet.
    for exists in (True, False):
        if not exists:
            upper.unlink()
        assert main(["predict", str(photo), "--model", str(model), "--grid", str(upper)]) == 0
        assert Image.open(upper).size[0] > 0 and photo.read_bytes() == before
    # Letter by letter, as such disks map case: ß is not SS there.
    shutil.copy(photo, photos / "straße.png")
    assert (
        main(["predict", str(photos), "--model", str(model), "--grid", str(photos / "STRASSE.png")])
        == 0
    )


def test_an_option_out_of_range_shows_its_own_commands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, usage in (
        (["predict", "x.png", "--topk", "0"], "usage: visionpipe predict "),
        (["serve", "--max-batch", "0"], "usage: visionpipe serve "),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(usage), err


def test_any_file_name_comes_back_whole_in_json_and_csv(
    exported_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "照片 📷"
    folder.mkdir()
    names = ["a b.jpg", "猫 咪.jpg", "🐱.jpg", "#1 100%.jpg", 'it\'s "q", c.jpg', "-1.JPG"]
    names += ["new\nline.png", "carriage\rreturn.png"]  # csv quotes a bare CR only if told
    if sys.platform == "linux":  # a name that is not UTF-8: other file systems refuse one
        names.append(os.fsdecode("狗.jpg".encode("gbk")))
    for name in names:
        Image.new("RGB", (20, 20), "red").save(folder / name, "PNG")
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    model = str(exported_model / "model.onnx")
    outputs = ["--json", str(out_json), "--csv", str(out_csv)]
    assert main(["predict", str(folder), "--model", model, *outputs]) == 0
    expected = {str(folder / name) for name in names}
    assert {p["file"] for p in json.loads(out_json.read_text())} == expected
    with open(out_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    shown = {n.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for n in expected}
    assert {row["file"] for row in rows} == shown
    assert all(row["error"] == "" and row["class_1"] for row in rows)


def test_csv_to_a_terminal_shows_a_name_s_escape_sequences_escaped(
    exported_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A zip's `\x1b]0;title\x07.png` would retitle the terminal, or worse, if written raw.
    name = "evil\x1b]0;PWNED\x07.png"
    Image.new("RGB", (20, 20), "red").save(tmp_path / name, "PNG")
    Image.new("RGB", (20, 20), "red").save(tmp_path / "new\nline.png", "PNG")
    model = ["--model", str(exported_model / "model.onnx")]
    monkeypatch.setattr(os, "isatty", lambda fd: fd == 1)
    assert main(["predict", str(tmp_path / name), *model, "--csv", "-"]) == 0
    shown = capfd.readouterr().out
    assert "\x1b" not in shown and "evil\\x1b]0;PWNED\\x07.png," in shown, shown
    assert main(["predict", str(tmp_path / "new\nline.png"), *model, "--csv", "-"]) == 0
    assert len(capfd.readouterr().out.splitlines()) == 2  # the header, and the row on one line
    monkeypatch.setattr(os, "isatty", lambda fd: False)  # to a file or pipe: the name as it is
    assert main(["predict", str(tmp_path / name), *model, "--csv", "-"]) == 0
    assert "evil\x1b]0;PWNED\x07.png," in capfd.readouterr().out


def test_a_file_named_like_an_option_gets_the_way_to_name_it(
    exported_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (20, 20), "red").save("-1.jpg")
    model = ["--model", str(exported_model / "model.onnx")]
    with pytest.raises(SystemExit):
        main(["predict", "-1.jpg", *model])
    assert (
        "'-1.jpg' is read as an option; to name the file, write ./-1.jpg" in capsys.readouterr().err
    )
    assert main(["predict", *model, "--", "-1.jpg"]) == 0
    assert main(["predict", "./-1.jpg", *model]) == 0


def test_options_before_the_command_get_the_command_line_that_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--topk", "3", "predict", "my photo.jpg"])
    err = capsys.readouterr().err
    assert "invalid choice: '3'" in err  # argparse's own, then the way that works
    assert "options come after it: uv run visionpipe predict --topk 3 'my photo.jpg'" in err
    with pytest.raises(SystemExit):
        main(["--", "predict", "x.jpg"])  # after --, "predict" may be a file's name
    assert "come after it" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--json", "out.json", "serve"])  # an option serve has not: moving it is no fix
    assert "come after it" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--b", "4", "predict", "x.jpg"])  # --backend or --batch-size: argparse refuses it
    assert "come after it" not in capsys.readouterr().err
    for before in (["--csv", "-"], ["--top", "1"]):  # a value like an option; a prefix of one
        with pytest.raises(SystemExit):
            main([*before, "predict", "x.jpg"])
        said = f"after it: uv run visionpipe predict {' '.join(before)} x.jpg"
        assert said in capsys.readouterr().err


def test_a_glob_under_a_folder_with_brackets_in_its_name_matches(
    exported_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "Photos [2024] 猫"
    (folder / "day 1").mkdir(parents=True)
    for name in ("a.jpg", "day 1/b.JPG"):
        Image.new("RGB", (20, 20), "red").save(folder / name, "PNG")
    out = tmp_path / "p.json"
    model = ["--model", str(exported_model / "model.onnx"), "--json", str(out)]
    assert main(["predict", f"{folder}/**/*.[jJ][pP][gG]", *model]) == 0
    files = sorted(p["file"] for p in json.loads(out.read_text()))
    assert files == [str(folder / "a.jpg"), str(folder / "day 1/b.JPG")]


def test_a_collection_that_predicts_nothing_reads_plainly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as z:
        z.writestr("a.jpg", b"x")
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(b"not an image")
    grid = tmp_path / "grid.png"
    argv = ["predict", str(tmp_path / "photos.zip"), str(odd), "--model", str(model)]
    assert main([*argv, "--grid", str(grid)]) == 1
    out = capsys.readouterr().out
    assert "photos.zip: ERROR a zip archive, not an image: unpack it" in out
    assert "two\\nlines.png: ERROR" in out and len(out.splitlines()) == 2  # one line per file
    assert not grid.exists() and f"--grid {grid} not written" in caplog.text


def test_a_diverged_model_s_predictions_come_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its outputs are NaN: the table still ranks classes (by nothing), the JSON has nulls.
    model = str(write_tiny_onnx(tmp_path / "model.onnx", diverged=True))
    photos = _images(tmp_path / "photos")
    with caplog.at_level("WARNING"):
        assert main(["predict", *map(str, photos.values()), "--model", model]) == 0
    assert f"non-finite outputs (NaN) for {len(photos)} of {len(photos)} images" in caplog.text
    table = capsys.readouterr().out  # n/a, as the serve page and the web module show it
    assert "n/a" in table and "nan" not in table.lower(), table
    caplog.clear()
    fine = str(write_tiny_onnx(tmp_path / "fine.onnx"))
    with caplog.at_level("WARNING"):
        assert main(["predict", *map(str, photos.values()), "--model", fine]) == 0
    assert "non-finite" not in caplog.text


def _predict_cmd(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "visionpipe.cli", "predict", *args, "--model", str(model)]


@pytest.mark.parametrize("to_stdout", [[], ["--json", "-"]])
def test_a_reader_that_stops_reading_stops_the_command_quietly_with_the_files_written(
    tmp_path: Path, to_stdout: list[str]
) -> None:
    # `visionpipe predict photos/ --csv all.csv | head -1`: head closes the pipe after a line.
    model = write_tiny_onnx(tmp_path / "model.onnx")
    photos = _images(tmp_path / "photos")
    out = tmp_path / "all.csv"
    missing = str(tmp_path / "missing.jpg")
    cmd = _predict_cmd(model, str(tmp_path / "photos"), missing, "--csv", str(out), *to_stdout)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as a shell reports `yes | head`
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert f"1 of {len(photos) + 1} inputs failed: {missing} (no such file" in err, err
    assert len(out.read_text().splitlines()) == 2 + len(photos), "the file asked for is written"


@pytest.mark.parametrize("to_stdout", [[], ["--json", "-"]])
def test_a_full_disk_under_stdout_is_an_error_not_a_success(
    photo: Path, tmp_path: Path, to_stdout: list[str]
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    _images(tmp_path / "photos")
    with open("/dev/full", "w") as full:  # every write: ENOSPC, as a full disk's
        proc = subprocess.run(
            _predict_cmd(model, str(tmp_path / "photos"), *to_stdout),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
    assert proc.returncode == 1, proc.stderr
    assert "no space left where standard output goes" in proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    # A device named as the file, full as a disk: the same error, not "give a file in a folder".
    proc = subprocess.run(
        [*_predict_cmd(model, str(photo)), "--json", "/dev/full"],
        capture_output=True,
        text=True,
        env=env(),
    )
    said = "error: no space left writing into /dev/full, which takes no more: send it elsewhere"
    assert proc.returncode == 1 and said in proc.stderr, proc.stderr


def test_json_to_a_closed_stdout_is_refused_as_the_table_is(photo: Path, tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    cmd = _predict_cmd(model, str(photo), "--json", "-")
    closed = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed.stderr


def test_an_output_naming_the_model_predicting_or_one_the_pipeline_wrote_is_refused(
    photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    pipeline_skeleton(project)
    model = write_tiny_onnx(project / "models" / "model.onnx")
    (project / "models" / "model.pt").write_bytes(b"trained")
    kept = {p: p.read_bytes() for p in (project / "models").iterdir()}
    (project / "notes").mkdir()
    (project / "notes" / "mp.json").symlink_to(project / "models" / "model.pt")
    monkeypatch.chdir(project / "notes")  # the model found in the project above
    cases = [
        (["--csv", str(model)], f"--csv {model} names the model predicting"),
        (
            ["--json", "../models/model.pt"],
            "--json ../models/model.pt names one of the pipeline's, DVC's, git's or uv's own files",
        ),
        (
            ["--json", "mp.json"],
            "--json mp.json names one of the pipeline's, DVC's, git's or uv's own files (models",
        ),
    ]
    (project / "data" / "processed").mkdir(parents=True)
    (project / "notes" / "dlink").symlink_to(project / "data")  # a folder's link: that folder
    cases.append((["--csv", "dlink/processed/x.csv"], GUARDED))
    # A file DVC links into its cache (cache.type symlink) is the pipeline's by its place.
    cached = project / ".dvc" / "cache" / "files" / "md5" / "ab" / ("c" * 30)
    cached.parent.mkdir(parents=True)
    cached.write_text("{}")
    (project / "data" / "processed" / "meta.json").symlink_to(cached)
    cases.append(
        (
            ["--json", "../data/processed/meta.json"],
            "names one of the pipeline's, DVC's, git's or uv's own files",
        )
    )
    for args, said in cases:
        caplog.clear()
        assert main(["predict", str(photo), *args]) == 2, args
        assert said in caplog.text, caplog.text
    assert {p: p.read_bytes() for p in (project / "models").iterdir()} == kept
    assert [p.name for p in (project / "data" / "processed").iterdir()] == ["meta.json"]
    assert (
        cached.read_text() == "{}" and (project / "data" / "processed" / "meta.json").is_symlink()
    )
    # The project's own records, and its raw data and samples.
    records = ("dvc.lock", "params.yaml", "data/raw/source.json", "data/samples/x.png")
    outputs = ("metrics/train.json", "dvclive/train/metrics.json", "logs/tensorboard/x.csv")
    code = ("conf/config.yaml", "stages/train.py", ".dvc/config", ".git/config", ".dvcignore")
    code += ("data/my_photos.dvc",)  # `dvc add data/my_photos`'s record
    code += ("pyproject.toml", "uv.lock", ".gitignore", "photos/.gitattributes")  # any folder's
    code += ("notes/pyproject.toml", "notes/.python-version")
    for name in (*records, *outputs, *code):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("kept")
        flag = "--grid" if name.endswith(".png") else "--json"
        caplog.clear()
        assert main(["predict", str(photo), flag, f"../{name}"]) == 2, name
        assert f"{flag} ../{name} {GUARDED}" in caplog.text
        assert (project / name).read_text() == "kept"
    # What the pipeline never writes, beside what it does: a user's own files there are free.
    for name in ("data/my_photos/p.csv", "logs/today.csv", "models/notes.json"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        flag = "--csv" if name.endswith(".csv") else "--json"
        assert main(["predict", str(photo), flag, f"../{name}"]) == 0, caplog.text
        assert (project / name).stat().st_size > 0
    # The predict stage's own file linked into the cache: the link is replaced, the cache kept.
    stage_json = project / "predictions" / "predictions.json"
    stage_json.parent.mkdir()
    (linked := cached.with_name("d" * 30)).write_text("[]")
    stage_json.symlink_to(linked)
    assert main(["predict", str(photo), "--json", "../predictions/predictions.json"]) == 0
    assert not stage_json.is_symlink() and json.loads(stage_json.read_text())[0]["top"]
    assert linked.read_text() == "[]"
    # The .git/ of a bigger repository the project is a folder of.
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("kept")
    caplog.clear()
    assert main(["predict", str(photo), "--json", "../../.git/config"]) == 2
    assert f"--json ../../.git/config {GUARDED}" in caplog.text
    assert (tmp_path / ".git" / "config").read_text() == "kept"
    # Outside any project, a data/processed/ is another project's own (a cookiecutter layout).
    other = tmp_path / "other"
    (other / "data" / "processed").mkdir(parents=True)
    monkeypatch.chdir(other)
    args = ["predict", str(photo), "--model", str(model), "--csv", "data/processed/p.csv"]
    assert main(args) == 0 and (other / "data" / "processed" / "p.csv").is_file()
    # Run from there, the project's files are still refused where the output names them.
    for out in ("models/model.pt", "data/processed/meta.json", "dvc.lock"):
        caplog.clear()
        assert main([*args[:-1], str(project / out)]) == 2, out
        assert "names one of the pipeline's, DVC's, git's or uv's own files" in caplog.text
    # So is another DVC project's dvc.lock; its data/ and models/ are its own (it has no stages
    # of this pipeline: it imports the model, say).
    (other / "dvc.yaml").write_text("stages: {}\n")
    (other / "dvc.lock").write_text("kept")
    assert main(args) == 0
    assert main([*args[:-1], "models/model.pt"]) == 0
    assert main([*args[:-1], "dvc.lock"]) == 2 and (other / "dvc.lock").read_text() == "kept"


def test_an_output_linked_into_a_folder_that_is_not_there_is_not_written(
    photo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A link to a USB drive that is not mounted: `>` says no such file; its folders are never
    # made on the system disk.
    model = write_tiny_onnx(tmp_path / "model.onnx")
    link, out_csv = tmp_path / "usb.json", tmp_path / "p.csv"
    link.symlink_to(tmp_path / "media" / "usb" / "out.json")
    args = ["predict", str(photo), "--model", str(model), "--json", str(link)]
    assert main([*args, "--csv", str(out_csv)]) == 1
    assert f"cannot write --json {link}: it is a link to {tmp_path}/media/usb/out.json, whose" in (
        caplog.text
    )
    assert not (tmp_path / "media").exists() and out_csv.read_text().startswith("file,")
    # A folder that is such a link: the same.
    caplog.clear()
    (tmp_path / "outdir").symlink_to(tmp_path / "media" / "usb")
    args = [
        "predict",
        str(photo),
        "--model",
        str(model),
        "--json",
        str(tmp_path / "outdir/x.json"),
    ]
    assert main(args) == 1
    said = f"its folder {tmp_path}/outdir is a link to {tmp_path}/media/usb, which does not exist"
    assert said in caplog.text, caplog.text
    assert not (tmp_path / "media").exists()


def test_outputs_sent_to_dev_null_may_be_several(photo: Path, tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    outputs = ("--json", "/dev/null", "--csv", "/dev/null", "--grid", "/dev/null")
    cmd = [*_predict_cmd(model, str(photo)), *outputs]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(photo)) and str(photo) not in proc.stderr, proc
    # stdout discarded too: neither output is taken for a request of stdout.
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    assert proc.returncode == 0 and str(photo).encode() not in proc.stderr, proc.stderr


def test_outputs_go_through_links_pipes_and_devices(photo: Path, tmp_path: Path) -> None:
    # `--json link.json` writes the file the link names; `--csv >(sort)` and `--json
    # /dev/stdout` write into the pipe (each had been replaced, or refused, as a file).
    model = write_tiny_onnx(tmp_path / "model.onnx")
    target, link = tmp_path / "kept" / "target.json", tmp_path / "link.json"
    target.parent.mkdir()
    target.write_text("old")
    link.symlink_to(target)
    piped = tmp_path / "piped.csv"
    outputs = f"--json {link} --csv >(cat > {piped}.part && mv {piped}.part {piped})"
    script = f"{shlex.join(_predict_cmd(model, str(photo)))} {outputs}; wait"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env())
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and json.loads(target.read_text())[0]["file"] == str(photo)
    deadline = time.monotonic() + 30  # `cat` may still be copying when bash is done
    while not piped.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert piped.read_text().startswith("file,class_1,")
    proc = subprocess.run(
        [*_predict_cmd(model, str(photo)), "--json", "/dev/stdout"],
        capture_output=True,
        text=True,
        env=env(),
    )
    assert proc.returncode == 0 and '"file": ' in proc.stdout, proc.stderr


def test_failed_inputs_are_named_on_stderr_when_the_table_goes_elsewhere(
    photo: Path, tmp_path: Path
) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    table = tmp_path / "table.txt"
    with table.open("w") as out:
        proc = subprocess.run(
            _predict_cmd(model, str(photo), "/nonexistent.jpg", "-"),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
    assert proc.returncode == 1
    named = "2 of 3 inputs failed: /nonexistent.jpg (no such file or directory); - (standard input"
    assert named in proc.stderr, proc.stderr
    assert len(table.read_text().splitlines()) == 3


def test_an_output_naming_the_file_stdout_or_stderr_goes_to_is_written_into_it(
    photo: Path,
    tmp_path: Path,
) -> None:
    # `--json /dev/stderr 2>>app.log` replaced app.log (a week of logs gone) and every line
    # printed after went to the replaced file; `--csv /dev/stdout >> log.txt` lost its header.
    model = write_tiny_onnx(tmp_path / "model.onnx")
    cmd = shlex.join(_predict_cmd(model, str(photo)))
    log, out, appended = tmp_path / "app.log", tmp_path / "out.json", tmp_path / "log.txt"
    log.write_text("line1 of a week of logs\n")
    appended.write_text("header\n")
    script = (
        f"{cmd} --json /dev/stderr 2>>{log} >/dev/null && {cmd} --json /dev/stdout >{out} && "
        f"{cmd} --csv /dev/stdout >>{appended}"
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    assert log.read_text().startswith("line1 of a week of logs\n[\n"), log.read_text()
    assert json.loads(out.read_text())[0]["file"] == str(photo)  # the table went to stderr
    assert appended.read_text().startswith("header\nfile,class_1,"), appended.read_text()


def test_a_reader_of_stdout_named_as_a_file_that_stops_reading_stops_the_command_quietly(
    photo: Path,
    tmp_path: Path,
) -> None:
    # `--json /dev/stdout | head -1`, as `--json - | head -1`; and stdout closed (`>&-`) with
    # /dev/stdout named: refused as with `-`, not a traceback.
    model = write_tiny_onnx(tmp_path / "model.onnx")
    cmd = _predict_cmd(model, str(photo), "--json", "/dev/stdout")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "cannot write" not in err
    closed = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed.stderr


def test_the_stage_whose_reader_stops_reading_ends_quietly(
    exported_model: Path, tmp_path: Path
) -> None:
    # `python stages/predict.py | head -1`, as the command's `| head -1`.
    (tmp_path / paths.ONNX_MODEL).parent.mkdir()
    shutil.copy(exported_model / "model.onnx", tmp_path / paths.ONNX_MODEL)
    (tmp_path / paths.SAMPLES_DIR).parent.mkdir()
    _images(tmp_path / paths.SAMPLES_DIR)
    (tmp_path / "params.yaml").write_text("predict:\n  inputs: []\n")
    script = [sys.executable, str(Path(__file__).parents[2] / "stages" / "predict.py")]
    e = {**env(), "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "DVC_STAGE": "predict"}
    proc = subprocess.Popen(
        script, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
    assert (tmp_path / paths.PREDICTIONS).is_file()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_prediction_counts_its_photos_on_a_terminal_and_clears_the_count(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of photos take minutes: the count rewrites one line of a terminal's stderr,
    blanked before the table; a pipe or a log gets none of it."""
    import visionpipe.predict as predict_module

    monkeypatch.setattr(predict_module, "PROGRESS_MIN", 2)
    photos = sorted(_images(tmp_path / "photos").values())
    model = OnnxBackend(exported_model / "model.onnx")
    terminal = _Terminal()
    monkeypatch.setattr(predict_module.sys, "stderr", terminal)
    monkeypatch.setattr(predict_module.time, "monotonic", iter(range(10, 1000, 10)).__next__)
    done, stopped = predict_module._predict_showing_progress(photos, model, 3, 1)
    assert [p.file for p in done] == [str(p) for p in photos] and stopped is None
    shown = terminal.getvalue()
    assert shown.startswith(f"\rpredicted 1 of {len(photos)} photos"), shown
    assert f"predicted {len(photos)} of" not in shown  # the last is the table's to show
    last = f"predicted {len(photos) - 1} of {len(photos)} photos"
    assert shown.endswith(f"\r{last}\r" + " " * len(last) + "\r"), shown  # blanked
    piped = io.StringIO()
    monkeypatch.setattr(predict_module.sys, "stderr", piped)
    predict_module._predict_showing_progress(photos, model, 3, 1)
    assert piped.getvalue() == ""


def test_a_ctrl_c_keeps_the_photos_predicted_before_it(
    exported_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An hour's collection stopped at its last minute: the table and the files asked for
    hold what was predicted, and the exit status is a Ctrl-C's."""
    import visionpipe.predict as predict_module

    photos = sorted(_images(tmp_path / "photos").values())
    real, calls = predict_module.predict_files, []

    def stopped_at_the_second_batch(*args: object) -> list[Prediction]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(predict_module, "predict_files", stopped_at_the_second_batch)
    out_csv, model = tmp_path / "p.csv", str(exported_model / "model.onnx")
    args = ["predict", *map(str, photos), "--model", model, "--batch-size", "1", "--csv"]
    assert main([*args, str(out_csv)]) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith(f"{photos[0]}: ")
    assert len(captured.out.splitlines()) == 1
    assert f"interrupted (Ctrl-C) after 1 of {len(photos)} photos: the table and the files" in (
        captured.err
    )
    assert len(out_csv.read_text().splitlines()) == 2  # the header and the one predicted


STOP_SCRIPT = """
import os, signal, sys
from visionpipe import predict
from visionpipe.cli import main
real_files, real_write, real_print, calls = (
    predict.predict_files, predict._write_outputs, predict._print_table, [])
def stopped_at_the_second_batch(*args):
    calls.append(1)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real_files(*args)
def written_through_a_second_signal(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # `uv run` passes the group's signal on: a second one
    return real_write(*args)
def to_a_closed_pipe(*args):
    raise BrokenPipeError  # `| tee`, which the terminal's Ctrl-C stopped too
predict.predict_files = stopped_at_the_second_batch
predict._write_outputs = written_through_a_second_signal
if sys.argv[1].startswith("tee"):
    predict._print_table = to_a_closed_pipe
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("reader", "kept"),
    [
        ("terminal", "the table and the files asked for hold those"),
        ("tee", "the files asked for hold those (standard output's reader stopped too)"),
        ("tee alone", "none kept: standard output's reader stopped too"),  # no --csv holds them
        ("tee stdout", "none kept: standard output's reader stopped too"),  # --json /dev/stdout
        ("tee stderr", "the files asked for hold those"),  # --json /dev/stderr, to the terminal
    ],
)
def test_what_a_stop_kept_is_written_through_a_second_signal_and_a_closed_pipe(
    exported_model: Path, tmp_path: Path, reader: str, kept: str
) -> None:
    photos = sorted(_images(tmp_path / "photos").values())
    out_csv, model = tmp_path / "p.csv", str(exported_model / "model.onnx")
    args = ["predict", *map(str, photos), "--model", model, "--batch-size", "1"]
    args += {
        "tee alone": [],
        "tee stderr": ["--json", "/dev/stderr"],
        "tee stdout": ["--json", "/dev/stdout"],
    }.get(reader, ["--csv", str(out_csv)])
    e = {**env(), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", STOP_SCRIPT, reader, *args],
        env=e, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-3000:]
    said = f"interrupted (Ctrl-C) after 1 of {len(photos)} photos: {kept}"
    assert said in done.stderr, done.stderr
    if not reader.startswith("tee "):
        assert len(out_csv.read_text().splitlines()) == 2  # the header and the one predicted


def test_photos_the_project_s_model_learned_from_are_named_under_the_accuracy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A learner predicts the very folder its data came from (dvc.lock's data.source): the photos
    # of the train and validation splits (split.csv) score the model on what it learned.
    project, photos = tmp_path / "project", tmp_path / "photos"
    for name in ("cat/a.png", "cat/b.png", "dog/c.png", "frog/d.png"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), "red").save(photos / name)
    # A `dvc add`ed folder under cache.type symlink: each photo a link into the cache.
    cached = tmp_path / "cache" / "ab12"
    cached.parent.mkdir()
    (photos / "dog" / "c.png").rename(cached)
    (photos / "dog" / "c.png").symlink_to(cached)
    (project / "stages").mkdir(parents=True)
    (project / "stages" / "train.py").write_text("")
    (project / "dvc.yaml").write_text("stages: {}\n")
    model = write_tiny_onnx(project / "models" / "model.onnx")
    (project / "data" / "processed").mkdir(parents=True)
    (project / "data" / "processed" / "split.csv").write_text(
        "file,class,split,index\ncat/a.png,cat,train,0\ndog/c.png,dog,val,0\n"
        "cat/b.png,cat,test,0\nfrog/d.png,frog,test,1\n"
    )
    monkeypatch.setenv("PHOTOS_HOME", str(tmp_path))
    # params.yaml composed anew since (no run): the data came from what dvc.lock recorded.
    (project / "params.yaml").write_text("data: {source: elsewhere.zip}\n")
    said = "2 of the 4 photos scored are in the train or validation split of"
    for source, warned in ((str(photos), True), ("$PHOTOS_HOME/photos", True), ("p.zip", False)):
        (project / "dvc.lock").write_text(
            f"schema: '2.0'\nstages:\n  download:\n    params:\n      params.yaml:\n"
            f"        data.source: '{source}'\n"
        )
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert main(["predict", str(photos), "--model", str(model)]) == 0
        assert (said in caplog.text) is warned, (source, caplog.text)
    # Another project's model: nothing to say.
    caplog.clear()
    other = write_tiny_onnx(tmp_path / "other.onnx")
    with caplog.at_level("WARNING"):
        assert main(["predict", str(photos), "--model", str(other)]) == 0
    assert "learned from" not in caplog.text
