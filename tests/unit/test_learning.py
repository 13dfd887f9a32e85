"""docs/learning.md: its training loop runs on preprocessed splits as the page has it, builds the
pipeline's default network, and every `module.name` the lessons table points at exists."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import torch
import yaml

from tests.helpers import ROOT
from visionpipe.models import tutorial_cnn

PAGE = ROOT / "docs" / "learning.md"
SRC = ROOT / "src" / "visionpipe"


def test_the_tutorials_loop_runs_on_the_preprocessed_splits(processed: Path) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    namespace: dict[str, object] = {"__name__": "__learning__"}
    out = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(PAGE), "exec"), namespace)
    assert re.fullmatch(r"test accuracy after one epoch: [01]\.\d{3}\n", out.getvalue())
    # The page says its Sequential is the pipeline's default network: same keys, same shapes.
    theirs = {k: v.shape for k, v in namespace["model"].state_dict().items()}
    ours = {k: v.shape for k, v in tutorial_cnn(3, 16).state_dict().items()}
    assert theirs == ours


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
