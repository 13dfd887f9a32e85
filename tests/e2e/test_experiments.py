"""Experiments the DVC way, driven by the real commands on tiny data: the run cache, launch settings
outside the hash, live metrics, one-flag recipes, two machines, and an `exp show` whose columns are
metrics, not per-class scores or timings. Each test changes its own copy of the baseline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import Baseline, copy_project, dvc, env, git, run, set_params
from visionpipe import paths, warm

pytestmark = pytest.mark.slow


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


def test_stages_forked_from_the_warm_process_write_what_fresh_processes_write(
    baselined_repo: Path,
) -> None:
    repo = baselined_repo
    stages = ("train", "evaluate", "export", "predict")
    dvc(repo, "repro", "-f", *stages)
    # A warm process for the stages' environment is there (the torch stages started it).
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(warm.address(warm.server_key(env())))
    probe.close()
    forked = _outputs(repo)
    dvc(repo, "repro", "-f", *stages, env={**env(), "VISIONPIPE_WARM": "0"})
    assert _outputs(repo) == forked


def test_returning_to_params_that_ran_restores_them_from_the_run_cache(
    baselined_repo: Path,
) -> None:
    repo = baselined_repo
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
    # Per-class scores are files and timings no metric: neither makes columns that differ.
    columns = dvc(repo, "exp", "show", "--only-changed", "--csv").stdout.splitlines()[0]
    assert "train.lr" in columns
    assert "per_class" not in columns and "train_seconds" not in columns, columns

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


def test_launch_settings_never_retrain_but_still_launch(baselined_repo: Path) -> None:
    repo = baselined_repo
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


def test_two_machines_each_run_dvc_repro_and_write_the_same_lock(
    baseline: Baseline, tmp_path: Path
) -> None:
    # Two clones as two machines would have them, one launch.node_rank each, rendezvous on
    # 127.0.0.1. The clones hold the baseline's data, and train, evaluate, export and predict run
    # anew on its params. (That two nodes train as one process does, and resume after a kill, is
    # test_distributed's.)
    port = _free_port()
    nodes = []
    for rank in (0, 1):
        node = copy_project(baseline.repo, tmp_path / f"node{rank}")
        launch = {"nnodes": 2, "node_rank": rank, "master_port": port}
        set_params(node, {"train": {"momentum": 0.9}, "launch": launch})
        nodes.append(node)
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
        assert "Running stage 'train'" in out
    lock0, lock1 = (_outputs(n) for n in nodes)
    assert lock0 == lock1, "every machine of the run writes the same dvc.lock"
    locks = [yaml.safe_load((n / "dvc.lock").read_text())["stages"]["train"] for n in nodes]
    assert locks[0]["params"] == locks[1]["params"] and locks[0]["deps"] == locks[1]["deps"]
    assert json.loads((nodes[0] / paths.TRAIN_TIMINGS).read_text())["processes"] == 2


def test_the_running_epoch_shows_in_exp_show(baselined_repo: Path) -> None:
    repo = baselined_repo
    # The baseline's own run ended at step 2, this one ends at 60: a step between is live.
    done = json.loads((repo / paths.LIVE_TRAIN / "metrics.json").read_text())["step"]
    set_params(repo, {"train": {"epochs": 60, "batch_size": 8}})
    git(repo, "commit", "-qam", "60 epochs")
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
            if still_running and any(done < step < 60 for step in steps):
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


def test_an_interrupted_exp_run_resumes_as_an_experiment_when_run_again(
    baselined_repo: Path, tmp_path: Path
) -> None:
    # Ctrl-C in `dvc exp run -S ...`: the message names the command that resumes it (`dvc repro`
    # would, but as no experiment), and that command's experiment has every epoch once, in
    # DVCLive's curves and in TensorBoard's scalars, as TensorBoard reads them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    repo = baselined_repo
    epochs = 40  # of 23 steps (180 images, batch 8): Ctrl-C lands between the first and the last
    command = [sys.executable, "-m", "dvc", "exp", "run", "-S", f"train.epochs={epochs}"]
    command += ["-S", "train.batch_size=8", "-S", "train.log_every=50"]
    checkpoint = repo / "checkpoints" / "last.pt"
    # To a file, not a pipe: the stages' warm process outlives the run and would hold a pipe.
    with open(tmp_path / "stopped.log", "w+") as log:
        stopped = subprocess.Popen(
            command, cwd=repo, env=env(), start_new_session=True, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and stopped.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(stopped.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        stopped.wait(timeout=120)
        log.seek(0)
        said = log.read()
    assert "interrupted (Ctrl-C); the same `uv run dvc exp run` command again" in said, said
    assert not (repo / paths.MODEL).exists(), "stopped early enough to test a resume"

    resumed = run(command, repo)
    assert "resuming from" in resumed.stderr, resumed.stderr
    (name,) = re.findall(r"Ran experiment\(s\): (\S+)", resumed.stdout + resumed.stderr)
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    assert any(ref.endswith(f"/{name}") for ref in refs), (name, refs)
    every_epoch = list(range(1, epochs + 1))
    curve = (repo / paths.LIVE_TRAIN / "plots/metrics/val_loss.tsv").read_text().splitlines()
    assert [int(row.split("\t")[0]) for row in curve[1:]] == every_epoch
    events = EventAccumulator(str(repo / paths.TB_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == every_epoch
    steps = [e.step for e in events.Scalars("train_loss")]
    assert steps == list(range(50, epochs * 23 + 1, 50)), steps


def test_a_recipe_in_one_flag_with_overrides_on_top(baselined_repo: Path) -> None:
    repo = baselined_repo
    out = dvc(
        repo, "exp", "run", "-S", "recipe=fast", "-S", "train.epochs=1", "-S", "train.batch_size=32"
    ).stdout
    assert _ran(out, "train")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["recipe"] == "fast" and params["model"]["name"] == "fast"
    assert params["train"]["lookahead"] is True and params["train"]["epochs"] == 1
    assert params["data"]["source"].endswith("/cifar-10-python.tar.gz"), "conf/ settings stay"
    diff = dvc(repo, "params", "diff").stdout
    assert "recipe" in diff and "model.name" in diff and "train.lookahead" in diff
    # The next experiment starts from conf/ again: nothing of fast is left behind.
    dvc(repo, "exp", "run", "-S", "train.lr=0.02")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["recipe"] == "tutorial" and params["model"]["name"] == "tutorial_cnn"


def test_an_experiment_committed_as_the_baseline_warns_when_the_next_one_drops_its_values(
    baselined_repo: Path,
) -> None:
    # DVC's way to promote an experiment: run (or `dvc exp apply`) it, then commit. Its -S values
    # live only in the committed params.yaml, and the next `dvc exp run` composes conf/ anew.
    repo = baselined_repo
    dvc(repo, "exp", "run", "-S", "train.lr=0.02")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lr 0.02 is the new baseline")
    proc = dvc(repo, "exp", "run", "-S", "train.epochs=1")
    assert _ran(proc.stdout, "train")
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 0.01
    said = proc.stdout + proc.stderr
    assert "train.lr: 0.02 -> 0.01" in said, said
    assert "pass them with -S (or put them in conf/ and commit)" in said
    # Passing the value again keeps it: nothing is dropped, nothing to warn of.
    proc = dvc(repo, "exp", "run", "-S", "train.epochs=1", "-S", "train.lr=0.02")
    assert _ran(proc.stdout, "train")
    assert "train.lr: 0.02 ->" not in proc.stdout + proc.stderr
    # A dropped value of the data's (a recipe's other dataset): said by download, the first
    # stage, before a download can fail; once, though train runs too.
    sha = yaml.safe_load((repo / "params.yaml").read_text())["data"]["sha256"]  # conf/'s
    dvc(repo, "exp", "run", "-S", "data.sha256=null", "-S", "train.epochs=1")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the archive unchecked")
    shutil.rmtree(repo / ".dvc" / "cache" / "runs")  # a fresh clone's: download runs again
    proc = dvc(repo, "exp", "run", "-S", "train.epochs=2")
    assert _ran(proc.stdout, "download") and _ran(proc.stdout, "train")
    said = proc.stdout + proc.stderr
    assert said.count(f"data.sha256: null -> {sha}") == 1, said
    warned, fetched = (proc.stderr.find(t) for t in ("data.sha256: null", "bytes from http"))
    assert -1 < warned < fetched, proc.stderr  # before the download, as download warns


def _queue_logs_until(repo: Path, name: str, text: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in (logs := dvc(repo, "queue", "logs", name, check=False).stdout):
        assert time.monotonic() < deadline, f"no {text!r} in {name}'s log:\n{logs[-3000:]}"
        time.sleep(1)
    return logs


def test_a_killed_queued_run_does_not_promise_a_resume(baselined_repo: Path) -> None:
    # A queued run trains in DVC's temporary copy, which DVC deletes, checkpoint and all.
    repo = baselined_repo
    dvc(repo, "exp", "run", "--queue", "-n", "long", "-S", "train.epochs=1000")
    # To files, not pipes: the worker `dvc queue start` leaves behind holds them until it exits.
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "start"],
        cwd=repo,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    _queue_logs_until(repo, "long", "epoch 2/1000")
    dvc(repo, "queue", "kill", "long")
    logs = _queue_logs_until(repo, "long", "interrupted")
    assert "the next `uv run dvc repro` resumes" not in logs, logs[-3000:]
    assert "temporary copy" in logs and "starts over" in logs, logs[-3000:]


def test_a_stopped_temp_run_does_not_promise_a_resume(baselined_repo: Path, tmp_path: Path) -> None:
    # `dvc exp run --temp` trains in DVC's temporary copy (.dvc/tmp/exps/standalone/...), which
    # DVC deletes, checkpoint and all: the same command again starts over.
    repo = baselined_repo
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "train.epochs=1000"]
    # To a file, not a pipe: the stages' warm process outlives the run and would hold a pipe.
    with open(tmp_path / "stopped.log", "w+") as log:
        stopped = subprocess.Popen(
            command, cwd=repo, env=env(), start_new_session=True, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 300
        while "epoch 2/1000" not in (tmp_path / "stopped.log").read_text():
            assert stopped.poll() is None and time.monotonic() < deadline, "no epoch 2"
            time.sleep(0.1)
        os.killpg(stopped.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        stopped.wait(timeout=120)
        log.seek(0)
        said = log.read()
    assert "interrupted (Ctrl-C)" in said, said[-3000:]
    assert "resumes this experiment" not in said, said[-3000:]
    assert "temporary copy" in said and "starts over" in said, said[-3000:]


def _data_lock(repo: Path) -> dict:
    """dvc.lock's download and preprocess entries: what a teammate must not re-run."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: stages[name] for name in ("download", "preprocess")}


def _machine_data(repo: Path, folder: Path, archive: Path) -> None:
    """This clone's own copy of `archive` in `folder`, named in its conf/local/machine.yaml."""
    folder.mkdir(parents=True)
    shutil.copy2(archive, folder / archive.name)
    local = repo / "conf" / "local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "machine.yaml").write_text(yaml.safe_dump({"launch": {"data_root": str(folder)}}))


def test_a_teammate_with_the_data_elsewhere_reruns_only_what_the_experiment_changes(
    baseline: Baseline, tmp_path: Path
) -> None:
    archive = baseline.server.directory / "cifar-10-python.tar.gz"
    # Clone A names the archive, keeps it in its own folder, runs and pushes, as a team does.
    a = copy_project(baseline.repo, tmp_path / "a")
    _machine_data(a, tmp_path / "a-data", archive)
    set_params(a, {"data": {"source": archive.name}})
    dvc(a, "remote", "add", "-d", "team", str(tmp_path / "team-remote"))
    out = dvc(a, "repro").stdout
    assert _ran(out, "download") and not _ran(out, "train"), "same data: train stays cached"
    git(a, "add", "-A")
    git(a, "commit", "-qm", "data by name")
    dvc(a, "push")

    # Clone B: the data is somewhere else on this machine.
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    dvc(b, "pull")
    _machine_data(b, tmp_path / "b-data" / "elsewhere", archive)
    out = dvc(b, "exp", "run", "-S", "train.lr=0.02").stdout
    assert not _ran(out, "download") and not _ran(out, "preprocess"), out
    assert _ran(out, "train"), out
    params = yaml.safe_load((b / "params.yaml").read_text())
    assert params["launch"]["data_root"] == str(tmp_path / "b-data" / "elsewhere")
    assert _data_lock(b) == _data_lock(a)

    # And `dvc repro` there, with the experiment's results in the workspace, has nothing to do.
    out = dvc(b, "repro").stdout
    assert "Running stage" not in out, out
