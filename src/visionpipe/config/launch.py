"""The launch section: where and how this machine runs the stages, never what they compute."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from visionpipe import paths
from visionpipe.config import Section


class LaunchConfig(Section):
    """Where and how the stages run, never what they compute: no stage declares these, so changing
    them never re-runs anything, and every machine (a teammate's clone, each node of a multi-node
    run) records the same params in dvc.lock."""

    # The folder this machine keeps datasets in: a relative data.source, and the official
    # archives under their own names (as DATA_MIRROR), are looked up there. null: relative
    # data.source is taken from the project root. The data's identity is data.source's name and
    # the content DVC hashes in data/raw, not this path, so clones with their data in different
    # places share one dvc.lock.
    data_root: Path | None = None

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Processes per node and nodes for DistributedDataParallel through torchrun; batch_size stays
    # the global batch, so results keep their meaning whatever the process count.
    nproc: int = Field(default=1, ge=1, le=1024)
    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)  # this machine's rank; 0 on master_addr
    master_addr: str = "127.0.0.1"  # rendezvous host (node 0) when nnodes > 1
    master_port: int = Field(default=29500, ge=1, le=65535)

    @field_validator("data_root", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        # `~/datasets` and `$HOME/datasets` mean what they mean in the shell.
        if not isinstance(value, str):
            return value
        if not value.strip():  # `${oc.env:DATA_HOME,}` with the variable unset: no folder
            return None
        root = paths.user_path(value, "launch.data_root")
        if not root.is_absolute():
            # Queued and --temp experiments run in .dvc/tmp/exps/<name>: it would name another
            # folder there, and the data "does not exist" where the user put it.
            unset = " (its $variable is unset here)" if "$" in value else ""
            raise ValueError(
                f"launch.data_root {value!r} is a relative path{unset}: give an absolute one"
                " (~/datasets and $HOME/datasets work), as queued experiments run in a"
                " temporary copy of the project, where a relative path names another folder"
            )
        return root

    @model_validator(mode="after")
    def _rank_fits(self) -> LaunchConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"launch.node_rank {self.node_rank} must be below launch.nnodes "
                f"({self.nnodes}): give each machine its own rank, 0 to {self.nnodes - 1}, in "
                "its conf/local/machine.yaml"
            )
        return self
