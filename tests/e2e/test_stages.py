"""Stage scripts as DVC runs them: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, git, pipeline_skeleton, run_stage

# A stage checks the sections it reads (and that every top-level key is a known section);
# the train stage reads them all.
BAD = {
    "download": ("data:\n  dataset: mnist\n", "'data.dataset' = 'mnist'"),
    "preprocess": ("preprocess:\n  image_size: 3\n", "'preprocess.image_size' = 3"),
    "train": ("train:\n  lr_rate: 0.1\n", "unknown key 'train.lr_rate'"),
    "evaluate": ("train:\n  batch_size: 0\n", "'train.batch_size' = 0"),
    "export": ("export:\n  opset: 5\n", "'export.opset' = 5"),
    "predict": ("predict:\n  topk: 0\n", "'predict.topk' = 0"),
}


@pytest.mark.parametrize("stage", list(BAD))
def test_bad_params_fail_a_stage_before_any_work(tmp_path: Path, stage: str) -> None:
    text, message = BAD[stage]
    for params, expected in ((text, message), ("trian: {}\n", "unknown key 'trian'")):
        (tmp_path / "params.yaml").write_text(params)
        proc = run_stage(stage, tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr
        written = [p.name for p in tmp_path.iterdir() if p.name != "params.yaml"]
        assert written == [], f"nothing may be written before params are valid: {written}"
    if stage == "evaluate":  # as DVC runs it: its outputs are gone by then, which is said
        proc = run_stage(stage, tmp_path, DVC_STAGE=stage)
        assert "(DVC removed the evaluate stage's outputs as it started it" in proc.stderr
        assert "`uv run dvc checkout --force evaluate` brings back the last ones" in proc.stderr
        # Its outputs kept in git rather than DVC's cache come back by git.
        shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
        metrics = tmp_path / "dvclive" / "eval" / "metrics.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text("{}\n")
        lock = "schema: '2.0'\nstages:\n  evaluate: {cmd: a}\n  train: {cmd: b}\n"
        (tmp_path / "dvc.lock").write_text(lock)
        git(tmp_path, "init", "-q")
        git(tmp_path, "add", "dvclive", "dvc.lock")
        git(tmp_path, "commit", "-qm", "a run")
        back = "uv run dvc checkout --force evaluate && git checkout -- dvclive/eval/metrics.json"
        # Another stage's entry changed since the commit (train ran again): evaluate's are the
        # commit's, and git brings them back.
        (tmp_path / "dvc.lock").write_text(lock.replace("cmd: b", "cmd: c"))
        proc = run_stage(stage, tmp_path, DVC_STAGE=stage)
        assert f"`{back}` brings back the last ones meanwhile)" in proc.stderr, proc.stderr
        # `dvc repro ../dvc.yaml` from a sub-folder: git's paths as from there.
        proc = run_stage(stage, tmp_path, DVC_STAGE=f"../dvc.yaml:{stage}")
        assert (
            "`uv run dvc checkout --force ../dvc.yaml:evaluate && git checkout --"
            " ../dvclive/eval/metrics.json`"
        ) in proc.stderr, proc.stderr
        # An experiment applied since (evaluate's entry not the commit's): git would bring back
        # the commit's metrics beside the experiment's model, so only dvc checkout is offered.
        (tmp_path / "dvc.lock").write_text(lock.replace("cmd: a", "cmd: d"))
        proc = run_stage(stage, tmp_path, DVC_STAGE=stage)
        assert (
            "`uv run dvc checkout --force evaluate` brings back the last ones meanwhile; not"
            " dvclive/eval/metrics.json, which the next run writes)"
        ) in proc.stderr, proc.stderr
        assert "fatal" not in proc.stderr


def test_missing_upstream_output_names_the_command_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    pipeline_skeleton(tmp_path)  # a project, as DVC runs stages in one
    proc = run_stage("evaluate", tmp_path)
    assert proc.returncode == 1 and "dvc repro train" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_stage("evaluate", tmp_path, VISIONPIPE_DEBUG="1")
    assert "Traceback" in debug.stderr  # the escape hatch for bug reports


def _photos_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("photos/cats/1.jpg", "photos/dogs/2.jpg"):
            zf.writestr(name, b"\xff\xd8" + bytes(range(256)) * 200)
    return path


@pytest.mark.parametrize("kind", ["photo", "truncated zip", "text"])
def test_download_refuses_a_source_that_is_no_folder_or_archive_naming_it(
    tmp_path: Path, kind: str
) -> None:
    """A photo, a zip cut short (its central directory lost) or any other file is refused by
    the download stage, naming data.source's value, rather than by preprocess with a
    traceback about data/raw's copy."""
    if kind == "photo":
        source = tmp_path / "IMG_0000.jpg"
        source.write_bytes(b"\xff\xd8\xff\xe0" + bytes(1000))
    elif kind == "truncated zip":
        whole = _photos_zip(tmp_path / "whole.zip").read_bytes()
        source = tmp_path / "photos.zip"
        source.write_bytes(whole[: len(whole) // 2])
    else:
        source = tmp_path / "notes.txt"
        source.write_text("not photos")
    (tmp_path / "params.yaml").write_text(f"data:\n  dataset: imagefolder\n  source: {source}\n")
    proc = run_stage("download", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"data.source '{source}'" in proc.stderr
    fix = "again" if kind == "truncated zip" else ".zip, .tar, .tar.gz or .tgz"
    assert fix in proc.stderr
    assert not list((tmp_path / "data" / "raw").glob("*"))


def test_preprocess_names_a_truncated_tar_in_one_line(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in ("cats/1.jpg", "dogs/2.jpg"):
            info = tarfile.TarInfo(name)
            data = bytes(range(256)) * 400
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "photos.tar.gz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "params.yaml").write_text("data:\n  dataset: imagefolder\n  source: x.tar.gz\n")
    proc = run_stage("preprocess", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "photos.tar.gz is corrupt or truncated" in proc.stderr
    assert "copy or download data.source again" in proc.stderr
    assert "(data.source: '" in proc.stderr and "x.tar.gz')" in proc.stderr  # the user's file
