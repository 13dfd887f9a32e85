"""Writes to standard output and error by name or by stream, whole or not at all: what a
pipe's reader or a full disk leaves of a write is said, never a silent short output."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from visionpipe.fsutil import FULL_ERRNOS, DiskFullError


def standard_stream(path: Path | str) -> int | None:
    """1 or 2 where `path` names the file standard output or error writes to (`/dev/stdout`, or
    the very file `>` or `2>>` opened), else None: written into through that stream, never
    replaced, or what the shell redirected there, and all printed after, would be lost."""
    try:
        st = os.stat(path)
        if os.path.samestat(st, os.stat(os.devnull)):  # discarded, however stdout goes
            return None
    except OSError:
        return None
    for fd in (1, 2):
        with contextlib.suppress(OSError, ValueError):
            if os.path.samestat(st, os.fstat(fd)):
                return fd
    return None


def discarded(path: Path | str) -> bool:
    """Whether `path` names /dev/null: an output written nowhere, as many as asked."""
    return os.path.realpath(path) == os.devnull


def write_stream(fd: int, data: bytes) -> None:
    """`data` to standard output (1) or error (2) whole, after what print() holds for it."""
    if fd == 1:
        write_stdout(data)
        return
    if sys.stderr is None:  # started with it closed (`2>&-`): the fd may be another file's
        raise OSError(errno.EBADF, "standard error is closed")
    sys.stderr.flush()
    _write_fd(fd, data)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may take part: a pipe's room, a disk's last bytes
        view = view[os.write(fd, view) :]


def write_stdout(data: bytes) -> None:
    """`data` to standard output whole, after what print() holds: BufferedWriter.write can
    return having written part (a pipe closed, a full disk) and say so only in its count."""
    if sys.stdout is None:  # started with it closed (`>&-`): the fd may be another file's
        raise OSError(errno.EBADF, "standard output is closed")
    with stdout_writes():
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # a notebook's stream, a test's capture
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        _write_fd(fd, data)


@contextlib.contextmanager
def stdout_writes() -> Iterator[None]:
    """Writes to standard output, whose full disk is said as such: the OSError names no file."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS and not isinstance(exc, DiskFullError):
            raise DiskFullError(exc.errno, STDOUT_FULL) from exc
        raise


STDOUT_FULL = (
    "no space left where standard output goes (a file on a full disk, or /dev/full): free "
    "some space or send the output elsewhere, and run the command again"
)
