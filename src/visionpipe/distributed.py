"""Multi-process training through PyTorch's own launcher (torchrun) and DistributedDataParallel.

The train stage stays one command: with `train.nproc * train.nnodes > 1` the stage script replaces
itself with `python -m torch.distributed.run ... stages/train.py` (torchrun), which starts one
process per rank and sets RANK/WORLD_SIZE/LOCAL_RANK; `init` then joins the process group.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from visionpipe.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_launcher() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def wants_launch(cfg: TrainConfig) -> bool:
    """True when params ask for several processes and this process is not one of them yet."""
    return cfg.nproc * cfg.nnodes > 1 and not under_launcher()


def launch_args(cfg: TrainConfig, script: str) -> list[str]:
    """The torchrun command line for `script` (run by `os.execv`, so torchrun owns the ranks)."""
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={cfg.nproc}",
        f"--nnodes={cfg.nnodes}",
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


def launch(cfg: TrainConfig, script: str) -> None:
    args = launch_args(cfg, script)
    log.info("starting %d processes: %s", cfg.nproc * cfg.nnodes, " ".join(args[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


def init(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (NCCL on GPUs, gloo on CPU); no-op otherwise."""
    if not under_launcher() or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
        # Share the cores between the local ranks instead of oversubscribing them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(backend=backend)
    return Dist(rank, world, local_rank), device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
