"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; it replaces `dest` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is atomic.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(dest: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that atomically becomes `dest` on success."""
    with atomic_path(dest) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def _finite(obj: Any) -> Any:
    # NaN/inf are not JSON: a diverged run's losses are written as null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(dest: Path | str, obj: Any) -> None:
    with atomic_open(dest) as f:
        json.dump(_finite(obj), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")


def write_text(dest: Path | str, text: str) -> None:
    with atomic_open(dest) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces the folder `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(dest: Path | str) -> None:
    """Delete the temporary folders of `atomic_dir(dest)` that a killed process left behind."""
    dest = Path(dest)
    if dest.parent.is_dir():
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def save_torch(dest: Path | str, obj: Any) -> None:
    """torch.save atomically and byte-reproducibly.

    Saving to a path would name the zip's root folder after the temporary file, so identical
    tensors would hash differently each run; through a file object the root is always 'archive'.
    """
    import torch

    with atomic_open(dest, "wb") as f:
        torch.save(obj, f)
