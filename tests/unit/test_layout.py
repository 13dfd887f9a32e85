"""The codebase's shape, as STYLE.md asks: thin stages, one job per module (short functions and
no import cycles: test_architecture)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = sorted((ROOT / "src" / "visionpipe").rglob("*.py"))
MAX_STAGE_LINES = 40
TRAINING_MODULES = {"train", "batches", "optim", "checkpoints", "tracking", "distributed"}


def test_every_module_says_what_it_is_for() -> None:
    missing = [
        str(p.relative_to(ROOT)) for p in SRC if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"


def test_stage_scripts_are_thin() -> None:
    for script in sorted((ROOT / "stages").glob("*.py")):
        lines = len(script.read_text().splitlines())
        assert lines <= MAX_STAGE_LINES, f"{script.name} has {lines} lines: move logic to src/"


@pytest.mark.parametrize("stage", ["evaluate", "export", "predict"])
def test_scoring_stages_do_not_load_the_training_code(stage: str) -> None:
    # Otherwise an edit to the training loop would re-run them (dvc.yaml lists what they load).
    script = str(ROOT / "stages" / f"{stage}.py")
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {script!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
        check=True,
    )
    loaded = {m.split(".")[1] for m in json.loads(proc.stdout) if m.startswith("visionpipe.")}
    assert not loaded & TRAINING_MODULES, f"{stage} loads {sorted(loaded & TRAINING_MODULES)}"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="reads the git repository")
def test_a_windows_checkout_has_the_line_endings_dvc_lock_hashed(tmp_path: Path) -> None:
    """Git for Windows (core.autocrlf=true) checks text out with CRLF unless .gitattributes says
    otherwise: DVC would then hash every stage's code and config anew and re-run it all."""
    clone = tmp_path / "clone"
    git = ["git", "-c", "core.autocrlf=true"]
    subprocess.run([*git, "clone", "-q", str(ROOT), str(clone)], check=True, capture_output=True)
    listed = subprocess.run(
        [*git, "ls-files", "--eol"], cwd=clone, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    crlf = [line.split("\t")[-1] for line in listed if "w/crlf" in line.split("\t")[0]]
    assert not crlf, f"checked out with CRLF: {crlf[:5]}"
    assert b"\r" not in (clone / "dvc.yaml").read_bytes()
