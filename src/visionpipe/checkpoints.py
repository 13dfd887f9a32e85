"""Resumable training: a checkpoint after every epoch, and picking a run up where it stopped.

A checkpoint is a dict of state_dicts and plain values, written atomically by global rank 0 and
read back with weights_only=True. It is resumed only by a run of the same params, data, code and
starting weights (its `fingerprint`). A finished run's checkpoint stays (`keep_finished`) until
DVC has recorded the run's outputs in dvc.lock: stopped while DVC hashes and caches them (seconds
for a large model), or while train writes them, the run is resumed with no epoch left, and only
writes them again. Once dvc.lock holds its model, the next train run removes it (`discard`), so
`dvc repro -f` really retrains.

What a run finds in checkpoints/ (`_read`): another experiment's checkpoint (other params or
data, the same code) is set aside as `<run>-<code>.pt` (a finished run's with its mark,
`<run>-<code>.json`) for that experiment to take back, unless
it is a finished run's that DVC recorded (that run is DVC's to restore, and its `dvc repro -f`
must train anew); one of other training code (`code_files`), which no run of this code
resumes, is removed, as are set-aside ones of other code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionpipe import distributed, paths
from visionpipe.config.training import TrainingParams
from visionpipe.determinism import rng_state, set_rng_state
from visionpipe.fsutil import (
    dvc_cache_of,
    remove_stale_temps,
    save_torch,
    size_text,
    write_json,
)
from visionpipe.progress import Progress
from visionpipe.tracking import History

log = logging.getLogger(__name__)

CHECKPOINT = paths.CHECKPOINT_DIR / "last.pt"
# Beside the checkpoint of a run that wrote its outputs: its fingerprint and its model's md5, as
# dvc.lock records it once DVC has taken the outputs.
FINISHED = paths.CHECKPOINT_DIR / "finished.json"


@dataclass
class Checkpoint:
    """A run's state after a complete epoch, as read back for a resume."""

    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    lookahead: dict[str, torch.Tensor] | None  # the slow weights, when train.lookahead
    rng: dict[str, Any]  # runtime RNG states (determinism.rng_state)


@dataclass
class Trainee:
    """The objects a checkpoint holds the state of."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    lookahead: dict[str, torch.Tensor] | None  # the slow weights, when train.lookahead
    gen: torch.Generator  # shuffling and augmentation
    device: torch.device


def code_files() -> list[Path]:
    """The code that trains: train's code deps in dvc.yaml (stages/train.py and the modules it
    imports), the files DVC re-runs train for. An edited loop, augmentation or optimizer is a new
    run, as it is to DVC; resuming would mix two codes' epochs in one model. An edit to code that
    train never loads (serve, predict) leaves a stopped run resumable. Outside a project (no
    dvc.yaml listing train's code), every module of the package: editors' lock files and
    hidden folders (`.#optim.py`, `.ipynb_checkpoints/`) are no code."""
    listed = paths.code_deps("train")
    if listed:
        return listed
    package = Path(__file__).parent
    return sorted(
        f
        for f in package.rglob("*.py")
        if not any(part.startswith(".") for part in f.relative_to(package).parts) and f.is_file()
    )


def fingerprint(params: TrainingParams) -> str:
    """What a checkpoint must match to be resumed, as `<run>-<code>`: a digest of the params that
    shape training and the data, and one of the code. Apart, they tell another experiment's
    checkpoint (set aside for it) from one no run of this code can resume (an upgrade, an edit)."""
    h = hashlib.sha256(json.dumps(params.training_dict(), sort_keys=True).encode())
    files = [paths.split_file(split) for split in ("train", "val")]
    # The starting weights by their bytes, not only their path: a run interrupted before the
    # file was replaced would otherwise resume from the old start.
    if params.model.weights:
        files.append(paths.user_path(params.model.weights, "model.weights"))
    for file in files:
        with open(file, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    code = hashlib.sha256()
    for file in code_files():  # by bytes alone: the same code in another clone resumes too
        code.update(hashlib.sha256(file.read_bytes()).digest())
    return f"{h.hexdigest()}-{code.hexdigest()}"


def _code_of(fp: str) -> str:
    """The code digest of a fingerprint; "" for one from before they had it."""
    return fp.partition("-")[2]


# In a training process: whether the checkpoint on disk is this run's to resume (None elsewhere,
# in the stage that only launches the ranks).
_resumable: bool | None = None


def save(fp: str, progress: Progress, t: Trainee) -> None:
    global _resumable
    _resumable = True
    FINISHED.unlink(missing_ok=True)  # the checkpoint is a running run's again
    state = {
        "fingerprint": fp,
        "epoch": progress.epoch,
        "stopped": progress.stopped,
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "lookahead": t.lookahead,
        "rng": rng_state(t.gen, t.device),
        "history": {"epochs": progress.history.epochs, "steps": progress.history.steps},
        "best_val": progress.best_val,
        "bad_epochs": progress.bad_epochs,
    }
    save_torch(CHECKPOINT, state)


def resume_point(fp: str, ddp: distributed.Dist) -> Checkpoint | None:
    """The checkpoint to resume from, or None to start fresh; the same on every rank.

    Only global rank 0 writes checkpoints, so only it reads one, and broadcasts what it read:
    on several machines the other nodes have no checkpoint of their own.
    """
    global _resumable
    state = _read(fp) if ddp.is_main else None
    state = distributed.broadcast_object(state, ddp)
    _resumable = state is not None
    if state is None:
        return None
    history = History(state["history"]["epochs"], state["history"]["steps"])
    progress = Progress(
        state["epoch"], history, state["best_val"], state["bad_epochs"], state["stopped"]
    )
    parts = ("model", "optimizer", "scheduler", "scaler", "lookahead", "rng")
    return Checkpoint(progress, **{k: state.get(k) for k in parts})


def _read(fp: str) -> dict[str, Any] | None:
    # A save killed outright (SIGKILL, the OOM killer) left its temporary file: a model's size
    # and more (optimizer state), in a folder no DVC command cleans.
    remove_stale_temps(CHECKPOINT)
    finished = _finished()
    if finished is not None and _recorded(finished):
        discard()  # a finished run DVC has taken the outputs of: nothing to resume
        finished = None
    _drop_stale_asides(fp)
    state = _load(CHECKPOINT)
    if state is not None and state.get("fingerprint") != fp:
        if _finished_and_cached(finished, state):
            discard()  # DVC restores that run's outputs itself: nothing to resume
            log.info("removed %s, a finished run's that DVC recorded", CHECKPOINT)
        elif _code_of(str(state.get("fingerprint"))) == _code_of(fp):
            _set_aside(state, finished)  # another experiment's, stopped, or finished unrecorded
        else:
            _drop_other_code(state)
        state = finished = None
    if state is None and _aside(fp).is_file():  # this run's, set aside while others trained
        os.replace(_aside(fp), CHECKPOINT)
        if _aside_mark(fp).is_file():  # it had finished: said below, as for one never set aside
            os.replace(_aside_mark(fp), FINISHED)
            finished = _finished()
        log.info("resuming the checkpoint set aside as %s", _aside(fp))
        state = _load(CHECKPOINT)
    # The fingerprint hashes train's code: a checkpoint that matches was written by this very
    # code, in this layout.
    if state is None or state.get("fingerprint") != fp:
        return None
    if finished is not None and finished.get("fingerprint") == fp:
        log.warning(
            "train finished a run of these params, data and code, and dvc.lock does not record"
            " its model (stopped while DVC recorded it, or failed by an edit of its code?): its"
            " outputs are written again from %s, with nothing trained; to train anew, `rm -r %s`"
            " first",
            CHECKPOINT,
            paths.CHECKPOINT_DIR,
        )
    return state


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: start fresh, but say so
        # The type too: an empty file's EOFError and a text file's pickle error say nothing alone.
        log.warning(
            "unreadable checkpoint %s (%s: %s): starting fresh", path, type(exc).__name__, exc
        )
        return None


def _aside(fp: str) -> Path:
    """Where a stopped run's checkpoint waits while runs of other params train."""
    return paths.CHECKPOINT_DIR / f"{fp[:12]}-{_code_of(fp)[:12]}.pt"


def _aside_mark(fp: str) -> Path:
    """What FINISHED said of a set-aside checkpoint's run: it goes and comes back with it."""
    return _aside(fp).with_suffix(".json")


# `<run>-<code>.pt`; `<run>.pt` too, a checkpoint without a code digest, of no code (removed).
ASIDE_NAME = re.compile(r"[0-9a-f]{12}(-[0-9a-f]{12})?\.pt")


def _drop_other_code(state: dict[str, Any]) -> None:
    """Remove a checkpoint of other code, which no run of this code resumes: after an upgrade of
    visionpipe, or an edit of train's code (`code_files`)."""
    discard()
    log.warning(
        "%s was saved after epoch %s by other code (an upgrade, or an edit of stages/train.py or"
        " a module it imports, as dvc.yaml lists them), which no run of this code can resume:"
        " removed; this run starts over",
        CHECKPOINT,
        state.get("epoch", "?"),
    )


def _asides() -> list[Path]:
    """The set-aside checkpoints in checkpoints/, by name."""
    return sorted(f for f in paths.CHECKPOINT_DIR.glob("*.pt") if ASIDE_NAME.fullmatch(f.name))


def _drop_stale_asides(fp: str) -> None:
    """Remove the set-aside checkpoints of other code: no run of this code would take them."""
    code = _code_of(fp)[:12]
    for file in _asides():
        if file.stem.partition("-")[2] != code:
            file.unlink()
            file.with_suffix(".json").unlink(missing_ok=True)
            log.warning("removed %s, a stopped run's checkpoint of other code", file)


def _set_aside(state: dict[str, Any], finished: dict[str, Any] | None) -> None:
    """Keep a stopped run of other params or data: this run would overwrite it with its first
    epoch, and the other run's command, run again, would start over. A finished run's mark
    (`finished`, where it is this checkpoint's) goes with it."""
    theirs = str(state["fingerprint"])
    os.replace(CHECKPOINT, _aside(theirs))
    done = finished is not None and finished.get("fingerprint") == theirs
    if done:
        os.replace(FINISHED, _aside_mark(theirs))
    else:
        FINISHED.unlink(missing_ok=True)
        _aside_mark(theirs).unlink(missing_ok=True)
    log.warning(
        "%s is another run's (other params or data), saved after its epoch %s%s: set aside"
        " as %s (%s), which that run resumes from when run again; delete it if that run is not"
        " wanted",
        CHECKPOINT,
        state.get("epoch", "?"),
        ", its last" if done else "",
        _aside(theirs),
        size_text(_aside(theirs).stat().st_size),
    )
    asides = _asides()
    if len(asides) > 1:  # a sweep stopped again and again: each a model and its optimizer state
        log.warning(
            "%s holds %d set-aside checkpoints (%s in all): `rm %s/*-*` removes them all",
            paths.CHECKPOINT_DIR,
            len(asides),
            size_text(sum(f.stat().st_size for f in asides)),
            paths.CHECKPOINT_DIR,
        )


def discard() -> None:
    """Remove the checkpoint: a finished run whose outputs DVC has recorded is not resumed."""
    CHECKPOINT.unlink(missing_ok=True)
    FINISHED.unlink(missing_ok=True)


def keep_finished(fp: str) -> None:
    """Mark the checkpoint as a finished run's, once train has written its outputs: kept until
    dvc.lock records this model, so that a stop before DVC has taken the outputs loses no
    training."""
    with open(paths.MODEL, "rb") as f:
        md5 = hashlib.file_digest(f, "md5").hexdigest()
    write_json(FINISHED, {"fingerprint": fp, "model_md5": md5})


def _finished() -> dict[str, Any] | None:
    try:
        found = json.loads(FINISHED.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _recorded(finished: dict[str, Any]) -> bool:
    """Whether dvc.lock's train stage holds the finished run's model (the md5 DVC computes)."""
    train = paths.stages_of(paths.DVC_LOCK).get("train")
    outs = train.get("outs") if isinstance(train, dict) else None
    return isinstance(outs, list) and any(
        isinstance(out, dict)
        and out.get("path") == paths.MODEL.as_posix()
        and out.get("md5") == finished.get("model_md5")
        for out in outs
    )


def _finished_and_cached(finished: dict[str, Any] | None, state: dict[str, Any]) -> bool:
    """Whether the checkpoint is a finished run's that DVC recorded: its model in DVC's cache
    and a run-cache entry naming it (DVC writes both as the stage ends, and dvc.lock after
    them; each alone is no record of the run). dvc.lock no longer records such a run after
    another experiment, `dvc exp apply` or a run-cache restore; set aside, it would make that
    run's `dvc repro -f` write its outputs again instead of training. A model cached by a run
    stopped before its entry was written is not enough: that run's checkpoint is set aside, as
    DVC cannot restore it."""
    if finished is None or finished.get("fingerprint") != state.get("fingerprint"):
        return False
    md5 = str(finished.get("model_md5", ""))
    try:
        cache = dvc_cache_of(Path.cwd())
    except Exception:  # a broken DVC config: keep the checkpoint, as if not cached
        return False
    if cache is None or len(md5) != 32 or not (cache / md5[:2] / md5[2:]).is_file():
        return False
    runs = cache.parent.parent / "runs"  # <cache>/files/md5 -> <cache>/runs/<key>/<entry>
    entries = (f for f in runs.glob("*/*/*") if f.is_file()) if runs.is_dir() else ()
    return any(md5 in f.read_text(encoding="utf-8", errors="replace") for f in entries)


def _fitting_lookahead(
    theirs: dict[str, torch.Tensor] | None, own: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The checkpoint's slow weights, checked against this run's; {} without lookahead."""
    if own is None:
        return {}
    if theirs is None or theirs.keys() != own.keys():
        raise KeyError("its lookahead weights do not match this model's")
    if any(theirs[k].shape != own[k].shape for k in own):
        raise ValueError("its lookahead weights have other shapes")
    return theirs


def restore(ckpt: Checkpoint, t: Trainee) -> bool:
    """Load a checkpoint into the trainee's objects; False (and them left fresh) when it does
    not fit them."""
    own = t.model.state_dict()
    theirs = ckpt.model or {}
    if own.keys() != theirs.keys() or any(own[k].shape != theirs[k].shape for k in own):
        # Checked first: a half-loaded model would not be a fresh start.
        log.warning("checkpoint %s holds another model layout: starting fresh", CHECKPOINT)
        return False
    # A fresh run's optimizer holds no buffers yet: cheap copies to put back if a later part
    # fails, so that "starting fresh" does not go on with the checkpoint's momentum.
    fresh = copy.deepcopy((t.optimizer.state_dict(), t.scheduler.state_dict()))
    try:
        t.optimizer.load_state_dict(ckpt.optimizer)
        t.scheduler.load_state_dict(ckpt.scheduler)
        slow = _fitting_lookahead(ckpt.lookahead, t.lookahead)
        if t.scaler.is_enabled() and ckpt.scaler:
            t.scaler.load_state_dict(ckpt.scaler)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Saved under another torch (the fingerprint covers visionpipe's code, not its
        # libraries) with another optimizer layout: the weights might load but the run would
        # not continue as it began, so begin again.
        t.optimizer.load_state_dict(fresh[0])
        t.scheduler.load_state_dict(fresh[1])
        log.warning("checkpoint %s does not fit this version (%s): starting fresh", CHECKPOINT, exc)
        return False
    # Last, once every part is known to fit: these cannot fail half-way.
    t.model.load_state_dict(theirs)
    for name, tensor in slow.items():
        t.lookahead[name].copy_(tensor)  # type: ignore[index]
    set_rng_state(ckpt.rng, t.gen, t.device)
    return True


def after_a_stop() -> str:
    """What a stopped run leaves to do. `dvc exp run --queue` and `--temp` train in a temporary
    copy of the project (.dvc/tmp/exps/<name>, and .dvc/tmp/exps/standalone/<name> for `--temp`)
    that DVC deletes afterwards, checkpoint and all.
    A `dvc exp run` in the project (DVC names it in DVC_EXP_NAME) resumes as an experiment only
    when run again with the same -S values: `dvc repro` would resume it outside any experiment,
    and a plain `dvc exp run` composes conf/ anew, other params, and starts over."""
    parts = Path.cwd().parts
    if any(parts[i : i + 3] == (".dvc", "tmp", "exps") for i in range(len(parts) - 3)):
        return (
            "this run trained in DVC's temporary copy of the project (`dvc exp run --queue` or "
            "`--temp`), which DVC deletes with the checkpoint, so running the experiment again "
            "starts over (a plain `dvc exp run` trains in the project, where a stopped run "
            "resumes from its last complete epoch)"
        )
    # Stopped in its first epoch, or the save itself failed; a checkpoint there may be another
    # run's (other params), which this one would not have resumed either. Stopped before it
    # looked (loading the data; the stage that launches the ranks), it cannot tell whose the
    # checkpoints there are.
    found = CHECKPOINT.is_file() or bool(_asides())
    if _resumable is False or not found or (_resumable and not CHECKPOINT.is_file()):
        return (
            f"no epoch of this run is checkpointed in {paths.CHECKPOINT_DIR}/, so the next run "
            "starts over"
        )
    unsure = (
        f", if {paths.CHECKPOINT_DIR}/ holds this run's checkpoint (one saved by a run of the"
        " same params, data and code, as last.pt or set aside; if not, it starts over)"
        if _resumable is None
        else ""
    )
    if os.environ.get("DVC_EXP_NAME"):
        return (
            "the same `uv run dvc exp run` command again, with the same -S values, resumes this "
            f"experiment from the last complete epoch{unsure} (other -S values, or none, start "
            "over)"
        )
    return f"the next `uv run dvc repro` resumes from the last complete epoch{unsure}"


def resume_after_clash() -> str:
    """How to resume a run stopped because another run rewrote params.yaml under it."""
    if os.environ.get("DVC_EXP_NAME"):
        return (
            "the same `dvc exp run` command, with the same -S values, resumes from it once the "
            "other run is done"
        )
    return (
        "once the other run is done, put this run's params back (`git checkout params.yaml`, or "
        "`uv run visionpipe params` with its values) and `uv run dvc repro` resumes from it"
    )
