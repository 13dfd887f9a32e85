"""Resumable training: a checkpoint after every epoch, and picking a run up where it stopped.

A checkpoint is a dict of state_dicts and plain values, written atomically by global rank 0 and
read back with weights_only=True. It is resumed only by a run of the same params and data (its
fingerprint) that has not finished, so `dvc repro -f` really retrains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from visionpipe import distributed, paths, runtime
from visionpipe.config import Params
from visionpipe.fsutil import save_torch
from visionpipe.tracking import EpochRecord, History

if TYPE_CHECKING:
    from visionpipe.train import Loop

log = logging.getLogger(__name__)

CHECKPOINT = paths.CHECKPOINT_DIR / "last.pt"


@dataclass
class Progress:
    """Where a run stands after its last complete epoch: what a resume restores."""

    epoch: int = 0  # epochs done
    history: History = field(default_factory=History)
    best_val: float = math.inf  # lowest val loss so far, for early stopping
    bad_epochs: int = 0  # epochs since it last improved

    def update(self, record: EpochRecord, patience: int) -> bool:
        """Count a finished epoch; True when training should stop (diverged or no progress)."""
        self.epoch = record.epoch
        if record.val_loss < self.best_val:
            self.best_val, self.bad_epochs = record.val_loss, 0
        else:
            self.bad_epochs += 1
        diverged = not math.isfinite(record.train_loss)
        return diverged or (patience > 0 and self.bad_epochs >= patience)


def fingerprint(params: Params) -> str:
    """What a checkpoint must match to be resumed: params that shape training, and the data."""
    relevant = {k: params.as_dict()[k] for k in ("data", "preprocess", "model", "train")}
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    for split in ("train", "val"):
        with open(paths.split_file(split), "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def save(fp: str, loop: Loop, done: bool) -> None:
    progress = loop.progress
    state = {
        "fingerprint": fp,
        "epoch": progress.epoch,
        "done": done,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "scaler": loop.scaler.state_dict(),
        "lookahead": loop.lookahead.slow if loop.lookahead is not None else None,
        "rng": runtime.rng_state(loop.batches.gen, loop.device),
        "history": {"epochs": progress.history.epochs, "steps": progress.history.steps},
        "best_val": progress.best_val,
        "bad_epochs": progress.bad_epochs,
    }
    save_torch(CHECKPOINT, state)


def resume_point(fp: str, ddp: distributed.Dist) -> dict[str, Any] | None:
    """The checkpoint state to resume from, or None to start fresh; the same on every rank.

    Only global rank 0 writes checkpoints, so only it reads one, and broadcasts what it read:
    on several machines the other nodes have no checkpoint of their own.
    """
    state = _read(fp) if ddp.is_main else None
    return distributed.broadcast_object(state, ddp)


def _read(fp: str) -> dict[str, Any] | None:
    if not CHECKPOINT.is_file():
        return None
    try:
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file from an older version: start fresh, but say so
        log.warning("ignoring unreadable checkpoint %s: %s", CHECKPOINT, exc)
        return None
    if state.get("fingerprint") != fp:
        log.info("checkpoint %s is from other params or data: starting fresh", CHECKPOINT)
        return None
    if state.get("done"):
        return None
    return state


def restore(loop: Loop, state: dict[str, Any]) -> None:
    """Load a checkpoint into the loop's objects; a state that does not fit leaves them fresh."""
    own = loop.model.state_dict()
    theirs = state.get("model", {})
    if own.keys() != theirs.keys() or any(own[k].shape != theirs[k].shape for k in own):
        # Checked first: a half-loaded model would not be a fresh start.
        log.warning("checkpoint %s holds another model layout: starting fresh", CHECKPOINT)
        return
    try:
        # The optimizer checks its layout before it changes anything.
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        loop.model.load_state_dict(theirs)
        if loop.lookahead is not None:
            for name, slow in loop.lookahead.slow.items():
                slow.copy_(state["lookahead"][name])
        if loop.scaler.is_enabled() and state.get("scaler"):
            loop.scaler.load_state_dict(state["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Written by another visionpipe version with another optimizer layout: the weights
        # might load but the run would not continue as it began, so begin again.
        log.warning("checkpoint %s does not fit this version (%s): starting fresh", CHECKPOINT, exc)
        return
    runtime.set_rng_state(state["rng"], loop.batches.gen, loop.device)
    loop.global_step = state["epoch"] * loop.batches.steps_per_epoch
    history = History(state["history"]["epochs"], state["history"]["steps"])
    loop.progress = Progress(state["epoch"], history, state["best_val"], state["bad_epochs"])
