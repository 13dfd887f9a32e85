"""The named recipes: one definition each (conf/recipe/<name>.yaml), valid, and the same ones
bench/recipes.py measures (tests/unit/test_zoo_docs.py checks the README's table of them)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, git
from visionpipe.config.compose import (
    compose,
    compose_yaml,
    warn_drift,
    warn_dropped_baseline,
    warn_other_machine,
    warn_unused_local_source,
)
from visionpipe.config.params import parse_params
from visionpipe.models import MODELS

sys.path.insert(0, str(ROOT / "bench"))
from recipes import RECIPES as BENCH_RECIPES
from recipes import recipe_params

CONF = ROOT / "conf"
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))


def test_bench_measures_every_recipe() -> None:
    missing = sorted(set(RECIPES) - set(BENCH_RECIPES))
    stale = sorted(set(BENCH_RECIPES) - set(RECIPES))
    assert not missing, (
        f"bench/recipes.py's RECIPES has no line for conf/recipe/{missing[0]}.yaml: add "
        f'"{missing[0]}": "<epochs, batch, optimizer, lr, schedule, augmentation>" (the results '
        "table's description of what it trains)"
    )
    assert not stale, f"bench/recipes.py's RECIPES names recipes conf/recipe/ lacks: {stale}"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_to_valid_params_labelled_with_its_name(name: str) -> None:
    params = parse_params(compose([f"recipe={name}"], CONF))
    assert params.recipe == name
    assert params.model.name in MODELS
    # -S values go on top of the recipe.
    tuned = parse_params(compose([f"recipe={name}", "train.epochs=2"], CONF))
    assert tuned.train.epochs == 2 and tuned.model == params.model


def test_the_default_recipe_is_the_tutorial() -> None:
    assert compose([], CONF) == compose(["recipe=tutorial"], CONF)
    tutorial = parse_params(compose([], CONF))
    assert (tutorial.model.name, tutorial.train.lr, tutorial.train.batch_size) == (
        "tutorial_cnn",
        0.01,
        64,
    )


def test_switching_recipe_leaves_nothing_of_the_last_one() -> None:
    # Each composition starts from conf/config.yaml: no fast setting survives into resnet18.
    resnet = parse_params(compose(["recipe=resnet18"], CONF))
    assert not resnet.train.lookahead and resnet.model.tta == 0 and resnet.data.val_fraction == 0.1


def test_readme_has_no_long_flag_blocks() -> None:
    joined = (ROOT / "README.md").read_text().replace("\\\n", " ")
    for line in joined.splitlines():
        assert line.count(" -S ") <= 3, f"a recipe belongs in conf/recipe/, not in flags: {line}"


def test_bench_composes_what_dvc_exp_run_would() -> None:
    params = recipe_params("fast", "/data/cifar.zip")
    assert params["data"]["source"] == "/data/cifar.zip"
    assert params == {**compose(["recipe=fast", "data.source=/data/cifar.zip"], CONF)}


@pytest.mark.parametrize(
    ("timings", "steps", "validation", "loop"),
    [
        # Current layout: the steps, validation and the whole loop apart.
        ({"train_seconds": 40.0, "validation_seconds": 9.0, "epoch_loop_seconds": 50.0}, 40, 9, 50),
        # Revisions before bbf3d56: train_seconds is the whole loop, validation included.
        ({"train_seconds": 50.0}, 50, None, 50),
    ],
)
def test_bench_reads_train_timings_of_either_layout(
    tmp_path: Path, timings: dict, steps: float, validation: float | None, loop: float
) -> None:
    from recipes import read_result

    for name, value in {
        "metrics/train.json": {"epochs_run": 2},
        "metrics/timings/train.json": {"device": "cpu", **timings},
        "dvclive/eval/metrics.json": {"test_acc": 0.5},
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(value))
    result = read_result("fast", tmp_path)
    assert (result["train_seconds"], result["validation_seconds"]) == (steps, validation)
    assert result["epoch_loop_seconds"] == loop


def test_a_hand_edit_is_warned_of_with_how_to_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DVC recomposes params.yaml on every `dvc exp run` once Hydra is enabled, -S or not, so the
    # warning must not suggest that a plain `dvc exp run` keeps the edit.
    shutil.copytree(CONF, tmp_path / "conf")
    text = compose_yaml([], CONF).replace("  lr: 0.01\n", "  lr: 0.005\n")
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    with caplog.at_level(logging.WARNING):
        assert warn_drift(Path("params.yaml")) == ["train.lr"]
    assert "even without -S" in caplog.text
    assert "dvc exp run --no-hydra" in caplog.text
    # `visionpipe params train.lr=...` writes such values too: the warning names it as a cause.
    assert "`visionpipe params key=value`" in caplog.text


def _baseline(
    repo: Path,
    project: Path,
    text: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    also: tuple[str, ...] = (),
) -> Path:
    """params.yaml of `project` (in the git repository `repo`, made here) holding `text`,
    committed (with the files `also` names) as the experiment's baseline commit, as DVC names
    it to the stages."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q")
    params = Path("params.yaml")
    params.write_text(text, encoding="utf-8")
    git(project, "add", "params.yaml", *also)
    git(repo, "commit", "-qm", message)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(repo, "rev-parse", "HEAD").strip())
    return params


@pytest.mark.parametrize("subfolder", ["", "vision"])
def test_a_dropped_baseline_value_is_warned_of_but_not_one_the_experiment_sets(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    subfolder: str,
) -> None:
    # The baseline commit holds lr 0.02 and 3 epochs, neither from conf/ (an experiment applied
    # and committed). The next experiment passes `-S train.epochs=5` and takes conf/'s lr: the lr
    # changes unasked, the epochs as asked. A queued run meets the same case for every value of
    # the git-ignored conf/local/ that -S changes: its temporary copy has no conf/local/.
    # The project is the git repository, or a subfolder of a bigger one (`dvc init --subdir`).
    project = tmp_path / subfolder
    shutil.copytree(CONF, project / "conf")
    monkeypatch.chdir(project)
    params = _baseline(
        tmp_path,
        project,
        compose_yaml(["train.lr=0.02", "train.epochs=3"], CONF),
        "an experiment as the baseline",
        monkeypatch,
    )
    params.write_text(compose_yaml(["train.epochs=5"], CONF), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["train.lr"]
    assert "train.lr: 0.02 -> 0.01" in caplog.text
    assert "train.epochs" not in caplog.text
    # A recipe the experiment names is asked for, values and all (its 25 epochs); a value it
    # does not set (the lr) is still dropped unasked. The values read as params.yaml has them.
    caplog.clear()
    params.write_text(compose_yaml(["recipe=hymenoptera"], CONF), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["train.lr"]
    assert "train.epochs" not in caplog.text
    committed = compose_yaml(["train.lr=0.02", "data.sha256=null", "data.source=/d/c.zip"], CONF)
    params.write_text(committed, encoding="utf-8")
    git(tmp_path, "commit", "-qam", "a local source")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(tmp_path, "rev-parse", "HEAD").strip())
    params.write_text(compose_yaml(["train.lr=0.02"], CONF), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["data.source"]
    assert "data.source: /d/c.zip -> null." in caplog.text


def _committed_with_conf(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    message: str,
    subfolder: str = "",
) -> tuple[Path, Path]:
    """The project's conf/ in `tmp_path`/`subfolder` (the working folder; the repository is
    `tmp_path`) and the params.yaml it composes with `overrides`, committed together as the
    baseline commit: (conf/, params.yaml)."""
    project = tmp_path / subfolder
    conf = project / "conf"
    shutil.copytree(CONF, conf, ignore=shutil.ignore_patterns("local"))
    monkeypatch.chdir(project)
    committed = compose_yaml(overrides, Path("conf"))
    return conf, _baseline(tmp_path, project, committed, message, monkeypatch, also=("conf",))


def test_a_dropped_baseline_recipe_is_warned_of_but_not_one_conf_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # `dvc exp branch` of a `-S recipe=hymenoptera -S train.lr=0.02` experiment: the branch's
    # params.yaml holds the recipe, its conf/ does not, and the next `dvc exp run -S
    # train.epochs=1` there composes conf/'s recipe: other data, other model, unasked.
    conf, params = _committed_with_conf(
        tmp_path, monkeypatch, ["recipe=hymenoptera", "train.lr=0.02"], "a branch"
    )
    params.write_text(compose_yaml(["train.epochs=1"], Path("conf")), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["recipe", "train.lr"]
    assert "it changes recipe: hymenoptera -> tutorial, train.lr: 0.02 -> 0.01." in caplog.text
    # The experiment that names the recipe itself drops only the lr.
    caplog.clear()
    params.write_text(compose_yaml(["recipe=hymenoptera"], Path("conf")), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["train.lr"]
    # A recipe the commit's conf/ gave, changed in conf/ since, is no experiment's value.
    config = (conf / "config.yaml").read_text()
    (conf / "config.yaml").write_text(config.replace("- recipe: tutorial", "- recipe: hymenoptera"))
    composed = compose_yaml([], Path("conf"))
    _baseline(tmp_path, tmp_path, composed, "hymenoptera by default", monkeypatch, also=("conf",))
    (conf / "config.yaml").write_text(config)
    params.write_text(compose_yaml([], Path("conf")), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == []
    assert not caplog.text


def test_conf_edited_and_committed_without_composing_params_anew_is_no_dropped_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The README's way to change a default: edit conf/config.yaml and commit; params.yaml,
    # composed before the edit, is committed as it was (only `dvc repro` needs it composed).
    conf, params = _committed_with_conf(tmp_path, monkeypatch, [], "the defaults")
    config = (conf / "config.yaml").read_text()
    (conf / "config.yaml").write_text(config.replace("  seed: 0", "  seed: 7", 1))
    git(tmp_path, "commit", "-qam", "seed 7 in conf")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(tmp_path, "rev-parse", "HEAD").strip())
    assert yaml.safe_load(params.read_text())["data"]["seed"] == 0  # as committed, stale
    params.write_text(compose_yaml(["train.epochs=2"], Path("conf")), encoding="utf-8")
    assert yaml.safe_load(params.read_text())["data"]["seed"] == 7
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == []
    assert not caplog.text
    # A clone of that one commit (CI's checkout) cannot tell where params.yaml came from; a
    # deeper one can, and does (below, the applied value in a depth-3 clone).
    shallow = tmp_path.parent / f"{tmp_path.name}-shallow"
    git(tmp_path.parent, "clone", "-q", "--depth", "1", f"file://{tmp_path}", str(shallow))
    monkeypatch.chdir(shallow)
    params.write_text(compose_yaml(["train.epochs=2"], Path("conf")), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == []
    assert not caplog.text
    monkeypatch.chdir(tmp_path)
    # An applied experiment's value in that stale params.yaml is still one: conf/ never gave it.
    params.write_text(compose_yaml(["train.lr=0.02"], Path("conf")), encoding="utf-8")
    git(tmp_path, "commit", "-qam", "lr 0.02 applied")  # `dvc exp apply`, then a commit
    (conf / "config.yaml").write_text(config.replace("  seed: 0", "  seed: 5", 1))
    git(tmp_path, "commit", "-qam", "seed 5 in conf")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(tmp_path, "rev-parse", "HEAD").strip())
    params.write_text(compose_yaml(["train.epochs=2"], Path("conf")), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["train.lr"]
    # Applied in the baseline commit itself: a depth-3 clone has what came before, and warns.
    monkeypatch.chdir(tmp_path)
    params.write_text(compose_yaml(["train.lr=0.02"], Path("conf")), encoding="utf-8")
    git(tmp_path, "commit", "-qam", "lr 0.02 applied on seed 5")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(tmp_path, "rev-parse", "HEAD").strip())
    deeper = tmp_path.parent / f"{tmp_path.name}-depth3"
    git(tmp_path.parent, "clone", "-q", "--depth", "3", f"file://{tmp_path}", str(deeper))
    monkeypatch.chdir(deeper)
    params.write_text(compose_yaml(["train.epochs=2"], Path("conf")), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == ["train.lr"]


def _conf(project: Path, machine: str) -> None:
    """The project's conf/ in `project`, with `machine` as this machine's conf/local/."""
    shutil.copytree(CONF, project / "conf", ignore=shutil.ignore_patterns("local"))
    _local(project / "conf", machine)


def _local(conf: Path, machine: str) -> None:
    """This machine's git-ignored conf/local/machine.yaml in the project conf `conf`."""
    (conf / "local").mkdir(exist_ok=True)
    (conf / "local" / "machine.yaml").write_text(machine, encoding="utf-8")


def test_a_value_of_conf_local_or_a_key_new_to_conf_is_not_a_dropped_baseline_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The baseline commit holds conf/'s defaults; this machine's conf/local/machine.yaml sets
    # data.source (as docs/datasets.md suggests) and conf/ has gained model.dropout since.
    shutil.copytree(CONF, tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    monkeypatch.chdir(tmp_path)
    committed = yaml.safe_load(compose_yaml([], Path("conf")))
    del committed["model"]["tta"]
    params = _baseline(
        tmp_path, tmp_path, yaml.safe_dump(committed, sort_keys=False), "the defaults", monkeypatch
    )
    _local(tmp_path / "conf", "data:\n  source: /data/c.zip\n")
    params.write_text(compose_yaml(["train.epochs=1"], Path("conf")), encoding="utf-8")
    assert yaml.safe_load(params.read_text())["data"]["source"] == "/data/c.zip"
    with caplog.at_level(logging.WARNING):
        assert warn_dropped_baseline(params) == []
    assert not caplog.text


def test_a_value_of_conf_local_that_the_experiment_s_recipe_changes_is_not_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # conf/local/machine.yaml sets data.source and train.epochs; the baseline commit holds them
    # as composed. `-S recipe=hymenoptera` sets data.source: null, `-S recipe=vgg16` 1 epoch:
    # the recipe changes them, no experiment applied and committed ever did.
    _conf(tmp_path, "data:\n  source: /data/c.zip\ntrain:\n  epochs: 2\n")
    monkeypatch.chdir(tmp_path)
    params = _baseline(
        tmp_path,
        tmp_path,
        compose_yaml([], Path("conf")),
        "this machine's composed params",
        monkeypatch,
    )
    for recipe in ("hymenoptera", "vgg16"):
        params.write_text(compose_yaml([f"recipe={recipe}"], Path("conf")), encoding="utf-8")
        with caplog.at_level(logging.WARNING):
            assert warn_dropped_baseline(params) == [], recipe
    assert not caplog.text


def _machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: str) -> Path:
    """A project whose conf/local/machine.yaml holds `local`, worked in outside `dvc exp run`;
    the path of its params.yaml."""
    _conf(tmp_path, local)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    return Path("params.yaml")


def test_a_local_data_source_a_recipe_sets_aside_is_warned_of_with_the_way_to_use_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # conf/local/machine.yaml names this machine's ants/bees zip; `-S recipe=hymenoptera`
    # sets data.source null (its official archive), so the zip is not read: offline, the
    # download would fail as if no source were set.
    params = _machine(tmp_path, monkeypatch, "data:\n  source: /data/hymenoptera_data.zip\n")

    def said(overrides: list[str]) -> str:
        params.write_text(compose_yaml(overrides, Path("conf")), encoding="utf-8")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert warn_unused_local_source(params), overrides
        return caplog.text

    assert (
        "conf/local/machine.yaml sets data.source /data/hymenoptera_data.zip, which this run does"
        " not read: its data.source is null (the recipe hymenoptera sets it so)"
    ) in (text := said(["recipe=hymenoptera"]))
    assert "`launch: {data_root: /abs/folder}`. To train on" in text
    # `dvc repro` takes no -S: composed in, then run.
    assert text.rstrip().endswith(
        "compose it in: `uv run visionpipe params recipe=hymenoptera data.source=...`, then"
        " `uv run dvc repro`"
    ), text
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)  # in `dvc exp run`: -S
    assert said(["recipe=hymenoptera"]).rstrip().endswith("pass -S data.source=... too")
    # Read from launch.data_root already: only what is not read, no advice to set it.
    text = said(["recipe=hymenoptera", "launch.data_root=/data"])
    assert "which this run does not read" in text and "data_root:" not in text
    # `dvc repro` of a params.yaml composed without conf/local/ (a teammate's): said so.
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert (
        "its data.source is null (params.yaml was composed without conf/local/machine.yaml). To"
        " train on /data/hymenoptera_data.zip, run `uv run visionpipe params`"
    ) in said(["data.source=null"])
    # Read (the tutorial's recipe keeps it), set aside by -S in an experiment: nothing to say.
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    for overrides in ([], ["recipe=hymenoptera", "data.source=/data/h.zip"], ["data.source=null"]):
        params.write_text(compose_yaml(overrides, Path("conf")), encoding="utf-8")
        assert not warn_unused_local_source(params), overrides


def test_launch_settings_composed_on_another_machine_are_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Alice composed and committed params.yaml with her data folder; Bob's clone has his own in
    # conf/local/machine.yaml. His `dvc repro` runs with hers: say so, with both values.
    params = _machine(tmp_path, monkeypatch, "launch:\n  data_root: /home/bob/data\n")
    alices = compose_yaml(["launch.data_root=/home/alice/data"], tmp_path / "conf")
    params.write_text(alices, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert warn_other_machine(params) == ["launch.data_root"]
    assert "launch.data_root '/home/alice/data', here '/home/bob/data'" in caplog.text
    assert "uv run dvc exp run" in caplog.text
    # Composed here, or inside `dvc exp run` (whose -S may set it): nothing to say. Nor for
    # another spelling of the same folder.
    params.write_text(compose_yaml([], tmp_path / "conf"), encoding="utf-8")
    assert warn_other_machine(params) == []
    slash = compose_yaml(["launch.data_root=/home/bob/data/"], tmp_path / "conf")
    params.write_text(slash, encoding="utf-8")
    assert warn_other_machine(params) == []
    # A value of conf/local that Hydra resolves (an environment variable) is compared resolved.
    monkeypatch.setenv("DATA_HOME", "/home/bob/data")
    _local(tmp_path / "conf", "launch:\n  data_root: ${oc.env:DATA_HOME}\n")
    assert warn_other_machine(params) == []
    params.write_text(alices, encoding="utf-8")
    assert warn_other_machine(params) == ["launch.data_root"]
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert warn_other_machine(params) == []


@pytest.mark.parametrize("subfolder", ["", "vision"])
def test_an_edit_of_conf_since_the_baseline_commit_is_no_dropped_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    subfolder: str,
) -> None:
    # conf/config.yaml is the file to edit by hand: the baseline commit holds conf/ and the
    # params.yaml it composed (lr 0.01); conf/ now says lr 0.005, a recipe file 4 epochs, and
    # the experiment composes them. Nothing the commit held is dropped: the user changed conf/.
    # The project is the repository, or a subfolder of a bigger one (`dvc init --subdir`).
    shared = tmp_path / "team" / "recipe.yaml"  # a recipe linked in from outside conf/
    shared.parent.mkdir()
    shared.write_text("# @package _global_\ntrain:\n  epochs: 2\n")
    conf, params = _committed_with_conf(tmp_path, monkeypatch, [], "conf's defaults", subfolder)
    (conf / "recipe" / "team.yaml").symlink_to(shared)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a team recipe")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", git(tmp_path, "rev-parse", "HEAD").strip())
    config = (conf / "config.yaml").read_text()
    assert "  lr: 0.01\n" in config
    (conf / "config.yaml").write_text(config.replace("  lr: 0.01\n", "  lr: 0.005\n"))
    recipe = conf / "recipe" / "fast.yaml"
    assert "  epochs: 10\n" in recipe.read_text()
    recipe.write_text(recipe.read_text().replace("  epochs: 10\n", "  epochs: 4\n"))
    for overrides in ([], ["recipe=fast"]):
        params.write_text(compose_yaml(overrides, Path("conf")), encoding="utf-8")
        with caplog.at_level(logging.WARNING):
            assert warn_dropped_baseline(params) == [], overrides
        assert not caplog.text


def test_dropped_values_are_warned_of_once_a_run_and_again_on_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # download and train of one `dvc exp run` both check; the first says it. A retry of a
    # failed run (the same name, the same params) writes params.yaml anew: said again.
    import os

    from visionpipe.config.compose import _first_time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "train")  # stages DVC runs
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: 0.01\n")
    assert _first_time("a" * 40, params) and not _first_time("a" * 40, params)
    assert _first_time("b" * 40, params)  # another baseline
    stat = params.stat()
    params.write_text("train:\n  lr: 0.01\n")  # as `dvc exp run` writes it again
    os.utime(params, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _first_time("b" * 40, params) and not _first_time("b" * 40, params)
    assert _first_time("b" * 40, params, "label")  # each warning its own
    # A stage run by hand, outside DVC, is a run of its own each time.
    monkeypatch.delenv("DVC_STAGE")
    assert _first_time("b" * 40, params) and _first_time("b" * 40, params)
