"""The DVC command running this stage (`dvc repro train`, `dvc exp run -S ...`), read from its
command line: DVC gives a stage its own name (DVC_STAGE) but not what the user asked for, which
decides what a check before training may speak for."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
from pathlib import Path
from typing import Any

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
    return None if start is None else _parsed(tuple(a for a in argv[start:] if a))


@functools.lru_cache(maxsize=4)
def _parsed(args: tuple[str, ...]) -> argparse.Namespace | None:
    """DVC's reading of its arguments, once a command line (building its parser takes time)."""
    from dvc.cli.parser import get_main_parser

    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        return get_main_parser().parse_args(list(args))
    return None


def named_stages(stages: dict[str, Any]) -> set[str] | None:
    """The stages of dvc.yaml's `stages` the running command runs: its targets (`dvc repro
    predict`) and the stages before them (`-s`: the targets alone). None where it runs the whole
    pipeline, or that cannot be told (a target that is a file or a glob, `--downstream`, `-p`)."""
    args = running()
    targets = getattr(args, "targets", None)
    whole = ("downstream", "glob", "pipeline", "all_pipelines", "recursive")
    if not targets or any(getattr(args, flag, False) for flag in whole):
        return None
    names = {target.rsplit(":", 1)[-1] for target in targets}  # `dvc.yaml:train` too
    if not names <= set(stages):
        return None
    return names if getattr(args, "single_item", False) else _with_upstream(stages, names)


def _with_upstream(stages: dict[str, Any], names: set[str]) -> set[str]:
    """`names` and every stage whose outputs they depend on, however far back."""
    made = {name: _paths(entry, ("outs", "metrics", "plots")) for name, entry in stages.items()}
    found, todo = set(names), list(names)
    while todo:
        deps = _paths(stages[todo.pop()], ("deps",))
        for other, outs in made.items():
            if other not in found and any(_inside(d, o) for d in deps for o in outs):
                found.add(other)
                todo.append(other)
    return found


def _paths(entry: Any, keys: tuple[str, ...]) -> list[str]:
    """The paths a dvc.yaml stage lists under `keys` (an entry is a path, or {path: options})."""
    listed = [item for key in keys for item in (entry or {}).get(key) or []]
    return [str(next(iter(item)) if isinstance(item, dict) else item) for item in listed]


def _inside(a: str, b: str) -> bool:
    """Whether one path is the other or inside it (a dep on data/processed, an out data/)."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def removed_keys() -> set[str] | None:
    """The keys the running `dvc exp run` removes with -S (`~evaluate`, DVC's
    `params.yaml:~evaluate`); None where its -S values cannot be told (a queued run)."""
    said = getattr(running(), "set_param", None)
    if said is None:
        return None
    keys = (re.sub(r"^[\w./-]+\.(?:ya?ml|json|toml|py):", "", str(s).strip()) for s in said)
    return {key[1:] for key in keys if key.startswith("~")}
