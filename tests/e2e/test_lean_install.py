"""The visionpipe wheel installed alone, as on a server or a small device: `visionpipe predict`
and `visionpipe serve` run an exported model.onnx without PyTorch, DVC or Hydra, and give the
same answers as the project's own environment; the pipeline's commands say where they run.

The environment is built the way docs/deploy.md says (`uv build --wheel`, then an install of the
wheel), pinned to this environment's versions so that uv takes them from its cache.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.heic_fixtures import HEIC_DIR
from tests.helpers import DOG_PNG, ROOT, env, install_pinned, make_venv, run
from tests.serving import post_image, serve

UV = shutil.which("uv")
DOG = DOG_PNG
pytestmark = pytest.mark.skipif(UV is None, reason="builds the wheel with uv")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300, **kw)


@pytest.fixture(scope="module")
def lean_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The python of a fresh venv holding the visionpipe wheel and what it depends on."""
    root = tmp_path_factory.mktemp("lean")
    assert UV is not None
    run([UV, "build", "-q", "--wheel", "--out-dir", str(root / "dist"), str(ROOT)], root)
    (wheel,) = (root / "dist").glob("visionpipe-*.whl")
    python = make_venv(root / "venv")
    install_pinned(python, wheel)
    return python


def test_the_wheel_installs_no_pipeline_packages(lean_python: str) -> None:
    listed = _run([UV or "uv", "pip", "list", "--python", lean_python, "--format", "json"])
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "visionpipe" in names and "onnxruntime" in names
    assert names.isdisjoint({"torch", "torchvision", "dvc", "hydra-core", "pydantic", "onnx"})
    version = _run([lean_python, "-m", "visionpipe.cli", "--version"])
    assert version.stdout == f"visionpipe {importlib.metadata.version('visionpipe')}\n"


@pytest.mark.skipif(not DOG.is_file(), reason="needs ../shared/samples/dog.png")
def test_predict_and_serve_answer_as_the_project_does(
    lean_python: str, exported_model: Path, tmp_path: Path
) -> None:
    model = exported_model / "model.onnx"
    answers = _predicted_by_both(DOG, model, lean_python, tmp_path)
    assert answers["wheel"] == answers["project"]

    with serve(model, tmp_path / "serve.log", "--topk", "3", python=lean_python) as served:
        status, body = post_image(f"{served.url}/predict?name=dog.png", DOG.read_bytes())
    assert status == 200, body
    assert body["predictions"][0]["top"] == answers["project"][0]["top"]


def test_the_wheel_reads_iphone_photos(
    lean_python: str, exported_model: Path, tmp_path: Path
) -> None:
    """pi-heif is a dependency of the package, not of the pipeline: HEIC decodes there too."""
    photo = HEIC_DIR / "rotated.heic"
    answers = _predicted_by_both(photo, exported_model / "model.onnx", lean_python, tmp_path)
    assert answers["wheel"] == answers["project"]


def _predicted_by_both(photo: Path, model: Path, lean_python: str, tmp_path: Path) -> dict:
    """`visionpipe predict --json` of `photo` by the project's Python and the wheel's."""
    answers = {}
    for name, python in (("project", sys.executable), ("wheel", lean_python)):
        out = tmp_path / f"{name}.json"
        cmd = [python, "-m", "visionpipe.cli", "predict", str(photo), "--model", str(model)]
        done = _run([*cmd, "--topk", "3", "--json", str(out)], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        answers[name] = json.loads(out.read_text())
    return answers


def test_the_pipeline_commands_say_where_they_run(
    lean_python: str, exported_model: Path, tmp_path: Path
) -> None:
    cli = [lean_python, "-m", "visionpipe.cli"]
    params = _run([*cli, "params", "train.lr=0.1"], cwd=tmp_path)
    assert params.returncode == 1
    assert "visionpipe params needs the package 'yaml', which this install lacks" in params.stderr
    assert "uv sync --locked" in params.stderr and "Traceback" not in params.stderr

    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 16), (200, 120, 40)).save(photo)
    model = str(exported_model / "model.pt")
    cmd = [*cli, "predict", str(photo), "--backend", "torch", "--model", model]
    torch = _run(cmd, cwd=tmp_path)
    assert torch.returncode == 1
    assert "visionpipe predict --backend torch needs the package 'torch'" in torch.stderr
    assert "Traceback" not in torch.stderr
