"""The lint settings hold in a workspace where the pipeline has run, not only in a fresh clone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_import_order_holds_beside_the_dvclive_output_folder(tmp_path: Path) -> None:
    # A run writes dvclive/ at the project root (DVCLive's logs); ruff must still sort the
    # dvclive package with the other third-party ones, as in src/visionpipe/tracking.py.
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "dvclive" / "train").mkdir(parents=True)
    (tmp_path / "uses_live.py").write_text(
        "from dvclive import Live\nfrom torch.utils.tensorboard import SummaryWriter\n\n"
        "__all__ = ['Live', 'SummaryWriter']\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "I", "uses_live.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_learners_notebooks_are_not_linted(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "notebooks").mkdir()
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
            "source": ["import os, sys\n", "x=1;y=2"]}  # fmt: skip
    notebook = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "notebooks" / "lesson.ipynb").write_text(json.dumps(notebook))
    (tmp_path / "ok.py").write_text("X = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
