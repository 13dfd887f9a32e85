"""The README's model recipes and bench/recipes.py's RECIPES are the same params, and valid ones."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from tests.helpers import ROOT
from visionpipe.config import parse_params

sys.path.insert(0, str(ROOT / "bench"))
from recipes import RECIPES, apply_overrides

FLAG = re.compile(r"-S ([\w.]+)=([^\s`|\\]+)")


def readme_recipes() -> dict[str, dict[str, object]]:
    """model.name -> the -S flags of each README line (continuations joined) that sets it."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    found: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        flags = {key: yaml.safe_load(value) for key, value in FLAG.findall(line)}
        name = flags.get("model.name")
        if name is None:
            continue
        flags.pop("data.source", None)  # where the data is, not part of the recipe
        assert name not in found, f"README gives two recipes for {name}"
        found[str(name)] = flags
    return found


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "tutorial_cnn"])
def test_readme_recipe_matches_the_bench(name: str) -> None:
    assert readme_recipes().get(name) == RECIPES[name][1]


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_is_valid_params(name: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    parsed = parse_params(apply_overrides(params, RECIPES[name][1]))
    assert parsed.model.name == name
