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


def _set_conf(repo: Path, section: str, key: str, value: object) -> None:
    conf = repo / "conf/config.yaml"
    data = yaml.safe_load(conf.read_text())
    data[section][key] = value
    conf.write_text(yaml.safe_dump(data, sort_keys=False))


def _add_key(repo: Path, section: str, after: str, field: str, default: object) -> None:
    """A new key as a contributor adds one: `field` in its section's schema below the line
    `after`, and its line in conf/config.yaml at `default`."""
    schema = repo / f"src/visionpipe/config/{section}.py"
    schema.write_text(schema.read_text().replace(after, f"{after}\n    {field}  # new knob", 1))
    _set_conf(repo, section, field.split(":")[0], default)


def _compose(repo: Path) -> None:
    # The copy's own code composes and checks it (a queued experiment's code is its copy's).
    cli = [sys.executable, "-m", "visionpipe.cli", "params"]
    run(cli, repo, env={**env(), "PYTHONPATH": str(repo / "src")})


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
    _add_key(repo, "train", "    channels_last: bool = True", "grad_clip: float = 0.0", 0.0)
    _set_conf(repo, "model", "width", 64)
    (repo / "conf/recipe/wide.yaml").write_text(
        "# @package _global_\nrecipe: wide\nmodel:\n  name: tutorial_wide\n"
    )
    _compose(repo)
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
    _add_key(repo, "predict", "    topk: int = Field(default=3, ge=1)", "batch_size: int = 32", 32)
    _compose(repo)

    assert _stale(repo, "download", "preprocess", "train") == set()
    assert "predict" in _stale(repo, "predict")  # the positive control
