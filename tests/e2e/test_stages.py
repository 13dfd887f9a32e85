"""Stage scripts as DVC runs them: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_stage

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


def test_missing_upstream_output_names_the_command_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = run_stage("evaluate", tmp_path)
    assert proc.returncode == 1 and "dvc repro train" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_stage("evaluate", tmp_path, VISIONPIPE_DEBUG="1")
    assert "Traceback" in debug.stderr  # the escape hatch for bug reports
