"""dvc.yaml and the code never disagree: stage deps are the modules each stage loads, and every
path the library writes is a declared output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path, PurePosixPath

import pytest
import yaml

from visionpipe import paths
from visionpipe.tracking import EpochRecord

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = PIPELINE["stages"]
# The curves DVCLive writes per epoch (dvclive/train/plots/metrics/<name>.tsv), and its images.
LIVE_CURVES = [f.metadata["live"] for f in fields(EpochRecord) if "live" in f.metadata]
IMAGES = f"{paths.LIVE_TRAIN}/plots/images"

# The script's modules, and those its main() imports when it runs (a stage may import inside
# main, so that a Ctrl-C while they load is its one line).
LOADED = """
import ast, importlib, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("stage", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for node in ast.walk(ast.parse(open(sys.argv[1]).read())):
    if isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
    elif isinstance(node, ast.ImportFrom):
        module = importlib.import_module(node.module)
        for alias in node.names:
            if not hasattr(module, alias.name):
                importlib.import_module(node.module + "." + alias.name)
print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()
                        if n.split(".")[0] == "visionpipe" and getattr(m, "__file__", None))))
"""


# The package's version: no stage depends on it, so that a release re-runs no stage (a model
# names the version of the code that trained it).
VERSION = "src/visionpipe/_version.py"


def _entries(items: list) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else i for i in items]


def test_the_six_stages_in_order() -> None:
    assert list(STAGES) == ["download", "preprocess", "train", "evaluate", "export", "predict"]


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_are_exactly_the_project_modules_the_stage_loads(stage: str) -> None:
    script = f"stages/{stage}.py"
    deps = _entries(STAGES[stage]["deps"])
    assert script in deps
    cmd = STAGES[stage]["cmd"]
    warm = cmd.endswith(f"python -m visionpipe.warm {script}")
    assert warm or cmd.endswith(f"python {script}")
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, str(ROOT / script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
        check=True,
    )
    loaded = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(proc.stdout)}
    if warm:  # the launcher the command runs the script through
        loaded.add("src/visionpipe/warm.py")
    assert VERSION in loaded  # every stage imports the package, which names its version
    loaded.discard(VERSION)  # a version bump alone re-runs nothing
    declared = {d for d in deps if d.startswith("src/")}
    assert loaded - declared == set(), f"{stage}: modules it loads but does not depend on"
    assert declared - loaded == set(), f"{stage}: deps it does not load (needless re-runs)"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_declared_code_dep_exists(stage: str) -> None:
    for dep in _entries(STAGES[stage]["deps"]):
        if dep.startswith(("src/", "stages/")):
            assert (ROOT / dep).is_file(), f"{stage} depends on missing {dep}"


# Written by the train stage but no DVC output, on purpose: an interrupted run's resume point.
# DVC leaves undeclared files alone (a declared one would have to be persistent, which keeps the
# run cache from the stage), and git ignores it.
UNDECLARED = {"CHECKPOINT_DIR"}
INPUTS = {"PARAMS", "DVC_LOCK"}  # paths a stage reads and never writes


def test_undeclared_outputs_are_git_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for name in UNDECLARED:
        assert f"/{getattr(paths, name).as_posix()}/" in ignored, name


def _cached(stage: dict) -> dict[str, bool]:
    """Each path a stage writes -> whether DVC caches it (`cache: false` makes git keep it)."""
    found = {}
    for key in ("outs", "metrics", "plots"):
        for item in stage.get(key, []):
            path, options = next(iter(item.items())) if isinstance(item, dict) else (item, None)
            found[path] = (options or {}).get("cache", True)
    return found


def test_git_ignores_the_cached_outputs_and_keeps_the_rest(tmp_path: Path) -> None:
    # DVC writes its .gitignore entries only once a run ends well: the committed .gitignore holds
    # them from the start, so a `git add -A` after a failed first run commits no dataset. (In a
    # repository of the committed .gitignore alone: a run here has written DVC's own.)
    cached = {path: c for stage in STAGES.values() for path, c in _cached(stage).items()}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=tmp_path,
        input="\n".join([*cached, *(f"{p}/x" for p in cached)]),
        capture_output=True,
        text=True,
    ).stdout.split()
    for path, cache in cached.items():
        fix = f"add the line /{path}" if cache else "stop ignoring it (DVC leaves it to git)"
        for name in (path, f"{path}/x"):
            assert (name in ignored) == cache, (
                f".gitignore: {path} is a{' cached' if cache else 'n uncached'} output of "
                f"dvc.yaml: {fix}"
            )


def test_a_users_own_predictions_are_git_ignored_but_a_dvc_add_of_them_is_not(
    tmp_path: Path,
) -> None:
    # predict --json predictions/mine.json (where its refusals send outputs) stays out of a
    # `git add -A`; a `dvc add` of it writes mine.json.dvc, which DVC refuses to write ignored,
    # and which DVC's push, pull, gc and exp run skip where its own reading (dulwich's) of
    # .gitignore takes the folder for ignored.
    from scmrepo.git import Git

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    names = ["predictions/mine.json", "predictions/mine.json.dvc", "predictions/.gitignore"]
    names += ["predictions/mine.csv", "predictions/Grid.PNG", "predictions/run1/x.tsv"]
    names += ["predictions/run.v2/dog.json", "predictions/run.v2/dog.json.dvc"]  # a dotted folder
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=tmp_path,
        input="\n".join(names),
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == [n for n in names if not n.endswith((".dvc", ".gitignore"))]
    for folder in ("predictions/run1", "predictions/run.v2"):
        (tmp_path / folder).mkdir(parents=True)
    with Git(str(tmp_path)) as scm:
        for folder in ("predictions/", "predictions/run1/", "predictions/run.v2/"):
            assert not scm.is_ignored(f"{tmp_path}/{folder}"), folder
        assert not scm.is_ignored(f"{tmp_path}/predictions/run.v2/dog.json.dvc")


def _declared(stage: dict) -> list[str]:
    """Every path a stage writes: its outs, metrics and plots."""
    return [o for key in ("outs", "metrics", "plots") for o in _entries(stage.get(key, []))]


def test_every_library_path_is_a_declared_output() -> None:
    outs = [PurePosixPath(o) for s in STAGES.values() for o in _declared(s)]
    for name, value in vars(paths).items():
        if not isinstance(value, Path) or name in UNDECLARED | INPUTS:
            continue
        p = PurePosixPath(value.as_posix())
        assert any(p == o or o in p.parents or p in o.parents for o in outs), (
            f"paths.{name} = {p} is written by a stage but not declared in dvc.yaml"
        )
    for split in paths.SPLITS:
        assert PurePosixPath(paths.PROCESSED_DIR.as_posix()) in outs
        assert paths.split_file(split).parent == paths.PROCESSED_DIR


def test_every_output_lets_the_run_cache_keep_its_stage() -> None:
    # DVC keeps no run-cache entry for a stage with a persistent output, or with an uncached one
    # that is not a metric or plot of that stage (dvc/stage/cache.py, Stage.run): such a stage
    # would retrain when an experiment returns to params that already ran.
    for name, stage in STAGES.items():
        for out in stage.get("outs", []):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            assert not options.get("persist"), f"{name}: {out} is persistent"
            assert options.get("cache", True), f"{name}: {out} is uncached but not a metric/plot"


def test_no_stage_depends_on_the_launch_settings() -> None:
    for name, stage in STAGES.items():
        params = [p for p in stage.get("params", []) if isinstance(p, str)]
        assert not [p for p in params if p.split(".")[0] == "launch"], name


def test_artifacts_are_outputs() -> None:
    outs = {o for s in STAGES.values() for o in _declared(s)}
    for name, artifact in PIPELINE["artifacts"].items():
        assert artifact["path"] in outs and artifact["type"] == "model", name


def test_curves_on_a_step_axis_say_which_step() -> None:
    # `step` is the epoch in DVCLive's curves and the optimizer step in steps.csv: side by side
    # on one page, a bare "step" axis would not tell them apart.
    labels = {
        path: props.get("x_label")
        for stage in STAGES.values()
        for entry in stage.get("plots", [])
        if isinstance(entry, dict)
        for path, props in entry.items()
        if props.get("x") == "step"
    }
    assert labels == {
        **{f"{paths.LIVE_TRAIN}/plots/metrics/{name}.tsv": "epoch" for name in LIVE_CURVES},
        "metrics/plots/steps.csv": "optimizer step",
    }


def test_every_curve_and_chart_is_a_titled_plot() -> None:
    # DVC Studio and VS Code title a plot without one by its path; every curve DVCLive writes
    # is declared by its file, so that each has a title.
    plots = {
        path: props
        for stage in STAGES.values()
        for entry in stage.get("plots", [])
        for path, props in (entry.items() if isinstance(entry, dict) else [(entry, {})])
    }
    charts = {path: props for path, props in plots.items() if not path.endswith(".png")}
    untitled = [path for path, props in charts.items() if path != IMAGES and not props.get("title")]
    assert not untitled, f"plots without a title: {untitled}"
    for name in LIVE_CURVES:
        assert f"{paths.LIVE_TRAIN}/plots/metrics/{name}.tsv" in charts, name


def _readme_stage_table() -> dict[str, tuple[list[str], list[str]]]:
    """README.md's stage table: stage -> (the backticked items it reads, those it writes)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (.*) \| (.*) \|$", text, re.M)
    return {stage: (_items(reads), _items(writes)) for stage, reads, writes in rows}


def _items(cell: str) -> list[str]:
    """The backticked names of a cell, `{a,b}` spelled out, a folder's trailing / dropped."""
    items = []
    for item in re.findall(r"`([^`]+)`", cell):
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", item)
        alts = [brace[1] + alt + brace[3] for alt in brace[2].split(",")] if brace else [item]
        items += [alt.rstrip("/") for alt in alts]
    return items


def _covers(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents


def test_the_readme_s_stage_table_says_what_dvc_yaml_declares() -> None:
    table = _readme_stage_table()
    assert list(table) == list(STAGES)
    for stage, (reads, writes) in table.items():
        declared = [PurePosixPath(o) for o in _declared(STAGES[stage])]
        written = [PurePosixPath(w) for w in writes if "/" in w]
        for w in written:
            assert any(_covers(w, o) for o in declared), f"README: {stage} writes {w}?"
        for o in declared:
            assert any(_covers(w, o) for w in written), f"README: {stage}'s {o} is missing"
        deps = [PurePosixPath(d) for d in _entries(STAGES[stage]["deps"])]
        for r in (r for r in reads if "/" in r):
            assert any(_covers(PurePosixPath(r), d) for d in deps), f"README: {stage} reads {r}?"
        params = _entries(STAGES[stage].get("params", []))
        named = [r.removesuffix(".*") for r in reads if re.fullmatch(r"[a-z_]+(\.[a-z_*]+)+", r)]
        for n in named:
            assert any(p == n or p.startswith(f"{n}.") or n.startswith(f"{p}.") for p in params), (
                f"README: {stage} reads {n}, not among its params {params}"
            )
        for p in params:
            assert any(p == n or p.startswith(f"{n}.") for n in named), (
                f"README: {stage}'s param {p} is missing"
            )


def test_the_version_is_the_one_module_no_stage_depends_on() -> None:
    assert paths.NOT_A_DEP == (VERSION,)


def test_a_stage_that_imports_code_it_does_not_depend_on_stops_before_it_runs(
    tmp_path: Path,
) -> None:
    # A model in a module of its own, imported by the stage's code but not in its deps: an edit
    # to it would re-run nothing, and DVC would keep the old code's results as the new code's.
    from tests.helpers import env

    shutil.copytree(ROOT / "src" / "visionpipe", tmp_path / "src" / "visionpipe")
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "src" / "visionpipe" / "mynet.py").write_text("WIDTH = 3\n")
    script = tmp_path / "stages" / "preprocess.py"
    script.write_text("import visionpipe.mynet  # noqa: F401\n" + script.read_text())

    def preprocess(stage: str = "preprocess") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "stages/preprocess.py"],
            cwd=tmp_path,
            env={**env(), "PYTHONPATH": "src", "DVC_STAGE": stage},
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = preprocess()
    assert proc.returncode == 1, proc.stderr
    assert (
        "stage preprocess imports src/visionpipe/mynet.py, which dvc.yaml does not list among its"
        " deps: DVC would not re-run it when that code changes"
    ) in proc.stderr
    assert proc.stderr.rstrip().endswith(
        "(and of each other stage that imports it) these files, or a folder that holds them:"
        "\n      - src/visionpipe/mynet.py"
    ), proc.stderr
    assert not (tmp_path / "data").exists()  # refused before it read or wrote anything
    # Listed as the message says: the stage runs (and stops at its missing input).
    dvc_yaml = (tmp_path / "dvc.yaml").read_text()
    listed = "      - stages/preprocess.py\n"
    assert dvc_yaml.count(listed) == 1
    (tmp_path / "dvc.yaml").write_text(
        dvc_yaml.replace(listed, listed + "      - src/visionpipe/mynet.py\n")
    )
    proc = preprocess()
    assert "mynet" not in proc.stderr and "data/raw" in proc.stderr, proc.stderr
    # `dvc repro ../dvc.yaml` from a sub-folder names the stage by its dvc.yaml too.
    proc = preprocess("../dvc.yaml:preprocess")
    assert "dvc.yaml does not list" not in proc.stderr and "data/raw" in proc.stderr, proc.stderr


def test_an_environment_inside_the_project_is_no_code_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A conda env or a venv in the project folder: its standard library and packages are
    # loaded from there, and are not the project's code; a module at the root is.
    monkeypatch.chdir(tmp_path)
    deps = ["stages/train.py", "src/visionpipe/train.py"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"deps": deps}}}))
    for dep in deps:
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dep).touch()
    root = os.getcwd()
    loaded = [
        f"{root}/{name}"
        for name in (
            *deps,
            "src/visionpipe/_version.py",
            "env/lib/python3.11/os.py",
            "venv/lib/python3.12/site-packages/torch/nn/modules/linear.py",
            ".venv/lib/python3.11/site-packages/numpy/__init__.py",
            "src/visionpipe/__pycache__/x.cpython-311.pyc",
            "mynet.py",
            "src/mylab/nets.py",
        )
    ] + ["_ops.py", "/usr/lib/python3.11/json/__init__.py"]
    assert paths.unlisted_code("train", loaded) == ["mynet.py", "src/mylab/nets.py"]
    # A package's empty __init__.py holds no code (and DVC warns of an empty dep every run).
    for name in ("src/mylab/__init__.py", "src/mylab/nets.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("" if "__init__" in name else "WIDTH = 3\n")
    with_package = [*loaded, f"{root}/src/mylab/__init__.py"]
    assert paths.unlisted_code("train", with_package) == ["mynet.py", "src/mylab/nets.py"]
    (tmp_path / "src/mylab/__init__.py").write_text("from .nets import WIDTH\n")
    assert "src/mylab/__init__.py" in paths.unlisted_code("train", with_package)
    # A model's module is named for the stages that build the model; another stage's, not.
    with pytest.raises(paths.UnlistedCodeError, match="a model's module: train, evaluate and"):
        paths.refuse_unlisted_code("train", with_package)
    stages = {"report": {"deps": deps}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(paths.UnlistedCodeError) as err:
        paths.refuse_unlisted_code("report", with_package)
    assert "model" not in str(err.value) and "a folder that holds them" in str(err.value)
    # Listed, a module at the root or a folder of modules (DVC re-runs for any file in it).
    stages = {"train": {"deps": [*deps, "mynet.py", "src/mylab"]}}
    stages["each"] = {"foreach": ["a", "b"], "do": {"cmd": "x", "deps": ["stages/${item}.py"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    assert paths.unlisted_code("train", loaded) == []
    # A foreach stage's deps are templated: not checked, never refused for it.
    assert paths.unlisted_code("each@a", loaded) == paths.unlisted_code("each", loaded) == []
    # A sub-pipeline's stage of that name, run from its folder (DVC says `train` alone), runs
    # another script than this dvc.yaml's train: not checked against its deps.
    stages["train"]["cmd"] = "PYTHONPATH=src python stages/train.py"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    mine = paths.unlisted_code("train", [*loaded, f"{root}/src/other.py"], "stages/train.py")
    assert mine == ["src/other.py"]
    assert paths.unlisted_code("train", [*loaded, f"{root}/src/other.py"], "stages/eval.py") == []
    monkeypatch.setenv("DVC_STAGE", "../dvc.yaml:train")
    assert paths.dvc_stage() == "train"
    monkeypatch.setenv("DVC_STAGE", "../../dvc.yaml:train")
    assert paths.dvc_stage() == "train"
    monkeypatch.setenv("DVC_STAGE", "variants/dvc.yaml:train")  # a sub-pipeline's: not ours
    assert paths.dvc_stage() is None


def test_project_code_a_stage_imports_as_it_runs_is_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A builder that imports its module inside the function: past the check before the stage
    # ran, named once it has.
    import types

    from visionpipe import logs

    monkeypatch.chdir(tmp_path)
    deps = ["stages/train.py"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {"deps": deps}}}))
    late = types.ModuleType("late")
    late.__file__ = os.path.join(os.getcwd(), "src", "visionpipe", "late.py")
    monkeypatch.setitem(sys.modules, "late_for_test", late)
    monkeypatch.setenv("DVC_STAGE", "train")
    logs._warn_unlisted_code()
    assert (
        "stage train imported src/visionpipe/late.py as it ran, which dvc.yaml does not list among"
        " its deps: DVC will not re-run it when that code changes; add to the deps of train in"
        " dvc.yaml:\n      - src/visionpipe/late.py"
    ) in caplog.text


def test_a_folder_of_code_listed_as_a_dep_does_not_change_with_python_s_bytecode(
    tmp_path: Path,
) -> None:
    # `- src/mylab` as a dep (what the unlisted-code refusal offers): the __pycache__ Python
    # writes beside its modules, another in each clone and Python version, is no change to it.
    from tests.helpers import dvc, git

    git(tmp_path, "init", "-q")
    dvc(tmp_path, "init", "-q")
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    (lab := tmp_path / "src" / "mylab").mkdir(parents=True)
    (lab / "nets.py").write_text("WIDTH = 3\n")
    stage = {"cmd": "echo done > out.txt", "deps": ["src/mylab"], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage}}))
    dvc(tmp_path, "repro", "-q")
    (lab / "__pycache__").mkdir()
    (lab / "__pycache__" / "nets.cpython-311.pyc").write_bytes(b"\xa7\r\r\n bytecode")
    assert "up to date" in dvc(tmp_path, "status").stdout
    (lab / "nets.py").write_text("WIDTH = 4\n")  # the code itself still counts
    assert "modified:" in dvc(tmp_path, "status").stdout
