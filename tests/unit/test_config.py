import dataclasses
import logging
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import pytest
import torch
import yaml

from tests.helpers import ROOT, git
from visionpipe.cli import main
from visionpipe.config import ConfigError, load_section
from visionpipe.config.compose import diff_keys
from visionpipe.config.params import load_params, parse_params
from visionpipe.config.predict import PredictConfig
from visionpipe.models import MODELS, Key, build_model


def _staged_params(tmp_path: Path) -> Path:
    """params.yaml as git's index holds it: what a commit gets, whatever the experiments run
    here since (each rewrites the working copy) or conf/local/ put in it. The working copy
    outside a git checkout."""
    staged = subprocess.run(
        ["git", "-C", str(ROOT), "show", ":params.yaml"], capture_output=True, text=True
    )
    if staged.returncode:
        return ROOT / "params.yaml"
    path = tmp_path / "params.yaml"
    path.write_text(staged.stdout)
    return path


def test_committed_params_are_the_tutorial_defaults(tmp_path: Path) -> None:
    path = _staged_params(tmp_path)
    try:
        p = load_params(path)
    except ConfigError as exc:
        where = "as git's index holds it" if path.parent == tmp_path else "in the working copy"
        raise AssertionError(
            f"params.yaml {where}: {exc}\n(after `uv run visionpipe params`, `git add "
            "params.yaml`: this test reads what the next commit gets)"
        ) from exc
    # params.yaml's note has no default; where the data is, README has users name in conf/, and
    # the launch settings are the composing machine's (conf/local/machine.yaml's data_root).
    location = {k: getattr(p.data, k) for k in ("source", "sha256")}
    defaults = parse_params({"about": p.about, "data": location})
    mine = p.model_copy(update={"launch": defaults.launch})
    differ = diff_keys(mine.model_dump(), defaults.model_dump())
    assert mine == defaults, (
        f"params.yaml and the code defaults differ in: {', '.join(differ)} (an experiment's"
        " values, left by `dvc exp run`? `uv run visionpipe params && git add params.yaml`)"
    )
    assert (p.model.name, p.model.activation, p.model.batch_norm) == ("tutorial_cnn", "none", False)
    assert (p.train.optimizer, p.train.lr, p.train.batch_size, p.train.epochs) == (
        "sgd",
        0.01,
        64,
        10,
    )
    assert p.train.momentum == 0.0 and p.data.dataset == "cifar10" and p.image_size() == 32


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lr_rate": 0.1}}, ["train.lr_rate", "valid keys", "lr"]),
        ({"trian": {}}, ["'trian'", "train"]),
        ({"train": {"augment": {"flp": True}}}, ["train.augment.flp", "flip"]),
        (
            {"train": {"augment": {"flip": "random"}}},
            ["'train.augment.flip' = 'random'", "'alternate'"],
        ),
        ({"train": {"augment": {"padding_mode": "reflect"}}}, ["padding_mode", "crop_padding > 0"]),
        ({"train": {"schedule": "step"}}, ["'train.schedule' = 'step'", "'triangle'"]),
        ({"model": {"tta": 3}}, ["'model.tta' = 3", "less than or equal to 2"]),
        ({"train": {"lr": 0}}, ["'train.lr' = 0", "greater than 0"]),
        ({"train": {"lr": "fast"}}, ["'train.lr' = 'fast'"]),
        ({"model": {"name": "resnet50"}}, ["'model.name' = 'resnet50'", "tutorial_cnn"]),
        ({"data": {"dataset": "mnist"}}, ["'data.dataset' = 'mnist'", "hymenoptera"]),
        ({"data": {"val_fraction": 1.0}}, ["'data.val_fraction' = 1.0", "less than 1"]),
        ({"data": {"val_fraction": -0.1}}, ["'data.val_fraction' = -0.1"]),
        ({"data": {"dataset": "imagefolder"}}, ["data.source"]),
        ({"train": {"nesterov": True}}, ["momentum"]),
        # AdamW reads neither: a value there would change nothing in the run.
        (
            {"train": {"optimizer": "adamw", "momentum": 0.9}},
            ["train.momentum 0.9", "sgd only", "train.momentum: 0"],
        ),
        (
            {"train": {"optimizer": "adamw", "momentum": 0.5, "nesterov": True}},
            ["train.momentum 0.5 and train.nesterov true", "train.optimizer: sgd"],
        ),
        (
            {"train": {"epochs": 2, "warmup_epochs": 100}},
            ["train.warmup_epochs 100", "train.epochs 2", "at most 2"],
        ),
        # numpy refuses a negative seed in preprocess, torch one of 2**64 or more in train.
        ({"data": {"seed": -1}}, ["'data.seed' = -1", "greater than or equal to 0"]),
        ({"train": {"seed": -1}}, ["'train.seed' = -1", "greater than or equal to 0"]),
        ({"train": {"seed": 2**64}}, [f"'train.seed' = {2**64}", "less than"]),
        # YAML's .inf passes a lower bound alone, and would train to NaN.
        ({"train": {"weight_decay": float("inf")}}, ["'train.weight_decay' = inf", "finite"]),
        # Lax validation would take true as 1: an epoch, an lr of 1.
        ({"train": {"epochs": True}}, ["'train.epochs' = True", "a number, not true or false"]),
        ({"train": {"lr": True}}, ["'train.lr' = True", "a number, not true or false"]),
        ({"data": {"test_fraction": False}}, ["'data.test_fraction' = False", "not true or"]),
        (
            {"launch": {"nnodes": 2, "node_rank": 2}},
            ["launch.node_rank 2", "launch.nnodes (2)", "0 to 1", "conf/local/machine.yaml"],
        ),
    ],
)
def test_bad_params_name_key_value_and_choices(raw: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    for text in expected:
        assert text in str(err.value)


def test_yaml_errors_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [lr: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen() -> None:
    p = parse_params({})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        p.train.lr = 1.0  # type: ignore[misc]


def test_pretrained_and_a_weights_file_together_are_refused() -> None:
    # The file's weights would silently replace ImageNet's (or, offline, the hub's error would
    # say to set model.weights, which is set).
    with pytest.raises(ConfigError, match="keep one"):
        parse_params({"model": {"name": "resnet18", "pretrained": True, "weights": "/w.pth"}})


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"name": "fast", "activation": "relu"}, "model.activation"),
        ({"name": "resnet18", "batch_norm": True}, "model.batch_norm"),
        ({"name": "tutorial_cnn", "pretrained": True}, "model.pretrained"),
        ({"name": "alexnet", "pretrained": True}, "model.pretrained"),
    ],
)
def test_a_model_key_that_does_not_apply_is_an_error(model: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"model": model})
    message = str(err.value)
    assert key in message and f"'{model['name']}'" in message
    assert "the keys for" in message and "tta" in message  # what does apply


def _another_value(key: str, spec: Key) -> object:
    """A valid value of a model key other than its default."""
    if spec.annotation is bool:
        return not spec.default
    if typing.get_origin(spec.annotation) is Literal:
        return next(v for v in typing.get_args(spec.annotation) if v != spec.default)
    if spec.annotation in (int, float):
        # The first of a few nearby numbers that the key's own limits (`ge`, `lt`, ...) allow.
        adapter = pydantic.TypeAdapter(Annotated[spec.annotation, spec.pydantic_field()])
        default = spec.default
        for value in (default + 1, default - 1, default * 2, default / 2, 0, 1, 0.5):
            value = spec.annotation(value)
            try:
                if value != default and adapter.validate_python(value) == value:
                    return value
            except pydantic.ValidationError:
                continue
    raise AssertionError(
        f"model key {key!r} ({spec.annotation}): add a valid value other than its default "
        "to _another_value in tests/unit/test_config.py"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (Key(float, 0.5, "a dropout", {"ge": 0, "lt": 1}), 0.25),
        (Key(int, 3, "a count", {"ge": 1, "le": 4}), 4),
        (Key(int, 4, "a count", {"ge": 1, "le": 4}), 3),
        (Key(float, 1.0, "a scale"), 2.0),
    ],
)
def test_another_value_of_a_numeric_model_key_keeps_within_its_limits(
    spec: Key, expected: object
) -> None:
    # A model's own numeric key with limits needs no line in the test: the limits decide.
    assert _another_value("key", spec) == expected


def test_model_keys_at_their_defaults_fit_every_model() -> None:
    # params.yaml always holds every key: the tutorial's settings must not stop another model.
    from visionpipe.models import COMMON_KEYS, MODELS, keys_of

    for arch, spec in MODELS.items():
        assert parse_params({"model": {"name": arch}}).model.name == arch
        pretrained = {"pretrained": COMMON_KEYS["pretrained"]} if spec.pretrained else {}
        own = {**spec.keys, **pretrained}
        assert set(own) <= set(keys_of(arch))
        for key, key_spec in own.items():
            value = _another_value(key, key_spec)
            assert getattr(parse_params({"model": {"name": arch, key: value}}).model, key) == value


def _composed_without(section: str, key: str) -> dict:
    from visionpipe.config.compose import compose

    raw = compose([], ROOT / "conf")
    del raw[section][key]
    return raw


def test_a_key_cut_from_composed_params_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dvc exp run -S recipe=fast -S ~train.lr` writes params.yaml without train.lr: the run
    # must not take the code's default lr under the label of the fast recipe.
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_composed_without("train", "lr")))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with pytest.raises(ConfigError, match=r"'train\.lr' is missing.*-S train\.lr=VALUE") as err:
        load_params(path)
    # Quoted, as zsh and bash would take an unquoted ~train for a user's home folder.
    assert "(removed with `-S '~train.lr'`?)" in str(err.value)
    # params.yaml composed before the code had the key: how to write it anew, for dvc repro.
    assert "visionpipe params" in str(err.value)
    # A key the code just gained: where its line goes.
    assert "conf/config.yaml lacks needs its line there" in str(err.value)
    # Outside an experiment no -S could have removed it, nor can one set it.
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "'train.lr' is missing: conf/ gives it, so `uv run visionpipe params` writes" in str(
        err.value
    )
    assert "-S" not in str(err.value) and "(for `dvc repro`" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'train\.lr' is missing"):
        parse_params(_composed_without("train", "lr"), complete=True)


def test_a_key_conf_lacks_says_where_its_line_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new model's key, in the code but not yet in conf/config.yaml: no `~` was typed, and
    # `-S model.width=16` would be refused (not in struct); the line goes in conf/.
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_composed_without("train", "lr")))
    (tmp_path / "conf").mkdir()
    conf = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    del conf["train"]["lr"]
    (tmp_path / "conf" / "config.yaml").write_text(yaml.safe_dump(conf))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    said = str(err.value)
    assert "'train.lr' is missing, and conf/config.yaml has no line for it" in said
    assert "add `lr: 0.01` under `train:` there, then `uv run visionpipe params`" in said
    assert "removed with" not in said
    # A nested key goes where the file nests it; a whole section, with its keys in one line.
    composed = yaml.safe_load(path.read_text())
    del composed["train"]["augment"]["flip"], composed["evaluate"]
    path.write_text(yaml.safe_dump(composed))
    del conf["train"]["augment"]["flip"], conf["evaluate"]
    (tmp_path / "conf" / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    said = str(err.value)
    assert "add `flip: false` under `augment:` in `train:` there" in said, said
    assert "add `evaluate: {amp: false}` at the top level there" in said, said
    del composed["train"]["augment"], conf["train"]["augment"]  # a section within a section
    path.write_text(yaml.safe_dump(composed))
    (tmp_path / "conf" / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert (
        "add `augment: {crop_padding: 0, padding_mode: zeros, flip: false}` under `train:` there"
    ) in str(err.value)


def test_a_key_cut_from_a_later_stage_section_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_composed_without("predict", "topk")))
    with pytest.raises(ConfigError, match=r"'predict\.topk' is missing"):
        load_section("predict", PredictConfig, path)


@pytest.mark.parametrize("name", list(MODELS))
def test_image_size_below_what_a_model_takes_is_refused_before_training(name: str) -> None:
    least = MODELS[name].min_image_size
    try:
        with torch.no_grad():
            logits = build_model(name, 3, least).eval()(torch.rand(1, 3, least, least))
    except RuntimeError as exc:
        raise AssertionError(
            f"model {name!r} does not run on {least}-pixel images, its ModelSpec's "
            f"min_image_size ({exc}): in src/visionpipe/models.py, set min_image_size to the "
            "smallest preprocess.image_size it runs on"
        ) from exc
    assert logits.shape == (1, 3)
    parse_params({"model": {"name": name}, "preprocess": {"image_size": least}})
    if least == 8:  # the preprocess section's own lower bound
        return
    with torch.no_grad():
        try:
            build_model(name, 3, least - 1).eval()(torch.rand(1, 3, least - 1, least - 1))
        except RuntimeError as exc:
            assert "too small" in str(exc)
        else:
            raise AssertionError(
                f"model {name!r} runs on {least - 1}-pixel images too: in "
                f"src/visionpipe/models.py, lower its ModelSpec's min_image_size ({least})"
            )
    with pytest.raises(ConfigError) as err:
        parse_params({"model": {"name": name}, "preprocess": {"image_size": least - 1}})
    for text in (f"preprocess.image_size {least - 1}", f"'{name}'", f"at least {least}"):
        assert text in str(err.value)


@pytest.mark.usefixtures("conf_copy")
def test_visionpipe_params_names_the_valid_keys_for_a_misspelled_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Hydra alone answers "To append to your config use +train.lrr=0.1", which params.yaml
    # then refuses as an unknown key.
    assert main(["params", "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lrr'; valid keys here: " in err and ", lr, " in err
    assert main(["params", "trian.lr=0.1"]) == 2
    assert "unknown key 'trian'; valid keys here: " in capsys.readouterr().err
    assert not Path("params.yaml").exists()


def test_visionpipe_params_names_the_line_conf_lacks_for_a_key_new_in_the_code(
    conf_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = conf_copy / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("  topk: 3\n", "", 1))
    assert main(["params"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: conf/ gives no value for keys the code has: add each line")
    assert err.splitlines()[1:] == ["  `topk: 3` under `predict:`"] and "-S ~" not in err
    assert not Path("params.yaml").exists()
    # A nested key, or a whole section, where the file nests it (no dotted `train.augment:`).
    text = conf.read_text()
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("  augment:"))
    conf.write_text("".join(lines[:at] + lines[at + 4 :]))  # augment: and its three keys
    assert main(["params"]) == 2
    lines = capsys.readouterr().err.splitlines()[1:]
    assert (
        "  `augment: {crop_padding: 0, padding_mode: zeros, flip: false}` under `train:`" in lines
    )
    conf.write_text(text)
    assert main(["params", "~predict.topk"]) == 2  # Hydra: nothing there to remove
    assert "conf/ gives no value" not in capsys.readouterr().err


def test_a_recipe_line_that_chooses_nothing_is_warned_of(
    conf_copy: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `recipe:` is the label each recipe's file sets; the defaults entry chooses. An edit of
    # the label alone would compose the tutorial all the same, without a word.
    from visionpipe.config.compose import warn_unchosen_recipe

    conf = conf_copy / "conf" / "config.yaml"
    text = conf.read_text()
    label = text.replace("\nrecipe: tutorial ", "\nrecipe: hymenoptera ", 1)
    conf.write_text(label)
    with caplog.at_level(logging.WARNING):
        assert main(["params"]) == 0
    assert (
        "conf/config.yaml: `recipe: hymenoptera` does not choose the recipe, the line `- recipe:"
        " tutorial` under `defaults:` does, and this run composes tutorial: to compose hymenoptera"
        " by default, set that line to `- recipe: hymenoptera` and compose params.yaml again"
        " (`uv run visionpipe params`, which `dvc repro` runs on); for one experiment, `uv run"
        " dvc exp run -S recipe=hymenoptera`"
    ) in caplog.text, caplog.text
    # In an experiment, the -S it can take: the defaults entry counts at the next run.
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_unchosen_recipe("tutorial")  # as the stages check params.yaml
    assert (
        "set that line to `- recipe: hymenoptera`; for one experiment, `-S recipe=hymenoptera`"
    ) in caplog.text, caplog.text
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    # A label that names no recipe is said to be none (a recipe line set to it would not compose).
    conf.write_text(text.replace("\nrecipe: tutorial ", "\nrecipe: resnet ", 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_unchosen_recipe("tutorial")
    assert "`recipe: resnet` names no recipe of conf/recipe (alexnet, fast, " in caplog.text
    assert "set that line" not in caplog.text
    conf.write_text(label)
    # The run that names it (-S recipe=hymenoptera) runs it: nothing to say.
    caplog.clear()
    assert main(["params", "recipe=hymenoptera"]) == 0
    assert not warn_unchosen_recipe("hymenoptera") and "does not choose" not in caplog.text
    # Nor one that names another (-S recipe=fast): the label chose nothing there either.
    assert main(["params", "recipe=fast"]) == 0
    assert not warn_unchosen_recipe("fast") and "does not choose" not in caplog.text
    # Nor where both lines name it, or a team set the defaults entry alone (the label shipped).
    for both in (label, text):
        conf.write_text(both.replace("  - recipe: tutorial\n", "  - recipe: hymenoptera\n", 1))
        assert main(["params"]) == 0
        assert yaml.safe_load(Path("params.yaml").read_text())["data"]["dataset"] == "hymenoptera"
        assert not warn_unchosen_recipe("hymenoptera")
    assert "does not choose" not in caplog.text
    # A team's committed default (fast, both lines); the label alone edited back to tutorial.
    team = text.replace("\nrecipe: tutorial ", "\nrecipe: fast ", 1)
    conf.write_text(team.replace("  - recipe: tutorial\n", "  - recipe: fast\n", 1))
    git(conf_copy, "init", "-q")
    git(conf_copy, "add", "conf")
    git(conf_copy, "commit", "-qm", "fast by default")
    assert not warn_unchosen_recipe("fast")
    conf.write_text(conf.read_text().replace("\nrecipe: fast ", "\nrecipe: tutorial ", 1))
    assert warn_unchosen_recipe("fast")
    (sub := conf_copy / "notebooks").mkdir()  # `visionpipe params` from a sub-folder
    monkeypatch.chdir(sub)
    assert warn_unchosen_recipe("fast", conf_copy / "conf")


def test_the_recipe_label_is_warned_of_once_a_run_by_the_stages(
    conf_copy: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # download and train both check; the first that warns marks the run. A clean check marks
    # nothing: a label edited after it is said by the next stage or run.
    from visionpipe.config.compose import check_against_conf

    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    (conf_copy / ".dvc" / "tmp").mkdir(parents=True)
    assert main(["params"]) == 0
    with caplog.at_level(logging.WARNING):
        check_against_conf(data_stage=True)
    assert "does not choose" not in caplog.text
    conf = conf_copy / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("\nrecipe: tutorial ", "\nrecipe: fast ", 1))
    monkeypatch.setenv("DVC_STAGE", "download")  # run by DVC
    lock = conf_copy / ".dvc" / "tmp" / "lock"  # DVC's repo lock: its process id, as it runs
    lock.write_text(" 4242\n")
    for stage_is_download in (True, False):
        with caplog.at_level(logging.WARNING):
            check_against_conf(data_stage=stage_is_download)
    assert caplog.text.count("`recipe: fast` does not choose the recipe") == 1, caplog.text
    # The next `dvc repro` (params.yaml as it was) says it again, once.
    lock.write_text(" 4343\n")
    for stage_is_download in (True, False):
        with caplog.at_level(logging.WARNING):
            check_against_conf(data_stage=stage_is_download)
    assert caplog.text.count("`recipe: fast` does not choose the recipe") == 2, caplog.text
    # A stage run by hand is a run of its own each time: the lock names DVC's last command.
    monkeypatch.delenv("DVC_STAGE")
    for _ in range(2):
        with caplog.at_level(logging.WARNING):
            check_against_conf(data_stage=False)
    assert caplog.text.count("`recipe: fast` does not choose the recipe") == 4, caplog.text


def test_changed_values_are_told_as_params_yaml_writes_them_and_a_missing_one_as_none() -> None:
    # Two machines' params of two versions of the code: one lacks a key the other has.
    from visionpipe.config.compose import changes_text

    old = {"train": {"lr": 0.01, "amp": False, "augment": {"flip": True}}, "recipe": "fast"}
    new = {"train": {"lr": 0.02, "augment": {"flip": True}, "cuda_graph": None}, "recipe": "x"}
    keys = ["train.lr", "train.amp", "train.cuda_graph", "recipe"]
    said = changes_text(old, new, keys, most=3)
    assert said == (
        "train.lr: 0.01 -> 0.02, train.amp: false -> (none), train.cuda_graph: (none) -> null"
        " and 1 more"
    )


def test_a_recipe_this_copy_of_conf_lacks_is_warned_of_and_params_run_as_they_are(
    conf_copy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A queued run's copy holds what git tracks: a new conf/recipe/mine.yaml not yet added is
    # not there, though params.yaml was composed with it when the run was queued.
    from visionpipe.config.compose import check_against_conf, compose

    recipe = conf_copy / "conf" / "recipe" / "mine.yaml"
    recipe.write_text("# @package _global_\nrecipe: mine\ntrain:\n  lr: 0.02\n")
    composed = compose(["recipe=mine"], conf_copy / "conf")
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    recipe.unlink()
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    with caplog.at_level(logging.WARNING):
        for data_stage in (True, False):
            check_against_conf(data_stage=data_stage)
    assert "params.yaml names recipe 'mine', and this copy of the project has no" in caplog.text
    assert "conf/recipe/mine.yaml" in caplog.text and "`git add` it" in caplog.text
    # Outside an experiment (a teammate's commit), no queued copy to blame; launch settings of
    # another machine are still checked.
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_against_conf(data_stage=False)
    assert "was the file left out of a commit, renamed or deleted? Add it, or compose" in (
        caplog.text
    )
    assert "queued" not in caplog.text


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="reads /proc")
def test_the_missing_section_refusal_speaks_for_the_stages_the_dvc_command_runs(
    conf_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the running DVC command asked for is on its command line, found by the process id
    # in DVC's repo lock: a process standing in for it here.
    from visionpipe.config import ConfigError
    from visionpipe.config.compose import check_against_conf, compose

    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    monkeypatch.setenv("DVC_STAGE", "train")
    shutil.copy(ROOT / "dvc.yaml", conf_copy / "dvc.yaml")
    composed = compose([], conf_copy / "conf")
    del composed["export"], composed["evaluate"]
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    (conf_copy / ".dvc" / "tmp").mkdir(parents=True)

    def run_by(*argv: str) -> None:
        dvc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
        (conf_copy / ".dvc" / "tmp" / "lock").write_text(f" {dvc.pid}\n")
        try:
            check_against_conf(data_stage=False)
        finally:
            dvc.kill()
            dvc.wait()

    run_by("-m", "dvc", "repro", "train")  # never reaches export or evaluate: not refused
    run_by("/venv/bin/dvc", "exp", "run", "-s", "dvc.yaml:train")
    with pytest.raises(ConfigError, match=r"lacks `export` \(the export stage's\), for which"):
        run_by("-m", "dvc", "repro", "export")
    # predict's run reaches export (its model comes from there); -s runs predict alone.
    with pytest.raises(ConfigError, match=r"lacks `export` \(the export stage's\), for which"):
        run_by("-m", "dvc", "repro", "predict")
    run_by("-m", "dvc", "repro", "-s", "predict")
    with pytest.raises(ConfigError, match=r"lacks `evaluate` .*, `export`"):
        run_by("-m", "dvc", "repro", "-p", "train")  # the whole pipeline train is in
    with pytest.raises(ConfigError, match=r"lacks `evaluate` \(the evaluate stage's\), `export`"):
        run_by("-m", "dvc", "repro", "--downstream", "train")
    # `dvc exp run --no-hydra` runs params.yaml as it is: no -S removed anything.
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    with pytest.raises(ConfigError) as err:
        run_by("-m", "dvc", "exp", "run", "--no-hydra")
    assert str(err.value).endswith("`uv run visionpipe params` writes them back, then run again")
    with pytest.raises(ConfigError) as err:
        run_by("-m", "dvc", "exp", "run", "-S", "~evaluate", "-S", "params.yaml:~export")
    assert "the run's `-S '~evaluate' -S '~export'` removed them" in str(err.value)
    # A key cut inside a section dvc.yaml declares whole: DVC checks the section alone, and the
    # export stage's own loader would refuse it after training.
    composed = compose([], conf_copy / "conf")
    del composed["export"]["opset"], composed["evaluate"]["amp"]
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        run_by("-m", "dvc", "exp", "run", "-S", "~export.opset", "-S", "~evaluate.amp")
    assert str(err.value).startswith(
        "params.yaml lacks `evaluate.amp` (the evaluate stage's), `export.opset` (the export"
    ), err.value
    assert "the run's `-S '~evaluate.amp' -S '~export.opset'` removed them" in str(err.value)
    run_by("-m", "dvc", "repro", "train")  # reaches neither


def test_a_section_cut_from_conf_is_refused_before_the_stages_run(
    conf_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DVC itself refuses the stage that declares a missing section, and only when it gets there:
    # in `dvc exp run`, after training. Download and train (download cached) say it first.
    from visionpipe.config import ConfigError
    from visionpipe.config.compose import check_against_conf, compose

    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    monkeypatch.setenv("DVC_STAGE", "train")
    composed = compose([], conf_copy / "conf")
    del composed["evaluate"], composed["export"], composed["data"]["sha256"]
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    conf = yaml.safe_load((conf_copy / "conf" / "config.yaml").read_text())
    del conf["evaluate"], conf["export"], conf["data"]["sha256"]  # cut from conf/ too
    (conf_copy / "conf" / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", conf_copy / "dvc.yaml")  # the stages that declare them
    for data_stage in (True, False):
        with pytest.raises(ConfigError) as err:
            check_against_conf(data_stage=data_stage)
        said = str(err.value)
        assert said.startswith(
            "params.yaml lacks `data.sha256` (the download stage's), `evaluate` (the evaluate"
            " stage's), `export` (the export stage's), for which each stage named would be"
            " refused only as it starts"
        ), said
        assert "(`uv run visionpipe params` names each line to add, at the code's" in said
    # Cut by the run's own `-S '~evaluate'`: conf/ has it.
    shutil.copy(ROOT / "conf" / "config.yaml", conf_copy / "conf" / "config.yaml")
    composed = compose([], conf_copy / "conf")
    del composed["evaluate"]
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)  # in `dvc exp run`
    with pytest.raises(ConfigError) as err:
        check_against_conf(data_stage=False)
    assert str(err.value).endswith(
        "conf/ has it, so the run's `-S '~evaluate'` removed it: run again without it"
    ), err.value
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")  # `dvc repro`: params.yaml cut by hand
    with pytest.raises(ConfigError) as err:
        check_against_conf(data_stage=False)
    assert str(err.value).endswith(
        "conf/ has it: `uv run visionpipe params` writes it back, then run again"
    ), err.value
    del composed["export"]
    # A hand-written params.yaml (no `about:` note from conf/): DVC refuses it all the same.
    del composed["about"]
    Path("params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    with pytest.raises(ConfigError, match=r"add them to params.yaml, or write the whole file"):
        check_against_conf(data_stage=True)
    # A stage run by hand (no DVC): nothing refuses it, the code's defaults fill in.
    monkeypatch.delenv("DVC_STAGE")
    check_against_conf(data_stage=True)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("<<<<<<< HEAD\ntrain:\n  lr: 0.1\n=======\n", "could not be read (ScannerError: "),
        ("- train\n- lr\n", "held no mapping of params (a YAML list)"),
        (b"train: {lr: \xff}\n", "could not be read (UnicodeDecodeError: "),
    ],
)
def test_visionpipe_params_replaces_a_params_yaml_it_cannot_read_and_says_so(
    conf_copy: Path, capsys: pytest.CaptureFixture[str], text: str | bytes, said: str
) -> None:
    # A merge's conflict markers: composing params.yaml anew is the way out of them.
    params = conf_copy / "params.yaml"
    params.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["params", "train.lr=0.05"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote params.yaml, replacing one that {said}"), out
    assert yaml.safe_load(params.read_text())["train"]["lr"] == 0.05


def test_visionpipe_params_from_a_folder_of_the_project_writes_the_project_s_params(
    conf_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (conf_copy / "dvc.yaml").write_text("stages: {}\n")  # what makes the folder a project
    (conf_copy / "docs").mkdir()
    monkeypatch.chdir(conf_copy / "docs")
    assert main(["params", "train.epochs=3"]) == 0
    assert capsys.readouterr().out == "wrote ../params.yaml\n"  # none was there
    assert yaml.safe_load((conf_copy / "params.yaml").read_text())["train"]["epochs"] == 3
    assert main(["params", "train.epochs=4", "train.lr=0.05"]) == 0
    said = capsys.readouterr().out
    assert said == "wrote ../params.yaml; changed: train.epochs: 3 -> 4, train.lr: 0.01 -> 0.05\n"
    assert not (conf_copy / "docs" / "params.yaml").exists()
    # A relative path typed there means from there; the stages read it from the project's folder.
    assert main(["params", "data.source=../photos"]) == 2
    assert "error: data.source=../photos is a path relative to this folder" in (
        capsys.readouterr().err
    )
    assert main(["params", f"data.source={conf_copy / 'photos'}"]) == 0
    # `.` and `..` bare, and a path that is there from here but not from the project's folder.
    (conf_copy / "docs" / "photos").mkdir()
    (conf_copy / "docs" / "photos" / "a.png").write_bytes(b"x")
    for override in ("predict.inputs=[.]", "data.source=..", "predict.inputs=[photos/a.png]"):
        assert main(["params", override]) == 2, override
        assert f"error: {override} is a path relative to this folder" in capsys.readouterr().err
    # A bare name may mean one under launch.data_root, `~` is the stages' to expand.
    for value in ("cifar10-jpeg.zip", "'~/photos'"):
        assert main(["params", f"data.source={value}"]) == 0, value
    (conf_copy / "dvc.yaml").unlink()  # a folder of no project: nothing to compose
    assert main(["params"]) == 2
    err = capsys.readouterr().err
    assert "error: no conf/config.yaml here or in a project above" in err, err
    assert "run visionpipe params in the project's folder" in err


@pytest.mark.usefixtures("conf_copy")
def test_a_decimal_comma_is_named_with_the_dot_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    # Hydra reads `0,01` as a list (an "ambiguous value"); `dvc exp run --queue` as a sweep of
    # lr 0 and lr 1.
    assert main(["params", "train.lr=0,01"]) == 2
    err = capsys.readouterr().err
    assert "train.lr=0,01: a decimal number is written with a dot (train.lr=0.01)" in err, err
    assert not Path("params.yaml").exists()
    assert main(["params", "data.test_fraction=0,2"]) == 2  # a decimal or null
    assert "data.test_fraction=0,2: a decimal number is written with a dot" in (
        capsys.readouterr().err
    )
    assert main(["params", "train.epochs=10,20"]) == 2  # a whole number's: Hydra's sweep words
    assert "decimal number" not in capsys.readouterr().err


def test_the_shells_braced_variable_gets_the_forms_that_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `${HOME}/photos` is an interpolation of Hydra's own in an override or conf/.
    assert main(["params", "data.source=${VP_NOT_SET}/cifar.zip"]) == 2
    said = capsys.readouterr().err.rstrip()
    assert said.endswith(
        "${VP_NOT_SET} is Hydra's interpolation, not an environment variable: write $VP_NOT_SET,"
        " which params.yaml keeps as written and each machine's stage expands"
    ), said


def test_full_width_characters_an_input_method_typed_are_named_with_what_to_type(
    conf_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for typed, fixed in [
        ("train.lr＝0.001", "train.lr=0.001"),
        ("train.lr=０.００１", "train.lr=0.001"),
        ("train.lr=0.1，0.01", "train.lr=0.1,0.01"),
        ("data.source=‘/tmp/x’", "data.source='/tmp/x'"),
    ]:
        assert main(["params", typed]) == 2, typed
        err = capsys.readouterr().err
        assert "an input method typed in full width" in err and err.rstrip().endswith(fixed), err
        assert "goes in single quotes" not in err  # the quoting hint is not what helps
        # Hydra's caret stays under the character it points at: its line is not shifted.
        lines = err.splitlines()
        assert lines[0] == "error:", err
    # A path's own name may hold them: kept, quoted, beside the half-width one.
    assert main(["params", "data.source=/tmp/写真（２０２４）.zip"]) == 2
    said = capsys.readouterr().err.rstrip()
    assert said.endswith(
        "English punctuation: data.source=/tmp/写真(2024).zip; or, if the path's own name holds"
        " them, quoted: data.source='/tmp/写真（２０２４）.zip'"
    ), said
    # Where the path exists as typed, that is the advice, 。 and all.
    trip = conf_copy / "旅行。（１）"
    trip.mkdir()
    assert main(["params", f"data.source={trip}"]) == 2
    said = capsys.readouterr().err.rstrip()
    assert said.endswith(f"The path exists so: quote it, data.source='{trip}'"), said
    # An apostrophe in it is kept, the path then in double quotes; a list gets no quoting advice
    # (its items are quoted one by one).
    its = conf_copy / "it's（１）"
    its.mkdir()
    assert main(["params", f"data.source={its}"]) == 2
    said = capsys.readouterr().err.rstrip()
    assert said.endswith(f'The path exists so: quote it, data.source="{its}"'), said
    assert main(["params", f"predict.inputs=[{trip}]"]) == 2
    assert "quote it" not in capsys.readouterr().err
    # A full-width space inside a quoted path is a name, and no error.
    assert main(["params", "data.source='/tmp/我的\u3000项目'"]) == 0
    # An ASCII space before `=` (quoted, or from a script) is named, not the quoting advice.
    assert main(["params", "train.lr =0.1"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith(
        "'train.lr =0.1' has a space before '=': type it without, train.lr=0.1"
    )
    assert "single quotes" not in err
    # The space typed before `=` goes, as typing it again would need.
    assert main(["params", "train.lr\u3000=0.02"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("English punctuation: train.lr=0.02")
    # Quoted, the value reaches params.yaml's check, whose error names the key.
    assert main(["params", "train.epochs='１'"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("English punctuation: train.epochs='1'")
    # µ or half-width katakana in a path are its name; another override's error is not theirs.
    assert main(["params", "data.source='/data/10µm/ｶﾞｿﾞｳ'", "train.lrr=0.1"]) == 2
    assert "full width" not in capsys.readouterr().err


@pytest.mark.usefixtures("conf_copy")
def test_params_errors_give_this_command_s_ways_and_a_list_item_s_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["params", "train.lr=0.1,0.01"]) == 2  # Hydra's advice names its --multirun
    err = capsys.readouterr().err
    assert "--multirun" not in err and "dvc exp run --queue -S" in err, err
    assert main(["params", "predict.inputs=[5]"]) == 2
    assert "'predict.inputs.0' = 5: Input should be a valid string" in capsys.readouterr().err
    # A word without '=', and a recipe that is not there, say so in this command's words.
    assert main(["params", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith(
        "'foo' has no '=': give key=value, e.g. train.lr=0.01 or recipe=fast"
    )
    assert "single quotes" not in err
    for key, value in (("train.lr=", "0.1"), ("train.epochs=", "1"), ("data.source=", "/tmp/x")):
        assert main(["params", key, value]) == 2  # `train.lr= 0.1`: two words to the shell
        said = capsys.readouterr().err.rstrip()
        assert said.endswith(f"{key!r} and {value!r} are one override: {key}{value}"), said
    # DVC's -S, typed out of habit: the command without it.
    with pytest.raises(SystemExit):
        main(["params", "-S", "train.lr=0.1", "-S", "train.epochs=2"])
    err = capsys.readouterr().err.rstrip()
    assert err.endswith("(the overrides come alone: visionpipe params train.lr=0.1 train.epochs=2)")
    for typed, meant in (
        (["-Strain.lr=0.1"], "train.lr=0.1"),
        (["--set-param=train.lr=0.1"], "train.lr=0.1"),
        (["--set-param", "train.lr=0.1"], "train.lr=0.1"),
        (["-S++train.lr=1"], "++train.lr=1"),  # Hydra's add-or-override, and delete
        (["-S~train.lr"], "'~train.lr'"),  # quoted: the shell expands a bare ~
    ):
        with pytest.raises(SystemExit):
            main(["params", *typed])
        assert capsys.readouterr().err.rstrip().endswith(f"visionpipe params {meant})"), typed
    # Another unknown option is left out of the command, and is no -S to cut.
    with pytest.raises(SystemExit):
        main(["params", "-S", "train.lr=0.1", "--dry-run"])
    assert capsys.readouterr().err.rstrip().endswith("alone: visionpipe params train.lr=0.1)")
    with pytest.raises(SystemExit):
        main(["params", "--settle"])
    assert "alone" not in capsys.readouterr().err
    # A value in Hydra's quotes comes back as the shell takes it whole.
    with pytest.raises(SystemExit):
        main(["params", "-S", "data.source='/tmp/张伟 x/a.zip'"])
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith("""visionpipe params "data.source='/tmp/张伟 x/a.zip'")""")
    )
    assert main(["params", "recipe=nope"]) == 2
    err = capsys.readouterr().err
    assert "Could not find 'recipe/nope'" in err and "\tfast\n" in err
    assert "Config search path" not in err and "provider=" not in err
    # An empty entry (an unset variable) would predict every file of the project.
    assert main(["params", "predict.inputs=[data/samples,'']"]) == 2
    assert "an empty entry (an unset variable?): give a file, folder or glob" in (
        capsys.readouterr().err
    )


def test_visionpipe_params_where_it_may_not_write_says_so_in_a_line(
    conf_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A teacher's read-only reference project, a clone on a read-only mount. (Root writes
    # through a folder's permissions, so the refusal is the kernel's answer, stood in for.)
    from visionpipe import fsutil

    def refuse(path: Path, text: str) -> None:
        temp = conf_copy / ".params.yaml.x1y2.tmp"
        raise PermissionError(13, "Permission denied", str(temp))

    monkeypatch.setattr(fsutil, "write_text", refuse)
    assert main(["params"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: ") and len(err.splitlines()) == 1, err


@pytest.mark.usefixtures("conf_copy")
def test_a_launch_key_under_train_names_its_place_in_launch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An older params.yaml kept this machine's settings under train; merged into a newer
    # project, its `train.device: cpu` should say where the value goes, not list train's keys.
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["device"] = "cpu"
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "unknown key 'train.device': it is 'launch.device' now" in str(err.value)
    assert main(["params", "train.nproc=2"]) == 2
    out = capsys.readouterr().err
    assert "unknown key 'train.nproc': it is 'launch.nproc' now" in out
    assert "misspelling" not in out


@pytest.mark.usefixtures("conf_copy")
def test_a_bad_key_or_value_names_the_conf_file_that_sets_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    machine = Path("conf/local/machine.yaml")
    machine.parent.mkdir()
    machine.write_text("train:\n  lr_rate: 0.1\n")
    assert main(["params"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lr_rate'" in err and "(set in conf/local/machine.yaml)" in err
    machine.write_text("train:\n  epochs: 0\n")
    assert main(["params"]) == 2
    assert "'train.epochs' = 0" in (err := capsys.readouterr().err)
    assert "(set in conf/local/machine.yaml)" in err
    # The recipe comes after conf/local/ in Hydra's order: its value is the one params.yaml holds.
    Path("conf/recipe/tutorial.yaml").write_text(
        "# @package _global_\nrecipe: tutorial\ntrain:\n  lr: -1\n"
    )
    assert main(["params"]) == 2
    assert "(set in conf/recipe/tutorial.yaml)" in (err := capsys.readouterr().err)
    # A value given on the command line is in no file.
    machine.unlink()
    assert main(["params", "recipe=fast", "train.lr=-2"]) == 2
    assert "'train.lr' = -2" in (err := capsys.readouterr().err) and "set in" not in err


def test_a_model_spec_cannot_ask_for_less_than_the_smallest_image_size() -> None:
    from visionpipe.models import ModelSpec

    with pytest.raises(ValueError, match="min_image_size 4 is below 8, the smallest"):
        ModelSpec(lambda num_classes, image_size: torch.nn.Identity(), "tiny", min_image_size=4)


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """`train.augment.flip`-style names of a nested mapping's values."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_leaves(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


def test_conf_config_yaml_holds_every_key_of_the_code(conf_copy: Path) -> None:
    # A key new in the code without its line in conf/config.yaml is missing from every composed
    # params.yaml, which every stage then refuses: the failure names the lines to write. (The
    # values are test_committed_params_are_the_tutorial_defaults's; conf_copy leaves out this
    # machine's conf/local/.)
    from visionpipe.config.compose import compose

    conf = compose([], conf_copy / "conf")
    code = _leaves(parse_params({"about": conf["about"]}).model_dump(mode="json"))
    composed = _leaves(conf)
    lines = [
        f"{k}: {yaml.safe_dump(v).splitlines()[0]}" for k, v in code.items() if k not in composed
    ]
    assert not lines, "conf/config.yaml lacks these keys; add each at its default:\n" + "\n".join(
        lines
    )


def test_a_model_key_two_models_declare_differently_names_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visionpipe import models

    # A key name of the test's own: a model added to the zoo may declare `width` otherwise.
    zoo = dict(models.MODELS)
    build = zoo["tutorial_cnn"].build
    zoo["one"] = models.ModelSpec(build, "one", {"probe_width": Key(int, 64, "channels")})
    zoo["two"] = models.ModelSpec(build, "two", {"probe_width": Key(int, 16, "channels")})
    monkeypatch.setattr(models, "MODELS", zoo)
    with pytest.raises(TypeError) as err:
        models.own_keys()
    said = "'probe_width' of 'two' differs from the one of 'one' in its default (64 vs 16)"
    assert said in str(err.value)


def test_every_model_key_a_recipe_set_for_another_model_is_named_at_once() -> None:
    # The hymenoptera recipe's tutorial CNN switches under -S model.name=resnet18: one error per
    # run would have the user find them one run at a time.
    with pytest.raises(ConfigError) as caught:
        parse_params({"model": {"name": "resnet18", "activation": "relu", "batch_norm": True}})
    said = str(caught.value)
    assert "model.activation = \"relu\" does not apply to model 'resnet18'" in said
    assert "model.batch_norm = true does not apply to model 'resnet18'" in said
    assert "(-S model.activation=none -S model.batch_norm=false)" in said


def test_an_image_size_too_small_for_the_model_names_the_sizes_that_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visionpipe import config
    from visionpipe.config.training import TrainingParams
    from visionpipe.models import MODELS

    def parsed(model: str, size: int | None) -> str:
        raw = {"data": {"dataset": "cifar10"}, "model": {"name": model}}
        with pytest.raises(config.ConfigError, match="too small for model") as info:
            config.parse(TrainingParams, {**raw, "preprocess": {"image_size": size}}, "params")
        return str(info.value)

    # vgg16 needs 32: CIFAR-10's own size (null) works too.
    assert "set preprocess.image_size to 32 or more (or null, the dataset's default, 32)" in (
        parsed("vgg16", 16)
    )
    # A model of 64 px and up: null (32 for CIFAR-10) is too small as well, so not offered.
    monkeypatch.setitem(MODELS, "vgg16", dataclasses.replace(MODELS["vgg16"], min_image_size=64))
    for size in (None, 48):
        said = parsed("vgg16", size)
        assert said.rstrip().endswith("set preprocess.image_size to 64 or more"), said
