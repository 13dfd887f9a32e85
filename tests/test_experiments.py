"""Experiments the DVC way, driven by the real commands on tiny data: the run cache, launch settings
outside the hash, live metrics, one-flag recipes, two machines, and an `exp show` that fits."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.cifar_archive import write_cifar_python_archive
from tests.helpers import assert_exp_show_fits_120_columns, dvc, env, git, make_project
from visionpipe import paths

pytestmark = pytest.mark.slow

TINY_TRAIN = {"epochs": 2, "batch_size": 16, "log_every": 5}


def _project(tmp_path: Path, name: str = "repo", **sections: dict) -> Path:
    archive = tmp_path / "cifar-10-python.tar.gz"
    if not archive.exists():
        write_cifar_python_archive(archive, n_train_per_batch=20, n_test=30, seed=4)
    train = {**TINY_TRAIN, **sections.pop("train", {})}
    params = {"data": {"source": str(archive)}, "train": train, **sections}
    return make_project(tmp_path / name, params)


def _baseline(repo: Path) -> None:
    """`dvc repro` once and commit it, as a user does before experimenting."""
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline run")


@pytest.fixture(scope="module")
def _baselined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselined")
    repo = _project(root)
    _baseline(repo)
    return repo


@pytest.fixture
def repo(_baselined: Path, tmp_path: Path) -> Path:
    """A copy of one committed baseline run (git, DVC cache and all) for each test to change."""
    copy = tmp_path / "repo"
    shutil.copytree(_baselined, copy, symlinks=True)
    return copy


def _ran(out: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in out


def _outputs(repo: Path, rev: str | None = None) -> dict[str, str]:
    """Every stage output's hash in dvc.lock (of the workspace, or of commit `rev`), but the
    run-specific ones (wall-clock times)."""
    text = git(repo, "show", f"{rev}:dvc.lock") if rev else (repo / "dvc.lock").read_text()
    return {
        out["path"]: out.get("md5") or out.get("hash", "")
        for body in yaml.safe_load(text)["stages"].values()
        for out in body.get("outs", [])
        if out["path"] not in (str(paths.TRAIN_TIMINGS), str(paths.TB_DIR))
    }


def test_returning_to_params_that_ran_restores_them_from_the_run_cache(repo: Path) -> None:
    dvc(repo, "exp", "run", "-S", "train.lr=0.02")
    a = _outputs(repo)
    model_a = (repo / paths.MODEL).read_bytes()
    out = dvc(repo, "exp", "run", "-S", "train.lr=0.03").stdout
    assert _ran(out, "train")
    out = dvc(repo, "exp", "run", "-S", "train.lr=0.02").stdout
    for stage in ("train", "evaluate", "export", "predict"):
        assert f"Stage '{stage}' is cached - skipping run" in out, out
        assert not _ran(out, stage)
    assert _outputs(repo) == a and (repo / paths.MODEL).read_bytes() == model_a

    # The same by changing the defaults in conf/ and running `dvc repro`: B, then A again.
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "at A")
    for lr in ("0.03", "0.02"):
        proc = subprocess.run(
            [sys.executable, "-m", "visionpipe.cli", "params", f"train.lr={lr}"],
            cwd=repo,
            env=env(),
            capture_output=True,
            text=True,
            check=True,
        )
        assert "train.lr" in proc.stdout
        out = dvc(repo, "repro").stdout
        assert not _ran(out, "train") and "Stage 'train' is cached" in out, out
    assert _outputs(repo) == a

    # And by checking out an older commit's params and lock.
    git(repo, "checkout", "HEAD~1", "--", "params.yaml", "dvc.lock")
    out = dvc(repo, "repro").stdout
    assert not _ran(out, "train") and _outputs(repo) == _outputs(repo, "HEAD~1")


def test_launch_settings_never_retrain_but_still_launch(repo: Path) -> None:
    for flag in ("launch.master_port=29555", "launch.nproc=2", "launch.device=cpu"):
        out = dvc(repo, "exp", "run", "-S", flag).stdout
        assert "Stage 'train' didn't change, skipping" in out, (flag, out)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert not [
        k
        for s in lock.values()
        for k in s.get("params", {}).get("params.yaml", {})
        if k.startswith("launch")
    ]
    # With something that does retrain, 2 processes still go through torchrun.
    out = dvc(repo, "exp", "run", "-S", "launch.nproc=2", "-S", "train.lr=0.02").stdout
    assert _ran(out, "train")
    assert json.loads((repo / paths.TRAIN_TIMINGS).read_text())["processes"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_each_run_dvc_repro_and_write_the_same_lock(tmp_path: Path) -> None:
    # Two clones as two machines would have them, one launch.node_rank each, rendezvous on
    # 127.0.0.1; fp32 so the result can be held to a one-process run's within 1e-5.
    train = {"epochs": 2, "amp": False, "momentum": 0.9}
    single = _project(tmp_path, "single", train=train)
    port = _free_port()
    nodes = [
        _project(
            tmp_path,
            f"node{rank}",
            train=train,
            launch={"nnodes": 2, "node_rank": rank, "master_port": port},
        )
        for rank in (0, 1)
    ]
    dvc(single, "repro")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=node,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in nodes
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
    lock0, lock1 = (_outputs(n) for n in nodes)
    assert lock0 == lock1, "every machine of the run writes the same dvc.lock"
    locks = [yaml.safe_load((n / "dvc.lock").read_text())["stages"]["train"] for n in nodes]
    assert locks[0]["params"] == locks[1]["params"] and locks[0]["deps"] == locks[1]["deps"]
    assert json.loads((nodes[0] / paths.TRAIN_TIMINGS).read_text())["processes"] == 2
    a = torch.load(single / paths.MODEL, weights_only=True)["state_dict"]
    b = torch.load(nodes[0] / paths.MODEL, weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key


def test_the_running_epoch_shows_in_exp_show(tmp_path: Path) -> None:
    repo = _project(tmp_path, train={"epochs": 60, "batch_size": 8})
    dvc(repo, "repro", "preprocess")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data")
    run = subprocess.Popen(
        [sys.executable, "-m", "dvc", "exp", "run", "-n", "live"],
        cwd=repo,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: list[int] = []
    try:
        while run.poll() is None and not seen:
            shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
            still_running = run.poll() is None
            steps = [step for baseline in shown for step in _live_steps(baseline)]
            if still_running and steps and max(steps) < 60:
                seen = steps
            time.sleep(0.5)
    finally:
        run.wait(timeout=600)
    assert seen, "no epoch of the running experiment showed in `dvc exp show`"
    assert run.returncode == 0


def _live_steps(baseline: dict) -> list[int]:
    """The DVCLive step (epochs done) of every row of one `dvc exp show --json` baseline."""
    revs = [baseline, *(r for e in baseline.get("experiments") or [] for r in e["revs"])]
    found = []
    for rev in revs:
        metrics = (rev.get("data") or {}).get("metrics") or {}
        live = (metrics.get(str(paths.LIVE_TRAIN / "metrics.json")) or {}).get("data") or {}
        if "step" in live:
            found.append(live["step"])
    return found


def test_a_recipe_in_one_flag_with_overrides_on_top(repo: Path) -> None:
    out = dvc(
        repo, "exp", "run", "-S", "recipe=fast", "-S", "train.epochs=1", "-S", "train.batch_size=32"
    ).stdout
    assert _ran(out, "train")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["recipe"] == "fast" and params["model"]["name"] == "fast"
    assert params["train"]["lookahead"] is True and params["train"]["epochs"] == 1
    assert params["data"]["source"].endswith("cifar-10-python.tar.gz"), "conf/ settings stay"
    diff = dvc(repo, "params", "diff").stdout
    assert "recipe" in diff and "model.name" in diff and "train.lookahead" in diff
    # The next experiment starts from conf/ again: nothing of fast is left behind.
    dvc(repo, "exp", "run", "-S", "train.lr=0.02")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["recipe"] == "tutorial" and params["model"]["name"] == "tutorial_cnn"


def test_a_three_run_sweep_fits_a_120_column_exp_show(repo: Path) -> None:
    for lr in ("0.1", "0.02", "0.005"):
        dvc(repo, "exp", "run", "-S", f"train.lr={lr}")
    assert_exp_show_fits_120_columns(repo, "train.lr")
    table = dvc(repo, "exp", "show", "--only-changed", "--no-pager").stdout
    assert "per_class" not in table and "train_seconds" not in table
