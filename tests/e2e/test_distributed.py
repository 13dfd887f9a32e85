"""DDP on this machine: gloo, 2 CPU processes through torchrun, launched by the train stage,
or started here where a rank is made to see something the other does not."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.datasets import write_processed
from tests.helpers import ROOT, env
from visionpipe import distributed, paths, train
from visionpipe.config.params import load_params, parse_params

pytestmark = pytest.mark.slow

TRAIN = {
    "epochs": 30,
    "batch_size": 16,
    "lr": 0.05,
    "momentum": 0.9,
    "log_every": 20,
    "augment": {"crop_padding": 2, "flip": True},
}


LAUNCH_KEYS = ("nproc", "nnodes", "node_rank", "master_addr", "master_port")


def _workdir(root: Path, n_train: int = 96, **train: object) -> Path:
    write_processed(root, n_train=n_train, n_val=16, n_test=16, size=16)
    launch = {k: train.pop(k) for k in LAUNCH_KEYS if k in train}
    params = {
        "data": {"dataset": "imagefolder", "source": "unused"},
        "train": {**TRAIN, **train},
        "launch": launch,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _stage(cwd: Path, threads: int = 1, **kw: object) -> subprocess.Popen:
    e = env(threads)
    e["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages/train.py")],
        cwd=cwd,
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _train(cwd: Path, threads: int = 1) -> str:
    proc = _stage(cwd, threads)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants (torchrun starts ranks in their own sessions)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    for p in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _weights(cwd: Path) -> dict[str, torch.Tensor]:
    return torch.load(cwd / paths.MODEL, weights_only=True)["state_dict"]


def test_launch_uses_torchrun() -> None:
    cfg = parse_params({"launch": {"nproc": 2}}).launch
    args = distributed.launch_args(cfg, "stages/train.py")
    assert args[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in args
    multi = parse_params(
        {"launch": {"nproc": 8, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}}
    ).launch
    args = distributed.launch_args(multi, "stages/train.py")
    assert "--nnodes=2" in args and "--node-rank=1" in args and "--master-addr=10.0.0.1" in args


def test_a_launch_leaves_no_log_folder_in_tmp(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    # One write per rank (a pipe keeps a write of under 4 KiB whole): two ranks' prints, each
    # written in pieces when unbuffered, can interleave mid-line.
    script.write_text("import os\nos.write(1, f\"rank {os.environ['RANK']}\\n\".encode())\n")
    e = env()
    e["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    cfg = parse_params({"launch": {"nproc": 2}}).launch
    done = subprocess.run(
        distributed.launch_args(cfg, str(script)), cwd=tmp_path, env=e, capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    assert sorted(done.stdout.split("\n")[:2]) == ["rank 0", "rank 1"], done.stdout
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_node_other_than_0_says_it_waits_for_node_0(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch.distributed.run

    monkeypatch.setattr(torch.distributed.run, "run", lambda args: None)  # node 0 answered
    node = {"nproc": 1, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as done:
        distributed.launch(parse_params({"launch": node}).launch, "stages/train.py")
    assert done.value.code == 0
    assert "node 1 waits for node 0 at 10.0.0.1:29500 until every node" in caplog.text


def test_master_port_in_use_is_refused_before_torchrun(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        work = _workdir(tmp_path, epochs=1, nproc=1, nnodes=2, master_port=port)
        out, _ = _stage(work).communicate(timeout=120)
    assert f"launch.master_port {port} is already in use" in out, out[-3000:]
    assert "Traceback" not in out and "torch.distributed.run" not in out, out[-3000:]


def test_a_rank_dies_with_a_killed_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, time, torch\n"
        "from visionpipe import distributed\n"
        "distributed.init(torch.device('cpu'))\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    cfg = parse_params({"launch": {"nproc": 1}}).launch
    e = env()
    e["PYTHONPATH"] = str(ROOT / "src")
    agent = subprocess.Popen(
        distributed.launch_args(cfg, str(script)), cwd=tmp_path, env=e, stdout=subprocess.PIPE
    )
    try:
        assert agent.stdout is not None
        rank = int(agent.stdout.readline())
        agent.kill()  # as the OOM killer would: torchrun runs none of its cleanup
        agent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(rank), "the rank trains on after torchrun was killed"
    finally:
        agent.kill()
        with contextlib.suppress(NameError, ProcessLookupError):
            os.kill(rank, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, which only waits for its parent to reap it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_process_ddp_matches_one_process_and_resumes_to_it_after_a_kill(
    tmp_path: Path,
) -> None:
    # fp32: DDP sums the ranks' gradients in another order than one process does, which fp32
    # keeps within 1e-5 over these 72 steps (12 epochs of 6); bf16 autocast (train.amp on a CPU
    # with native bf16) rounds each difference up to ~1e-3, so exact equivalence is checked
    # without it.
    epochs = 12
    single = _workdir(tmp_path / "single", amp=False, epochs=epochs)
    ddp = _workdir(tmp_path / "ddp", nproc=2, amp=False, epochs=epochs)
    _train(single)
    _train(ddp)
    timings = json.loads((ddp / paths.TRAIN_TIMINGS).read_text())
    assert timings["processes"] == 2
    assert json.loads((ddp / paths.TRAIN_METRICS).read_text())["epochs_run"] == epochs
    a, b = _weights(single), _weights(ddp)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), (
            f"{key}: max diff {(a[key] - b[key]).abs().max():.2e}"
        )
    # Only rank 0 wrote: one event file, plots with one row per epoch.
    assert len(list((ddp / paths.TB_DIR).glob("events.*"))) == 1
    assert len((ddp / paths.PLOT_EPOCHS).read_text().splitlines()) == 1 + epochs

    # The same run killed after its first checkpoint (of 12) resumes to the same weights.
    work = _workdir(tmp_path / "work", nproc=2, amp=False, epochs=epochs)
    checkpoint = work / paths.CHECKPOINT_DIR / "last.pt"
    proc = _stage(work)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_tree(proc.pid)  # power loss: torchrun and every rank die at once, no cleanup
    proc.communicate()
    assert checkpoint.exists() and not (work / paths.MODEL).exists()
    out = _train(work)
    assert json.loads((work / paths.TRAIN_TIMINGS).read_text())["resumed_from_epoch"] >= 1
    assert out.count("resuming from") == 1, out[-4000:]  # one machine: said once, not per rank
    b, c = _weights(ddp), _weights(work)
    assert all(torch.allclose(b[k], c[k], atol=1e-5, rtol=0) for k in b)


def test_two_processes_say_once_what_one_process_says(tmp_path: Path) -> None:
    # What each rank would print: the CPU's SyncBatchNorm warning and why training stopped (it
    # diverges in epoch 1); and torchrun's thread banner, where OMP_NUM_THREADS is unset.
    work = _workdir(tmp_path, epochs=5, lr=100.0, nproc=2)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["model"] = {"batch_norm": True}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    e = {**env(1), "PYTHONPATH": str(ROOT / "src")}
    e.pop("OMP_NUM_THREADS")
    cmd = [sys.executable, str(ROOT / "stages/train.py")]
    done = subprocess.run(cmd, cwd=work, env=e, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert out.count("SyncBatchNorm is CUDA-only") == 1, out[-4000:]
    assert out.count("training diverged") == 1, out[-4000:]
    assert "Setting OMP_NUM_THREADS" not in out, out[-4000:]


def test_ctrl_c_on_two_processes_is_one_line_and_exit_130(tmp_path: Path) -> None:
    work = _workdir(tmp_path, n_train=640, epochs=8, nproc=2)
    checkpoint = work / paths.CHECKPOINT_DIR / "last.pt"
    proc = _stage(work, start_new_session=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches torchrun's group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-4000:]
    assert out.count("interrupted (Ctrl-C)") == 1 and "Traceback" not in out, out[-4000:]


def test_a_failing_rank_is_its_error_not_torchruns_traceback(tmp_path: Path) -> None:
    work = _workdir(tmp_path, epochs=1, nproc=2)
    (work / paths.PROCESSED_DIR / "train.json").unlink()
    proc = _stage(work)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-4000:]
    assert "train.json not found" in out and "Traceback" not in out, out[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_run_resumes_after_a_kill(tmp_path: Path) -> None:
    # Two "machines" on this one: two working folders, 2 nodes x 1 process over 127.0.0.1. Only
    # global rank 0 (node 0) writes a checkpoint; node 1 has none of its own to resume from.
    run = {"n_train": 640, "epochs": 4, "amp": False}
    reference = _workdir(tmp_path / "reference", **run)
    # A rank alone on its machine takes every core (visionpipe.distributed), and fp32 convolutions
    # round differently on another thread count: so does the run it is held to.
    _train(reference, threads=os.cpu_count() or 1)
    port = _free_port()
    nodes = [
        _workdir(tmp_path / f"node{rank}", **run, nnodes=2, node_rank=rank, master_port=port)
        for rank in (0, 1)
    ]
    checkpoint = nodes[0] / paths.CHECKPOINT_DIR / "last.pt"
    procs = [_stage(node) for node in nodes]
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:  # power loss on both machines
        _kill_tree(proc.pid)
        proc.communicate()
    assert checkpoint.exists() and not (nodes[1] / paths.CHECKPOINT_DIR).exists()
    procs = [_stage(node) for node in nodes]
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # a rank that resumed alone waits for the other
            for p in procs:
                _kill_tree(p.pid)
            pytest.fail("the resumed two-node run hung")
        assert proc.returncode == 0, out[-4000:]
    timings = json.loads((nodes[0] / paths.TRAIN_TIMINGS).read_text())
    assert timings["resumed_from_epoch"] >= 1 and timings["processes"] == 2
    a, b = _weights(reference), _weights(nodes[0])
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), (
            f"{key}: max diff {(a[key] - b[key]).abs().max():.2e}"
        )


def test_two_nodes_with_different_params_both_refuse_in_one_line(tmp_path: Path) -> None:
    # A machine composed from another commit or conf/: each would train its part with its own
    # lr and record it in its dvc.lock; another epoch count would hang the other machine.
    port = _free_port()
    nodes = [
        _workdir(
            tmp_path / f"node{rank}", epochs=1, lr=lr, nnodes=2, node_rank=rank, master_port=port
        )
        for rank, lr in ((0, 0.05), (1, 0.02))
    ]
    procs = [_stage(node) for node in nodes]
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for p in procs:
                _kill_tree(p.pid)
            pytest.fail("a node with other params hung")
        assert proc.returncode == 1, out[-4000:]
        assert (
            "the processes of this run hold different params (rank 0's -> rank 1's)"
            " train.lr: 0.05 -> 0.02; compose params.yaml on every machine"
        ) in out, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
    assert not any((node / paths.MODEL).exists() for node in nodes)


def _rank_with_its_own_val_loss(rank: int, port: int, workdir: Path, stalled_rank: int) -> None:
    """Rank `rank` of a 2-process train.run in which `stalled_rank`'s val loss never improves
    while the other rank's improves every epoch: they would decide differently to stop."""
    os.chdir(workdir)
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2}
    os.environ.update({k: str(v) for k, v in ranks.items()})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    real_eval, epochs = train.evaluate_split, itertools.count(1)

    def evaluate(*args: object, **kwargs: object) -> train.Scores:
        loss = 1.0 if rank == stalled_rank else 1.0 / next(epochs)
        return dataclasses.replace(real_eval(*args, **kwargs), loss=loss)

    with pytest.MonkeyPatch.context() as mp:  # in this process of its own
        mp.setattr(train, "evaluate_split", evaluate)
        metrics = train.run(load_params())
    (workdir / f"metrics_rank{rank}.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize(("stalled_rank", "epochs_run"), [(0, 2), (1, 3)])
def test_ranks_stop_early_together_as_rank_0_decides(
    tmp_path: Path, stalled_rank: int, epochs_run: int
) -> None:
    # patience 1: a stalled rank would stop after epoch 2, the other run all 3 epochs.
    work = _workdir(tmp_path, epochs=3, patience=1, amp=False)
    port, spawn = _free_port(), multiprocessing.get_context("spawn")
    ranks = [
        spawn.Process(target=_rank_with_its_own_val_loss, args=(r, port, work, stalled_rank))
        for r in (0, 1)
    ]
    for p in ranks:
        p.start()
    deadline = time.monotonic() + 180
    for p in ranks:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(ranks) if p.is_alive()]
    for p in ranks:
        p.kill()
        p.join()
    assert not hung, f"ranks {hung} hung: the others stopped without them"
    assert [p.exitcode for p in ranks] == [0, 0], "a rank failed (its peer had left)"
    for rank in (0, 1):
        metrics = json.loads((work / f"metrics_rank{rank}.json").read_text())
        assert metrics["epochs_run"] == epochs_run, (rank, metrics)
        assert metrics["stopped_early"] is (epochs_run < 3)
