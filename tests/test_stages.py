"""Stage scripts as DVC runs them: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, env


def _stage(name: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    e = {**env(), "PYTHONPATH": str(ROOT / "src"), **extra_env}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("stage", ["download", "preprocess", "predict"])
def test_bad_params_fail_every_stage_before_any_work(tmp_path: Path, stage: str) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  lr_rate: 0.1\n")
    proc = _stage(stage, tmp_path)
    assert proc.returncode == 1
    assert "unknown key 'train.lr_rate'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists(), "nothing may be written before params are valid"


def test_missing_upstream_output_names_the_command_to_run(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = _stage("evaluate", tmp_path)
    assert proc.returncode == 1 and "dvc repro train" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = _stage("evaluate", tmp_path, VISIONPIPE_DEBUG="1")
    assert "Traceback" in debug.stderr  # the escape hatch for bug reports
