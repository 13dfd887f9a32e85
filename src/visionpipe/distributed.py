"""Multi-process training through PyTorch's own launcher (torchrun) and DistributedDataParallel.

The train stage stays one command: with `launch.nproc * launch.nnodes > 1` the stage process
becomes torchrun's agent for `stages/train.py` (`torch.distributed.run`), which starts one process
per rank and sets RANK/WORLD_SIZE/LOCAL_RANK; `init` then joins the process group.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from visionpipe import limits
from visionpipe.config import ConfigError
from visionpipe.config.launch import LaunchConfig
from visionpipe.devices import DeviceError
from visionpipe.warm import die_with_parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Global rank 0: writes the checkpoint, the one resume point of the whole run."""
        return self.rank == 0

    @property
    def writes_outputs(self) -> bool:
        """Local rank 0 of each machine: writes the stage's outputs there, so DVC on every node
        finds them (all ranks hold the same weights and figures)."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def wants_launch(cfg: LaunchConfig) -> bool:
    """True when params ask for several processes and this process is not one of them yet."""
    return cfg.nproc * cfg.nnodes > 1 and not under_launcher()


def launch_args(cfg: LaunchConfig, script: str) -> list[str]:
    """The torchrun command line for `script` (`launch` runs it in this process)."""
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={cfg.nproc}",
        f"--nnodes={cfg.nnodes}",
        # Its per-rank log folder (for --redirects, which this launch does not use) would be an
        # empty /tmp/torchelastic_* left by every run; the ranks' output goes to the stage's.
        f"--log-dir={os.devnull}",
    ]
    if cfg.nnodes > 1:
        args += [
            f"--node-rank={cfg.node_rank}",
            f"--master-addr={cfg.master_addr}",
            f"--master-port={cfg.master_port}",
        ]
    else:
        args += ["--standalone"]  # a free local port; nothing to configure on one machine
    return [*args, script]


def check_processes(nproc: int, processes: int, device: torch.device) -> None:
    """Refuse a process count (`nproc` on this machine, `processes` in all) that `device` cannot
    serve: before torchrun starts them, and again in each rank."""
    if device.type == "mps" and processes > 1:
        raise DeviceError(
            f"launch.nproc * launch.nnodes = {processes} processes, but MPS (Apple GPUs) has no "
            "distributed backend: set launch.nproc: 1 and launch.nnodes: 1 to train on the GPU, "
            "or launch.device: cpu for several CPU processes"
        )
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise DeviceError(
            f"launch.nproc = {nproc} processes on this machine, one per GPU, but only "
            f"{torch.cuda.device_count()} CUDA GPUs are visible: set launch.nproc to at most "
            f"{torch.cuda.device_count()}, or launch.device: cpu"
        )


class LaunchError(RuntimeError):
    """launch.* asks torchrun for what this machine cannot give it."""


def check_master_port(cfg: LaunchConfig) -> None:
    """On several machines node 0's torchrun listens on launch.master_port: a port already taken
    would otherwise end in a long torchrun traceback naming neither the param nor the fix."""
    if cfg.nnodes == 1 or cfg.node_rank != 0:
        return  # one machine: --standalone picks a free port; other nodes connect, not listen
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torchrun's store binds
        try:
            probe.bind(("", cfg.master_port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise LaunchError(
                f"launch.master_port {cfg.master_port} is already in use on this machine "
                "(node_rank 0, which listens on it): set launch.master_port to a free port in "
                "conf/local/machine.yaml on every machine, or end what holds it "
                f"(`ss -ltnp 'sport = :{cfg.master_port}'` names it)"
            ) from None


def launch(cfg: LaunchConfig, script: str) -> NoReturn:
    """Run `script` once per rank under torchrun, in this process (its pid, which the ranks die
    with, stays the stage's), and exit with the run's status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    check_master_port(cfg)
    args = launch_args(cfg, script)
    log.info("starting %d processes: %s", cfg.nproc * cfg.nnodes, " ".join(args[1:]))
    if cfg.node_rank > 0:  # torchrun waits for node 0 without a word, for minutes
        log.info(
            "node %d waits for node 0 at %s:%d until every node of the run has started (with"
            " the same commit and params); Ctrl-C stops the wait",
            cfg.node_rank,
            cfg.master_addr,
            cfg.master_port,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    # What torchrun sets anyway, with a five-line banner; each rank then sizes its own threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Each rank says in one line why it failed or stopped; torchrun's own traceback and table
    # of exit codes (40 lines) would bury that line, so its outcome becomes an exit status.
    try:
        run(parse_args(args[3:]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        log.debug("rank %d failed first (exit code %d)", rank, failure.exitcode)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)
    except SignalException as exc:  # Ctrl-C or SIGTERM: the ranks have said what comes next
        sys.exit(128 + exc.sigval)
    sys.exit(0)


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (NCCL on GPUs, gloo on CPU); no-op otherwise."""
    if under_launcher() and sys.platform.startswith("linux"):
        # Killed outright (SIGKILL, the OOM killer, the warm process's end), torchrun cannot stop
        # its ranks, each in a session of its own: they would train on and write the workspace
        # after DVC has reported the stage failed.
        die_with_parent(os.getppid())
    if not under_launcher() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_processes(local_world, world, device)
    if local_rank != 0:
        # Every rank has the same params, data and weights, so its notes and warnings repeat
        # local rank 0's: one copy per machine. Errors still come from every rank.
        logging.getLogger("visionpipe").setLevel(logging.ERROR)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
        # Share the cores between the local ranks instead of oversubscribing them.
        torch.set_num_threads(max(1, limits.cpu_count() // local_world))
    dist.init_process_group(backend=backend)
    return Dist(rank, world, local_rank), device


def check_same_params(params: dict[str, Any], d: Dist) -> None:
    """Refuse, on every rank, a run whose processes hold different `params` (what the model
    means, `TrainingParams.run_dict`: not where each machine runs or keeps its copy of the
    data): each would train its part with its own values and record them in its dvc.lock, or
    wait forever at an epoch count its peers never reach."""
    from visionpipe.config.compose import changes_text, diff_keys

    if not d.enabled:
        return
    every: list[Any] = [None] * d.world_size
    dist.all_gather_object(every, params)
    for rank, theirs in enumerate(every[1:], 1):
        keys = diff_keys(every[0], theirs)
        if keys:
            raise ConfigError(
                f"the processes of this run hold different params (rank 0's -> rank {rank}'s)"
                f" {changes_text(every[0], theirs, keys, most=5)}; compose params.yaml on every"
                " machine from the same commit and conf/ (`uv run visionpipe params`), then"
                " start them again"
            )


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's `obj` on every rank (pickled between this run's own processes)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the whole global batch under DDP, so a run means the same whatever the
    process count. SyncBatchNorm runs on CUDA only: on CPU each process normalises its shard."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_bn:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    log.warning(
        "BatchNorm normalises over each process's shard of the batch on %s (SyncBatchNorm is "
        "CUDA-only), so this run differs slightly from a one-process run",
        device.type,
    )
    return model


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
