"""What DVC's machine-readable clients (VS Code's DVC extension, Studio) get from
`dvc plots show --json` for the plots this project's dvc.yaml declares."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = Path("dvclive/eval/plots/custom")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC project with the real dvc.yaml and plots_template/, and per-class scores."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "project"
    repo.mkdir()
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(args, cwd=repo, check=True)
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "plots_template", repo / "plots_template")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    (repo / PER_CLASS).mkdir(parents=True)
    for figure, values in (("recall", (0.4, 0.5, 0.6)), ("precision", (0.5, 0.55, 0.6))):
        rows = [
            {"class": c, figure: v} for c, v in zip(("cat", "dog", "frog"), values, strict=True)
        ]
        (repo / PER_CLASS / f"per_class_{figure}.json").write_text(json.dumps(rows))
    return repo


# From a sub-folder too: DVC looks a template up in .dvc/plots/, else from the current folder.
@pytest.mark.parametrize("where", [".", "src"])
def test_per_class_bars_start_at_zero_on_a_fixed_axis(project: Path, where: str) -> None:
    # DVC's bar_horizontal starts the axis at the smallest value: the worst class had no bar.
    (project / where).mkdir(exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=project / where,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    plots = json.loads(out)["data"]
    for figure in ("recall", "precision"):
        path = os.path.relpath(PER_CLASS / f"per_class_{figure}.json", where)  # as DVC names it
        [plot] = plots[path]
        spec = plot["content"]
        assert len(spec["data"]["values"]) == 3, spec
        x = spec["encoding"]["x"]
        assert x["field"] == figure and x["scale"] == {"domain": [0, 1]}, x
        # Vega-Lite binds zoom only to continuous scales; the class axis is nominal.
        assert not any(p.get("bind") == "scales" for p in spec.get("params", [])), spec
        # A band per class, so the chart grows with the classes: DVC's fixed 300 px gave each
        # of a hundred classes 3 px, its labels printed over each other.
        assert isinstance(spec["height"], dict) and spec["height"]["step"] >= 20, spec["height"]
