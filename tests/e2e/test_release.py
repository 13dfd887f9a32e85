"""What `uv build` makes for a release: an sdist of what builds the wheel and nothing a run or a
DVC remote leaves in the project, and a wheel built from that sdist alone that runs."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import visionpipe
from tests.helpers import ROOT, run

UV = shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="builds with uv")

# What the project holds once it has run and has a remote: none of it belongs in a release.
KEPT_OUT = {
    ".dvc/config.local": "['remote \"storage\"']\n    secret_access_key = NOT-FOR-PYPI\n",
    ".dvc/cache/files/md5/97/04ff": "the dataset",
    ".dvc/tmp/lock": "",
    "data/raw/cifar10.zip": "the dataset",
    "models/model.pt": "weights",
    "dvclive/metrics.json": "{}",
    "notes.txt": "a user's scratch file",
}


def _project(root: Path) -> Path:
    root.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(
        ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for name, text in KEPT_OUT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / ".dvc/.gitignore").write_text("/config.local\n/tmp\n/cache\n")
    return root


def test_the_sdist_holds_the_package_alone_and_builds_a_wheel_that_runs(tmp_path: Path) -> None:
    assert UV is not None
    project = _project(tmp_path / "project")
    (project.parent / "dist").mkdir()
    run([UV, "build", "-q", "--sdist", "--out-dir", "../dist"], project)
    (sdist,) = (tmp_path / "dist").glob("visionpipe-*.tar.gz")
    top = f"visionpipe-{visionpipe.__version__}/"
    with tarfile.open(sdist) as tar:
        names = [m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()]
    outside = [n for n in names if not n.startswith("src/visionpipe/")]
    assert sorted(outside) == [".gitignore", "LICENSE", "PKG-INFO", "README.md", "pyproject.toml"]
    assert "src/visionpipe/serve_page.html" in names and "src/visionpipe/py.typed" in names

    # The wheel from the sdist alone (as pip builds it where no wheel fits).
    run([UV, "build", "-q", "--wheel", "--out-dir", str(tmp_path / "wheel"), str(sdist)], tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("visionpipe-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        members = set(whl.namelist())
    info = f"visionpipe-{visionpipe.__version__}.dist-info"
    assert {"visionpipe/__main__.py", "visionpipe/serve_page.html", f"{info}/licenses/LICENSE"} <= (
        members
    )


def test_one_version_everywhere() -> None:
    """`visionpipe --version`, the installed metadata and the wheel's name read one number."""
    assert importlib.metadata.version("visionpipe") == visionpipe.__version__
    done = run([sys.executable, "-m", "visionpipe", "--version"], ROOT)
    assert done.stdout == f"visionpipe {visionpipe.__version__}\n"
