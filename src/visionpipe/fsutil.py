"""Atomic file writes: a crash, Ctrl-C or power cut never leaves a half-written output behind.

Also what a user is told when a write fails for good: a full disk (`disk_full_message`) or a file
the system refuses (`refused_message`), found in an exception's chain (`find_cause`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

# Out of space, or out of the user's quota: the same remedy.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A filesystem that cannot flush (some FUSE and network mounts) says so with these: nothing to do.
_NO_SYNC_ERRNOS = frozenset({errno.EINVAL, errno.ENOTSUP, errno.ENOSYS})


class DiskFullError(OSError):
    """A file could not be written: its filesystem is full. The message names file and remedy;
    `filename`, where there is one, the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def find_cause(exc: BaseException, wanted: Callable[[BaseException], bool]) -> Any:
    """The first exception in `exc`'s chain (itself, then what it was raised from or during)
    that is `wanted`, or None: torch.save, for one, reports a full disk or a Ctrl-C only as the
    context of a RuntimeError about zip positions."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if wanted(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _os_error_cause(exc: BaseException, errnos: Container[int | None]) -> OSError | None:
    return find_cause(exc, lambda e: isinstance(e, OSError) and e.errno in errnos)


def disk_full_cause(exc: BaseException) -> OSError | None:
    """The out-of-space OSError behind `exc`, if any."""
    return _os_error_cause(exc, FULL_ERRNOS)


# A file the system refuses for good, each with what to do: retrying cannot help.
_REFUSED = {
    errno.EACCES: "permission denied (`ls -ld` it and its folder for owner and mode): give "
    "this user access, or run as the user who owns the project",
    errno.EPERM: "operation not permitted (`ls -ld` it and its folder for owner and mode)",
    errno.EROFS: "read-only filesystem: run the project from a writable copy",
    errno.EFBIG: "file too large for its filesystem (FAT32 holds at most 4 GiB a file) or for "
    "the shell's limit (`ulimit -f`): put the project on another filesystem or raise the limit",
}


def refused_cause(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` that no retry fixes (permissions, a read-only mount, a file-size
    limit), if any. Permissions count only with a file name: an unnamed EPERM may be a process's."""
    found = _os_error_cause(exc, _REFUSED)
    if found is None or (found.filename is None and found.errno != errno.EFBIG):
        return None
    return found


def refused_reason(exc: OSError) -> str:
    """Why the system refused the file of `exc` (of `refused_cause`) and what to do."""
    return _REFUSED[exc.errno or 0]


def refused_message(exc: OSError) -> str:
    """`exc` of `refused_cause` for a user: the file as the stage names it (not the temporary
    file of an atomic write), why, and what to do."""
    if exc.filename is None:  # a library's raw write (TensorBoard's) names no file
        return f"a write failed: {refused_reason(exc)}"
    return f"{output_name(exc.filename)}: {refused_reason(exc)}"


def output_name(filename: str | bytes) -> Path:
    """The output an OSError's file name is part of, relative to the working folder when in it:
    not atomic_path's temporary file or atomic_dir's temporary folder, which are gone by the
    time a user reads it."""
    parts = Path(os.fsdecode(filename)).parts
    path = Path(*(re.sub(r"^\.(.+)\.\w+\.tmp$", r"\1", part) for part in parts))
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    return path


# A file of a DVC cache, named by its content's md5 (DVC 3: `<cache>/files/md5/ab/cdef…`).
_DVC_CACHE_FILE = re.compile(r"/files/md5/[0-9a-f]{2}/[0-9a-f]{30}$")


def unicode_twin(path: str) -> str | None:
    """`path` as the disk spells it, where it names a file or folder only in another Unicode
    normal form: a Mac writes "café" decomposed (NFD), a keyboard types it composed (NFC), and
    macOS opens either while Linux opens only the bytes written. None where `path` is there as
    typed, or in no form."""
    spelled = as_on_disk(path)
    return spelled if spelled != path and os.path.lexists(spelled) else None


def as_on_disk(path: str) -> str:
    """`path` with its leading parts that the disk holds in another Unicode normal form spelled
    as the disk has them, each taken as typed where it is there; the parts from the first one
    there in no form on (an output's new folders and file, a glob's pattern) as typed. `path`
    itself, as given, where no part is spelled otherwise."""
    if path.isascii() or os.path.lexists(path):
        return path
    anchor, *parts = Path(path).parts if Path(path).is_absolute() else ("", *Path(path).parts)
    spelled, changed = anchor, False
    for i, part in enumerate(parts):
        forms = dict.fromkeys([part, *(unicodedata.normalize(f, part) for f in ("NFC", "NFD"))])
        there = next((f for f in forms if os.path.lexists(os.path.join(spelled, f))), None)
        if there is None:
            spelled = os.path.join(spelled, *parts[i:])
            break
        changed |= there != part
        spelled = os.path.join(spelled, there)
    if not changed:
        return path
    # A trailing separator means "folders only" to a glob: kept.
    return spelled + os.sep * (path.endswith(os.sep) and not spelled.endswith(os.sep))


def is_dvc_cache_file(path: Path | str) -> bool:
    """Whether `path` names a file of a DVC cache: what outputs and `dvc add`ed files are links
    to under `cache.type symlink`."""
    return _DVC_CACHE_FILE.search(Path(path).as_posix()) is not None


def dvc_cache_of(folder: Path) -> Path | None:
    """The real path of the `files/md5` folder of the DVC cache of the project holding
    `folder`, wherever `dvc cache dir` put it (any config level); None outside a DVC project.
    A name alone can be copied: a file named like a cache file elsewhere is none of its."""
    found = _dvc_cache(folder)
    return found[0] if found else None


def dvc_cache_copied_to(folder: Path) -> Path | None:
    """Where DVC copies the outputs of the project holding `folder` (its cache's `files/md5`);
    None outside a project, or where its cache.type links (hardlink, symlink) instead."""
    found = _dvc_cache(folder)
    if found is None or {"hardlink", "symlink"} & set(found[1]):
        return None
    return found[0]


def _dvc_cache(folder: Path) -> tuple[Path, list[str]] | None:
    from dvc.exceptions import NotDvcRepoError  # the pipeline's: only a folder source asks
    from dvc.repo import Repo

    try:
        root = Repo.find_root(str(folder))
    except NotDvcRepoError:
        return None
    with Repo(root) as repo:
        cache, types = repo.cache.local.path, repo.config["cache"].get("type") or []
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",")]
    return (Path(os.path.realpath(cache)), list(types)) if cache else None


def size_text(n: float) -> str:
    """A byte count the way a user reads it: 812.0 KiB, 3.4 MiB, 1.2 GiB."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def disk_full_message(path: Path | str | None) -> str:
    """What to tell a user whose write to `path` ran out of space: where, how much is left.
    None: a write the system names no file for (a lock in /dev/shm, a pipe's buffer)."""
    if path is None:
        free = size_text(shutil.disk_usage(Path.cwd()).free)
        return (
            f"no space left on a device this command writes to; not the project's disk ({free} "
            "free there), but maybe the temporary folder ($TMPDIR, /tmp) or /dev/shm (in a "
            "container: `docker run --shm-size`): free some space and run the command again"
        )
    free = size_text(free_bytes(path))
    return (
        f"no space left on the disk holding {path} ({free} free there): free some "
        "space and run the command again"
    )


def shares_disk_with_dvc_cache(path: Path | str) -> bool:
    """Whether the DVC cache of the project here is on the disk that holds `path` (its nearest
    existing folder): where it is not, freeing the cache frees nothing there. True where that
    cannot be told."""
    try:
        cache = dvc_cache_of(Path.cwd())
        if cache is None:
            return False
        folder = Path(path).absolute()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return os.stat(cache).st_dev == os.stat(folder).st_dev
    except Exception:  # a full disk may fail DVC itself: say what may help
        return True


def free_bytes(path: Path | str) -> int:
    """Bytes free on the disk that holds `path`, or would: its nearest existing folder's."""
    folder = Path(path).absolute()
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


WINDOWS = os.name == "nt"


def _fsync(path: Path) -> None:
    """Flush `path`'s data (a file) or its entries (a folder) to the disk.

    A rename reaches the disk's journal before the renamed file's data does: after a power cut
    or a kernel crash, a file renamed into place unflushed can be there with no bytes in it.
    """
    folder = path.is_dir()
    # Windows flushes a file only through a handle that may write it (EBADF otherwise).
    flags = os.O_RDWR if WINDOWS and not folder else os.O_RDONLY
    flags |= getattr(os, "O_DIRECTORY", 0) if folder else 0
    try:
        fd = os.open(path, flags)
    except OSError:
        if folder:
            return  # a system that cannot open a folder (Windows) cannot sync one either
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_SYNC_ERRNOS:
            raise
    finally:
        os.close(fd)


def _chmod(path: Path, mode: int) -> None:
    """chmod where the filesystem keeps modes: a FAT or exFAT drive mounted with its defaults
    (a desktop's automount) refuses every chmod (EPERM, or ENOSYS through FUSE), and its files
    have the mount's mode whatever is asked, as DVC's own writes there find."""
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# A file named by its md5 as any DVC cache names it: DVC 3's `files/md5/ab/cdef…` and DVC 2's
# `ab/cdef…`, which a project that has lived through both still links outputs to.
_CACHE_LIKE = re.compile(r"/[0-9a-f]{2}/[0-9a-f]{30}$")


def through_link(dest: Path) -> Path:
    """Where a write of a file the user named (`--json latest.json`) goes: a link's target, as
    `>` writes through it (the link stays), but for a link to a file named as a DVC cache names
    its files (an output under `cache.type symlink`): that link is replaced, so the cache keeps
    the bytes it recorded. The pipeline's own outputs always replace a link (`atomic_path`)."""
    if not dest.is_symlink() or _is_stream(dest):  # `>(sort)` is /dev/fd/63, a link to a pipe
        return dest
    target = Path(os.path.realpath(dest))
    return dest if _CACHE_LIKE.search(target.as_posix()) else target


def _is_stream(path: Path) -> bool:
    """Whether `path` is something written through, not replaced: a device or a pipe."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; it replaces `dest` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is atomic; it is
    flushed to the disk before, and the folder after, so the new name never holds missing bytes.
    A link at `dest` is replaced, never written through (`through_link` says where a file the
    user named goes); a pipe or device is written into.
    """
    dest = Path(dest)
    if _is_stream(dest):  # /dev/stdout, a FIFO, `>(jq .)`: nothing to replace, written as it is
        try:
            yield dest
        except OSError as exc:
            if (full := disk_full_cause(exc)) is None or isinstance(exc, DiskFullError):
                raise
            said = f"no space left writing into {dest}, which takes no more: send it elsewhere"
            raise DiskFullError(full.errno, said, str(dest)) from exc
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent)
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is None or isinstance(exc, DiskFullError):
            raise
        tmp.unlink(missing_ok=True)  # first, so the message counts the space it held
        raise DiskFullError(full.errno, disk_full_message(dest), str(dest)) from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(dest: Path | str, mode: str = "w", errors: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that atomically becomes `dest` on success; text in
    UTF-8, `errors` as `open` takes it."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(dest) as tmp, open(tmp, mode, encoding=encoding, errors=errors) as f:
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


def json_text(obj: Any) -> str:
    """`obj` as strict JSON on one line: NaN and infinities (a diverged model's numbers) become
    null, class and file names read as they are (猫, not \\u732b), and a name that is not
    UTF-8 keeps each byte's escape (\\udcXX), as `write_json` writes it."""
    text = json.dumps(_finite(obj), allow_nan=False, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_json(dest: Path | str, obj: Any) -> None:
    """`obj` as strict JSON in UTF-8: class and file names read as they are (猫, not \\u732b).

    A file name that is not UTF-8 (its bytes kept as lone surrogates) is written as the JSON
    escape of each byte, \\udcXX, which is what backslashreplace writes for a surrogate.
    """
    with atomic_open(dest, errors="backslashreplace") as f:
        f.write(json_pretty(obj))


def json_pretty(obj: Any) -> str:
    """`obj` as `write_json` writes it: indented, one item a line."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_text(dest: Path | str, text: str, errors: str = "strict") -> None:
    with atomic_open(dest, errors=errors) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces the folder `dest` only if the block succeeds.

    Its files and folders are flushed to the disk before the swap, as in `atomic_path`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        # mkdtemp makes 0700. The setgid bit, which a group-shared folder passes on to new
        # folders (their files then belong to the team's group), is kept.
        _chmod(tmp, (0o777 & ~_umask()) | (os.stat(tmp).st_mode & stat.S_ISGID))
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync(Path(folder, name))
            _fsync(Path(folder))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(dest: Path | str) -> None:
    """Delete the temporary files of `atomic_path(dest)` and folders of `atomic_dir(dest)` that
    a killed process (SIGKILL, the OOM killer, a power cut) left behind.

    Only for an output that one process writes at a time, as DVC's lock ensures for a stage's:
    another writer's temporary file would go too.
    """
    dest = Path(dest)
    if dest.parent.is_dir():
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def save_torch(dest: Path | str, obj: Any) -> None:
    """torch.save atomically and byte-reproducibly.

    Saving to a path would name the zip's root folder after the temporary file, so identical
    tensors would hash differently each run; through a file object the root is always 'archive'.
    """
    import torch

    with atomic_open(dest, "wb") as f:
        torch.save(obj, f)


class CsvRows:
    """csv.writer's rows, ending in `\n`, with a field holding a carriage return quoted too:
    csv quotes only the characters of its line terminator, and a bare CR in a file name split
    the row in two for every reader."""

    def __init__(self, f: Any, delimiter: str = ",") -> None:
        self.plain = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        self.quoted = csv.writer(f, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, row: Sequence[Any]) -> None:
        writer = self.quoted if any("\r" in str(v) for v in row) else self.plain
        writer.writerow(row)

    def writerows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def zip_members(path: Path) -> list[str] | None:
    """The member names of zip archive `path`; [] for a file that is no zip archive (or cannot
    be read), None for one that starts as one but whose central directory, at its end, cannot be
    read (a copy cut short)."""
    import zipfile  # here: most commands never open a zip

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return []
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return archive.namelist()
    except zipfile.BadZipFile:
        return None
    except OSError:
        return []


def torch_zip(members: list[str]) -> bool:
    """Whether a zip of these members is torch.save's: its tensors' pickle is <name>/data.pkl."""
    return any(name.endswith("/data.pkl") for name in members)
