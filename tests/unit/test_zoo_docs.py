"""The lists of models, datasets and recipes that users read, against the tables they come from:
`visionpipe.models.MODELS`, `visionpipe.datasets.DATASETS` and the files of conf/recipe/. A new
model, dataset or recipe that a list lacks fails here with the line to write and where."""

from __future__ import annotations

import json
import re

import pytest
import torch
from pydantic import BaseModel

from tests.helpers import ROOT
from visionpipe import determinism
from visionpipe.config.params import Params
from visionpipe.datasets import DATASETS
from visionpipe.models import MODELS, build_model, keys_of, own_keys

RECIPES = sorted(p.stem for p in (ROOT / "conf" / "recipe").glob("*.yaml"))
PRETRAINED = [name for name, spec in MODELS.items() if spec.pretrained]


def _config_comment(key: str) -> str:
    """The comment after `key:` in conf/config.yaml (each checked key occurs there once)."""
    found = re.findall(rf"^\s*{key}: .*?# (.+)$", (ROOT / "conf/config.yaml").read_text(), re.M)
    assert len(found) == 1, f"conf/config.yaml should have one commented `{key}:` line"
    return found[0]


def _section(page: str, heading: str) -> str:
    """The text of `page` from `heading` to the next heading of its level or above."""
    text = (ROOT / page).read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = re.search(rf"\n#{{1,{len(level)}}} ", text[start + 1 :])
    return text[start : start + 1 + end.start()] if end else text[start:]


def test_config_yaml_names_every_model() -> None:
    want = " | ".join(MODELS)
    assert _config_comment("name") == want, (
        f"conf/config.yaml: model.name's comment lists the models of visionpipe.models.MODELS; "
        f"write `name: tutorial_cnn      # {want}`"
    )


def test_config_yaml_names_every_dataset() -> None:
    want = " | ".join(DATASETS)
    assert _config_comment("dataset") == want, (
        f"conf/config.yaml: data.dataset's comment lists the datasets of "
        f"visionpipe.datasets.DATASETS; write `dataset: cifar10        # {want}`"
    )


def test_config_yaml_names_the_models_with_pretrained_weights() -> None:
    want = "/".join(PRETRAINED) + " only:"
    assert _config_comment("pretrained").startswith(want), (
        "conf/config.yaml: model.pretrained's comment names the models whose ModelSpec has "
        f"pretrained=True; start it with `# {want}`"
    )


@pytest.mark.parametrize("key", own_keys())
def test_config_yaml_has_each_model_s_own_key_with_the_models_it_applies_to(key: str) -> None:
    spec = own_keys()[key]
    taking = "/".join(name for name in MODELS if key in keys_of(name))
    line = f"  {key}: {json.dumps(spec.default)}  # {taking} only: {spec.doc}"
    comment = re.findall(rf"^  {key}: .*?# (.+)$", (ROOT / "conf/config.yaml").read_text(), re.M)
    assert comment and comment[0].startswith(f"{taking} only:"), (
        f"conf/config.yaml: model.{key} needs its line under `model:`, its comment naming the "
        f"models it applies to; write `{line}`"
    )


def test_config_yaml_names_every_recipe() -> None:
    listed = _config_comment("recipe").split(": ", 1)[-1].split(" | ")
    assert sorted(listed) == RECIPES, (
        "conf/config.yaml: the recipe comment lists the files of conf/recipe/; write "
        "`recipe: tutorial          # the recipe composed in (chosen under defaults above, or"
        f" by -S recipe=NAME), one of: {' | '.join(RECIPES)}`"
    )


@pytest.mark.parametrize("name", MODELS)
def test_training_md_describes_every_model(name: str) -> None:
    table = _section("docs/training.md", "## Models and recipes")
    assert f"\n| `{name}` | " in table, (
        f"docs/training.md has no row for model `{name}` in the table under 'Models and "
        f"recipes': add the row '| `{name}` | <what it is> | <its recipe: `-S recipe=NAME`: what "
        f"it sets; a model without one: `-S model.name={name}`> |'"
    )


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "tutorial"])
def test_readme_runs_each_recipe_with_one_flag(name: str) -> None:
    table = _section("README.md", "## Experiments")
    assert re.search(rf"\| `-S recipe={name}` \|", table), (
        f"README.md has no row for recipe `{name}` in the recipe table under 'Experiments': "
        f"add the row '| `-S recipe={name}` | <what it trains> |'"
    )


def test_gpu_md_lists_the_models_that_train_deterministically_on_cuda() -> None:
    cuda = torch.device("cuda")
    with torch.device("meta"):  # the layers' types decide; no weights are allocated
        want = [
            name
            for name in MODELS
            if determinism.nondeterministic_layer(build_model(name, 10, 32), cuda) is None
        ]
    rows = (ROOT / "docs/gpu.md").read_text().splitlines()
    cuda_rows = [r for r in rows if re.match(r"\| [^|]+ \| \d", r)]  # a compute capability
    assert cuda_rows, "docs/gpu.md's device table has no CUDA rows"
    wrong = [row for row in cuda_rows if row.rstrip(" |").rsplit("| ", 1)[-1] != ", ".join(want)]
    assert wrong == [], (
        f"docs/gpu.md: the `train.deterministic` column of the CUDA rows names the models "
        f"without a layer determinism.nondeterministic_layer refuses on CUDA; write "
        f"`{', '.join(want)}` in the last column of each of these {len(wrong)} rows"
    )


def _parameters_row(section: str) -> str:
    """The row of `section` in docs/parameters.md's table of keys."""
    rows = [r for r in (ROOT / "docs/parameters.md").read_text().splitlines() if r.startswith("|")]
    found = [r for r in rows if r.startswith(f"| `{section}` |")]
    assert len(found) == 1, f"docs/parameters.md should have one row for `{section}`"
    return found[0]


def _schema_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of a section, nested ones dotted (`augment.flip`)."""
    keys = []
    for name, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _schema_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


SECTIONS = {
    name: field.annotation
    for name, field in Params.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


@pytest.mark.parametrize("section", SECTIONS)
def test_parameters_md_names_every_key(section: str) -> None:
    # Nothing else tells a contributor who adds a key that the table lists them all.
    row = _parameters_row(section)
    missing = [key for key in _schema_keys(SECTIONS[section]) if f"`{key}`" not in row]
    assert not missing, (
        f"docs/parameters.md: the `{section}` row of the table under 'The keys' names every "
        f"{section}.* key; add {', '.join(f'`{k}`' for k in missing)} (with its choices, if any)"
    )


@pytest.mark.parametrize("key", own_keys())
def test_parameters_md_names_each_model_s_own_key(key: str) -> None:
    assert f"`{key}`" in _parameters_row("model"), (
        f"docs/parameters.md: the `model` row of the table under 'The keys' names every model.* "
        f"key; add `{key}` (with its choices, if it has any) after the other models' own keys"
    )


@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.min_image_size > 8])
def test_parameters_md_gives_the_smallest_image_size_of_each_model(name: str) -> None:
    least = MODELS[name].min_image_size
    assert f"{least} for {name}" in _parameters_row("preprocess"), (
        f"docs/parameters.md: the `preprocess` row of the table under 'The keys' gives the "
        f"smallest image_size of each model that needs more than 8 pixels; add `{least} for "
        f"{name}` to its list ('at least 8, and at least 32 for vgg16, ...')"
    )


def test_the_docs_name_the_wheel_of_this_version() -> None:
    """A release bumps `_version.py`; the wheel's file name in the docs follows it."""
    import visionpipe

    stale = [
        f"{doc.relative_to(ROOT)}:{n} names visionpipe-{found}"
        for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
        for found in re.findall(r"visionpipe-(\d+\.\d+\.\d+\S*?)-py3", line)
        if found != visionpipe.__version__
    ]
    assert not stale, f"the version is {visionpipe.__version__}: write it there\n" + "\n".join(
        stale
    )
