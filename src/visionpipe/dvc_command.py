"""The DVC command running this stage (`dvc repro train`, `dvc exp run -S ...`), read from its
command line: DVC gives a stage its own name (DVC_STAGE) but not what the user asked for, which
decides what a check before training may speak for."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

LOCK = Path(".dvc/tmp/lock")  # DVC's repo lock: the running DVC's process id while stages run


def running() -> argparse.Namespace | None:
    """The running DVC command's arguments as DVC's own parser reads them; None outside DVC, or
    where its command line cannot be read (no /proc: macOS) or parsed (a queued run's worker,
    which reads its run from a file)."""
    if not os.environ.get("DVC_STAGE"):
        return None
    try:
        pid = int(LOCK.read_text("utf-8").split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (OSError, UnicodeError, ValueError, IndexError):
        return None
    # `python -m dvc ...` or the `dvc` script run by its interpreter: DVC's arguments follow.
    start = next((i + 1 for i, arg in enumerate(argv) if Path(arg).name == "dvc"), None)
    if start is None:
        return None
    from dvc.cli.parser import get_main_parser

    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        return get_main_parser().parse_args([a for a in argv[start:] if a])
    return None


def named_stages(stages: list[str]) -> set[str] | None:
    """The stages of `stages` the running command names as its targets (`dvc repro train`,
    `dvc exp run evaluate`): those, and the stages before them, are all it runs. None where
    it runs the whole pipeline, or that cannot be told (a target that is a file or a glob,
    `--downstream`)."""
    args = running()
    targets = getattr(args, "targets", None)
    if not targets or getattr(args, "downstream", False) or getattr(args, "glob", False):
        return None
    names = {target.rsplit(":", 1)[-1] for target in targets}  # `dvc.yaml:train` too
    return names if names <= set(stages) else None


def set_params() -> list[str] | None:
    """The running `dvc exp run`'s -S values (`train.lr=0.1`, `~evaluate`); None where that
    cannot be told."""
    args = running()
    said = getattr(args, "set_param", None)
    return None if said is None else [str(s) for s in said]
