"""A stage re-runs only when what decides its output changes: adding a model, a training knob or a
recipe leaves the data stages cached, and a new predict key leaves train cached, as `dvc status`
reports them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import dvc, env, git, make_project, run

pytestmark = pytest.mark.slow

NEW_MODEL = """

def _wide(num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    return tutorial_cnn(num_classes, image_size)


MODELS["tutorial_wide"] = ModelSpec(
    _wide, "a stand-in model with a key of its own", {"width": Key(int, 64, "channels")}
)
"""


def _photos(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("ants", "bees")):
        (folder / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 80, (20, 20, 3)) + 120 * np.eye(3, dtype=int)[k]
            Image.fromarray(pixels.astype(np.uint8)).save(folder / cls / f"{i}.png")


def _stale(repo: Path, *stages: str) -> set[str]:
    """The stages `dvc status` says would re-run."""
    out = dvc(repo, "status", "--json", *stages).stdout
    return set(json.loads(out or "{}"))


def test_adding_a_model_knob_or_recipe_leaves_download_and_preprocess_cached(
    tmp_path: Path,
) -> None:
    _photos(tmp_path / "photos")
    repo = make_project(
        tmp_path / "repo",
        {
            "data": {"dataset": "imagefolder", "source": str(tmp_path / "photos")},
            "preprocess": {"image_size": 16},
        },
    )
    dvc(repo, "repro", "preprocess")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data")
    assert _stale(repo, "download", "preprocess") == set()

    # A new model with a key of its own, a new training knob, a new recipe: all three land in
    # the code and in conf/, and params.yaml is composed anew, as a user would do it.
    models = repo / "src/visionpipe/models.py"
    models.write_text(models.read_text() + NEW_MODEL)
    train_cfg = repo / "src/visionpipe/config/train.py"
    text = train_cfg.read_text().replace(
        "    channels_last: bool = True",
        "    grad_clip: float = 0.0  # new knob\n    channels_last: bool = True",
    )
    train_cfg.write_text(text)
    conf = repo / "conf/config.yaml"
    data = yaml.safe_load(conf.read_text())
    data["model"]["width"] = 64
    data["train"]["grad_clip"] = 0.0
    conf.write_text(yaml.safe_dump(data, sort_keys=False))
    (repo / "conf/recipe/wide.yaml").write_text(
        "# @package _global_\nrecipe: wide\nmodel:\n  name: tutorial_wide\n"
    )
    # The copy's own code composes and checks it (a queued experiment's code is its copy's).
    cli = [sys.executable, "-m", "visionpipe.cli", "params"]
    run(cli, repo, env={**env(), "PYTHONPATH": str(repo / "src")})
    assert "width: 64" in (repo / "params.yaml").read_text()

    assert _stale(repo, "download", "preprocess") == set()
    # The positive control: the stage whose code and params changed is stale.
    assert "train" in _stale(repo, "train")


def test_a_new_predict_key_re_runs_predict_and_never_train(tmp_path: Path) -> None:
    _photos(tmp_path / "photos")
    repo = make_project(
        tmp_path / "repo",
        {
            "data": {"dataset": "imagefolder", "source": str(tmp_path / "photos")},
            "preprocess": {"image_size": 16},
            "train": {"epochs": 1, "batch_size": 4},
        },
    )
    dvc(repo, "repro", "train")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "trained")
    assert _stale(repo, "train") == set()

    # A contributor's new predict knob: its schema line, its conf/ line, params.yaml composed.
    predict_cfg = repo / "src/visionpipe/config/predict.py"
    text = predict_cfg.read_text().replace(
        "    topk: int = Field(default=3, ge=1)",
        "    topk: int = Field(default=3, ge=1)\n    batch_size: int = Field(default=32, ge=1)",
    )
    predict_cfg.write_text(text)
    conf = repo / "conf/config.yaml"
    data = yaml.safe_load(conf.read_text())
    data["predict"]["batch_size"] = 32
    conf.write_text(yaml.safe_dump(data, sort_keys=False))
    cli = [sys.executable, "-m", "visionpipe.cli", "params"]
    run(cli, repo, env={**env(), "PYTHONPATH": str(repo / "src")})

    assert _stale(repo, "download", "preprocess", "train") == set()
    assert "predict" in _stale(repo, "predict")  # the positive control
