"""docs/learning.md: its training loop runs on preprocessed splits as the page has it, builds the
pipeline's default network, and every `module.name` the lessons table points at exists."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import ROOT, pipeline_skeleton
from visionpipe import paths
from visionpipe.modelfile import load_model
from visionpipe.models import tutorial_cnn
from visionpipe.split_tensors import load_split, read_meta

PAGE = ROOT / "docs" / "learning.md"
SRC = ROOT / "src" / "visionpipe"


def _python_blocks() -> list[str]:
    """The page's python blocks: the tutorial's loop, then the dog in a notebook."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 2, f"docs/learning.md: expected the loop and the dog, got {len(blocks)}"
    return blocks


def test_the_tutorials_loop_runs_on_the_preprocessed_splits(processed: Path) -> None:
    block = _python_blocks()[0]
    runs = []
    for earlier_seed in (1, 2):  # whatever ran before: the page quotes one figure
        torch.manual_seed(earlier_seed)
        namespace: dict[str, object] = {"__name__": "__learning__"}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(PAGE), "exec"), namespace)
        assert re.fullmatch(r"test accuracy after one epoch: [01]\.\d{3}\n", out.getvalue())
        runs.append(namespace["model"].state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]), "the loop is not seeded"
    # The page says its Sequential is the pipeline's default network: same keys, same shapes.
    theirs = {k: v.shape for k, v in namespace["model"].state_dict().items()}
    ours = {k: v.shape for k, v in tutorial_cnn(3, 16).state_dict().items()}
    assert theirs == ours


def test_a_notebook_in_a_subfolder_reads_the_projects_splits_and_model(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jupyter runs a notebook in its own folder (`notebooks/`): the splits and model.pt the page
    loads are found in the project above it, as `git` and `dvc` find theirs."""
    project = tmp_path / "project"
    shutil.copytree(exported_model.parent, project)  # the shared fixture stays as it is
    (project / "dvc.yaml").write_text("stages: {}\n")
    notebooks = project / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    images, labels = load_split("test")
    model, info = load_model(paths.MODEL)
    assert read_meta()["classes"] == info.classes
    assert model(images[:4].float() / 255).shape == (min(4, len(labels)), len(info.classes))
    # And the project's params, as the stages load them.
    (project / "params.yaml").write_text("train: {lr: 0.02}\n")
    from visionpipe.config import load_section
    from visionpipe.config.train import TrainConfig

    assert load_section("train", TrainConfig).lr == 0.02
    # A stray params.yaml in the subfolder (`dvc exp run` run there leaves one) is not it.
    (notebooks / "params.yaml").write_text("train: {lr: 0.5}\n")
    assert load_section("train", TrainConfig).lr == 0.02


def test_the_library_s_calls_take_what_a_notebook_passes_or_say_what_they_take(
    exported_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from visionpipe.images import load_array
    from visionpipe.predict import open_backend, predict_files

    monkeypatch.chdir(exported_model.parent)
    photo = exported_model.parent / "photo.png"
    Image.new("RGB", (20, 20), "red").save(photo)
    for kind, name in (("onnx", "model.onnx"), ("torch", "model.pt")):
        backend = open_backend(kind, str(exported_model / name))  # a str, as typed
        got = predict_files((p for p in [str(photo), photo]), backend, topk=1)  # any iterable
        assert [len(p.top) for p in got] == [1, 1]
    with pytest.raises(TypeError, match="predict_files takes a list of files, not one"):
        predict_files(str(photo), backend)
    with pytest.raises(
        ValueError, match="topk and batch_size must be whole numbers of at least 1, not 0 and 64"
    ):
        predict_files([photo], backend, topk=0)
    assert predict_files(["a\0b.png"], backend)[0].error == "cannot read: embedded null byte"
    with pytest.raises(TypeError, match="take an image file's bytes, not a PngImageFile"):
        load_array(Image.open(photo), "photo", 8)
    assert load_array(memoryview(photo.read_bytes()), "photo", 8).shape == (3, 8, 8)
    with pytest.raises(TypeError, match="to_input takes uint8 pixels"):
        from visionpipe.models import to_input

        to_input(torch.from_numpy(np.zeros((1, 3, 8, 8), np.float32)))
    with pytest.raises(TypeError, match="to_input takes a torch tensor, not a ndarray"):
        to_input(np.zeros((1, 3, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="predict_files takes a list of files, not one"):
        predict_files(str(photo).encode(), backend)
    for topk in (2.5, True):
        with pytest.raises(ValueError, match="whole numbers of at least 1"):
            predict_files([photo], backend, topk=topk)
    assert len(predict_files([photo], backend, topk=np.int64(2))[0].top) == 2  # numpy's too
    with pytest.raises(ValueError, match="activation is 'none' or 'relu', not 'gelu'"):
        tutorial_cnn(3, 32, activation="gelu")


def test_a_notebook_outside_the_project_is_told_so_not_to_rerun_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kernel started in another folder (an editor's, a notebook saved elsewhere): the files
    # exist in the project, and `dvc repro` would not bring them here.
    monkeypatch.chdir(tmp_path)
    for call in (read_meta, lambda: load_split("train"), lambda: load_model(paths.MODEL)):
        with pytest.raises(FileNotFoundError) as caught:
            call()
        said = str(caught.value)
        assert f"{tmp_path} is not inside a visionpipe project" in said, said
        assert "dvc repro" not in said and "os.chdir" in said


def _notebook_folder(exported_model: Path, tmp_path: Path) -> Path:
    """A copy of the exported project with a `notebooks/` folder, and the README's
    ../shared/samples/dog.png beside it."""
    project = tmp_path / "project"
    shutil.copytree(exported_model.parent, project)  # the shared fixture stays as it is
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "notebooks").mkdir()
    (tmp_path / "shared" / "samples").mkdir(parents=True)
    Image.new("RGBA", (40, 30), (120, 80, 40, 0)).save(tmp_path / "shared" / "samples" / "dog.png")
    return project / "notebooks"


def test_the_dog_predicts_in_a_notebook_as_the_page_has_it(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's block, run in notebooks/: paths as typed (str), the model's own classes."""
    monkeypatch.chdir(_notebook_folder(exported_model, tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_python_blocks()[1], str(PAGE), "exec"), {"__name__": "__learning__"})
    classes = "|".join(load_model(paths.in_project(paths.MODEL))[1].classes)
    assert re.fullmatch(rf"({classes}) \d+\.\d%\n", out.getvalue())


def test_require_finds_the_files_the_page_names_from_a_notebook_and_says_when_outside(
    exported_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebooks = _notebook_folder(exported_model, tmp_path)
    monkeypatch.chdir(notebooks)
    for typed in ("models/model.onnx", Path("models/model.onnx")):
        assert paths.require(typed, "export") == notebooks.parent / "models" / "model.onnx"
    # One the stages have not written yet: the stage that writes it, from notebooks/ too.
    pipeline_skeleton(notebooks.parent)
    for typed in ("metrics/per_class.json", Path("metrics/per_class.json")):
        with pytest.raises(
            FileNotFoundError, match=r"run 'uv run dvc repro evaluate' first; in"
        ) as e:
            paths.require(typed, "evaluate")
        # DVC finds no dvc.yaml in notebooks/: where its commands run.
        assert str(e.value).endswith(f"(run the dvc commands in {notebooks.parent})"), e.value
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)  # a kernel started outside the project
    with pytest.raises(FileNotFoundError, match="is not inside a visionpipe project"):
        paths.require("logs/tensorboard", "train")


def test_every_name_the_lessons_point_at_exists() -> None:
    params = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    named = re.findall(r"`([a-z_]+)\.([A-Za-z_]+)`", PAGE.read_text())
    ours = [  # `models.to_input`, not a file (`models.py`) or a param (`train.momentum`)
        (m, n)
        for m, n in named
        if (SRC / f"{m}.py").is_file() and n != "py" and n not in params.get(m, {})
    ]
    assert len(ours) >= 10, f"the page should name the code of each lesson: {ours}"
    missing = [
        f"{m}.{n}" for m, n in ours if not hasattr(importlib.import_module(f"visionpipe.{m}"), n)
    ]
    assert not missing, f"docs/learning.md names what the code does not have: {missing}"


def test_every_param_the_lessons_name_exists() -> None:
    """A `section.key` on the page is a param of conf/config.yaml, or, where a module shares the
    section's name (`train.run`), a name in that module: a learner types what the page names."""
    params = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    sections = "|".join(k for k, v in params.items() if isinstance(v, dict))
    prose = re.sub(r"```.*?```", "", PAGE.read_text(), flags=re.S)  # the loop's `model.eval()`
    spans = re.findall(r"`([^`]+)`", prose)
    named = [
        name
        for span in spans
        for name in re.findall(rf"(?<![\w./])((?:{sections})\.[a-z_]+(?:\.[a-z_]+)*)", span)
    ]
    assert {"train.momentum", "model.activation", "train.backbone_lr_scale"} <= set(named)

    def exists(name: str) -> bool:
        section, *keys = name.split(".")
        node = params[section]
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            return True
        if not (SRC / f"{section}.py").is_file():
            return False
        return hasattr(importlib.import_module(f"visionpipe.{section}"), keys[0])

    missing = sorted({name for name in named if not exists(name)})
    assert not missing, f"docs/learning.md names params that conf/config.yaml lacks: {missing}"
