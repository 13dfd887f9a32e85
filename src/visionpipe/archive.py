"""Read dataset archives (.zip, .tar, .tar.gz/.tgz) or folders safely, without extracting to disk.

Every member of an archive is validated before `open_files` returns: absolute paths, `..`
components, links that resolve outside the archive root, members stored under a link, device and
fifo entries and duplicate names all raise `UnsafeArchiveError`. Because nothing is ever extracted
to disk, a malicious archive can at worst be refused, never escape. A folder's named pipes,
sockets and devices are skipped with a warning instead, never opened.

Links: a symlink or hardlink whose target resolves (as an extractor would resolve it, through
other links) to a regular file inside the archive is followed: its target's bytes are read
under the link's own name. Links to folders, to missing members or in a loop are skipped with a
warning naming each.

Order: zip archives and folders list files sorted by name; tar archives list them in archive
order, which is fixed by the archive's bytes and so just as deterministic (sorting would make a
compressed tar decompress from the start again for every backward seek).

`pack_directory` goes the other way, for the download stage: a data.source folder packed into a
byte-reproducible tar. The checks on names and links are `archive_members`'.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import io
import logging
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from visionpipe.archive_members import (
    TAR_KINDS,
    Entry,
    check_unique,
    check_utf8,
    clean_name,
    dir_entries,
    plan_entries,
    refuse,
    refuse_kind,
    warn_empty_folders,
    warn_hidden_folders,
    warn_icloud_placeholders,
)
from visionpipe.fsutil import DiskFullError, atomic_path, free_bytes, size_text
from visionpipe.images import DICOM_NOT_READ, Unread, dicom_by_bytes
from visionpipe.names import counted, listed
from visionpipe.zip_names import ZipNames

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
PACKED_FOLDER = "folder.tar"  # what the download stage packs a data.source folder into
SUPPORTED_KINDS = "a .zip, .tar, .tar.gz or .tgz file, or a directory"
# What to do about a copy in data/raw that cannot be read: the download stage re-runs when
# data.source changes, not when the file it names does.
_RECOPY = (
    "it is the download stage's copy of data.source, which is truncated or was changed while"
    " copied: copy or download data.source again (a tar lists whole with `tar tf FILE`), then run"
    " `uv run dvc repro --force download`"
)

_MAX_SYMLINK_BYTES = 4096  # a zip symlink's target is its data; PATH_MAX bounds a real one
# The most an image member may unpack to: a 64-MP image (images.MAX_PIXELS) stored uncompressed
# at 16 bits a channel with alpha (a scan's TIFF) is 512 MB. Every member is read into memory
# whole, so a few MB of zip that unpack to gigabytes of zeros (a zip bomb) would take it all.
MAX_MEMBER_BYTES = 512 * 1024 * 1024


class ArchiveReadError(ValueError):
    """A source that cannot be read: not a folder or supported archive, or a corrupt or
    truncated one. The message names the file and what to do."""


Kind = Literal["dir", "zip", "tar"]


def archive_kind(source: Path) -> Kind:
    """Tell how to read `source`: by its suffix, else by sniffing its content."""
    if source.is_dir():
        return "dir"
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: expected {SUPPORTED_KINDS}")
    name = source.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    # No telling suffix (a temp file, a URL without an extension): look at the bytes.
    try:
        if tarfile.is_tarfile(source):
            return "tar"
    except (OSError, EOFError, zlib.error):
        pass  # not a readable tar: try zip next
    if zipfile.is_zipfile(source):
        return "zip"
    raise ArchiveReadError(
        f"{source} is neither a folder nor a supported archive: expected a folder of class"
        " folders (photos/cats/*.jpg), or a .zip, .tar, .tar.gz or .tgz of one. Point data.source"
        " at the folder holding the class folders, or at an archive of it"
    )


def check_readable(source: Path) -> Kind:
    """`archive_kind(source)`, having opened an archive as far as is cheap: a zip's central
    directory (at its end, so a truncated zip fails here) and a tar's first header. A tar
    truncated further on shows only when read whole, in preprocess."""
    kind = archive_kind(source)
    if kind == "zip":
        with _open_zip_file(source):
            pass
    elif kind == "tar":
        try:
            with tarfile.open(source, "r:*") as tf:
                tf.next()
        except _TAR_ERRORS as e:
            raise ArchiveReadError(
                f"{source} is not a readable tar archive ({e}): it is truncated, still being"
                " written, or not what its name says; copy, download or create it again"
            ) from e
    return kind


class Span(NamedTuple):  # a tuple: made for every image, so it must be cheap
    """Where a file's bytes lie, so that another process can read them (`read_span`) without
    listing and checking the archive again: a range of the archive file, or a folder's file."""

    path: str  # the archive, or for a folder the file itself
    offset: int = 0
    size: int = -1  # bytes stored at offset; -1: the whole file at `path`
    zip_method: int | None = None  # a zip member: its compression (stored or deflated)
    zip_crc: int = 0
    zip_name: str = ""  # the name the member's local header must repeat


@dataclass(frozen=True)
class Files:
    """An opened archive or folder: its regular files and two ways to read them."""

    names: list[str]  # posix relative paths, in the order described above
    read: Callable[[str], bytes]  # a file's bytes, in this process
    span: Callable[[str], Span | None]  # where they lie (None: compressed, read in order only)
    folders: list[str]  # a zip's or tar's folder entries (a tar packed from a folder has none)


@contextlib.contextmanager
def open_files(source: Path) -> Iterator[Files]:
    """The regular files of an archive or folder, checked, with readers; opened once.

    Reading the files in listing order is sequential for every kind, .tar.gz included; skipping
    some costs nothing. Raises UnsafeArchiveError before returning if any member is unsafe, and
    ValueError for an unknown archive type or a corrupt archive.
    """
    with _open(Path(source)) as (entries, read, span, folders):
        targets = {entry.name: entry.target for entry in entries}
        yield Files(
            [entry.name for entry in entries],
            lambda name: read(targets[name]),
            lambda name: span(targets[name]),
            folders,
        )


def list_files(source: Path) -> list[str]:
    """The `names` of `open_files(source)`: its regular files, checked, in listing order."""
    with open_files(source) as files:
        return files.names


def iter_files(source: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (posix relative path, bytes) for each regular file of an archive or folder."""
    with open_files(source) as files:
        for name in files.names:
            yield name, files.read(name)


_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length
_ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"


@functools.lru_cache(maxsize=4)
def _opened(path: str, inode: int, mtime_ns: int) -> BinaryIO:
    # One handle per archive for the life of a worker process, which reads thousands of spans;
    # a file replaced at that path (a notebook's kernel outlives it) gets a handle of its own.
    return open(path, "rb")


def read_head(span: Span, n: int) -> bytes:
    """The first `n` bytes of one file (fewer where it is shorter), read and unpacked no further:
    a look at what a file is (DICOM's `DICM`), not a check of it."""
    if span.size < 0:
        with open(span.path, "rb") as whole:
            return whole.read(n)
    f = _at_data(span)
    if span.zip_method == zipfile.ZIP_DEFLATED:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        out = b""
        left = span.size
        while len(out) < n and left > 0 and not inflate.eof:
            chunk = f.read(min(left, 1 << 16))
            left -= len(chunk)
            if not chunk:
                break
            out += inflate.decompress(chunk, n - len(out))
        return out[:n]
    return f.read(min(n, span.size))


def _at_data(span: Span) -> BinaryIO:
    """The archive at `span`, open and at the file's first stored byte (past a zip member's
    local header, checked)."""
    st = os.stat(span.path)
    f = _opened(span.path, st.st_ino, st.st_mtime_ns)
    f.seek(span.offset)
    if span.zip_method is not None:
        header = f.read(_ZIP_LOCAL_HEADER.size)
        fields = _ZIP_LOCAL_HEADER.unpack(header) if len(header) == _ZIP_LOCAL_HEADER.size else None
        if fields is None or fields[0] != _ZIP_LOCAL_SIGNATURE:
            raise ArchiveReadError(f"{span.path} is corrupt: no local header for {span.zip_name!r}")
        name = f.read(fields[-2]).decode("utf-8" if fields[2] & 0x800 else "cp437")
        if name != span.zip_name:
            raise ArchiveReadError(
                f"{span.path} is corrupt: {span.zip_name!r} is stored as {name!r}"
            )
        f.seek(fields[-1], os.SEEK_CUR)
    return f


def read_span(span: Span) -> bytes:
    """The bytes of one file, from where `Files.span` said they lie (any process may call it)."""
    if span.size < 0:
        return Path(span.path).read_bytes()
    data = _at_data(span).read(span.size)
    if span.zip_method is not None:
        if span.zip_method == zipfile.ZIP_DEFLATED:
            inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflate.decompress(data, MAX_MEMBER_BYTES)  # a lying size stops here
            if inflate.unconsumed_tail:
                raise ArchiveReadError(
                    f"{span.path} is corrupt: {span.zip_name!r} unpacks to more than "
                    f"{size_text(MAX_MEMBER_BYTES)}, above what its header declares"
                )
        if zlib.crc32(data) != span.zip_crc:
            raise ArchiveReadError(f"{span.path} is corrupt: {span.zip_name!r} fails its CRC check")
    if span.zip_method is None and len(data) != span.size:
        raise ArchiveReadError(f"{span.path} is truncated: a member ends early; {_RECOPY}")
    return data


def pack_directory(
    src: Path,
    dest: Path,
    store: Callable[[list[str]], list[bool]] | None = None,
    leave_out: Callable[[str], bool] | None = None,
) -> None:
    """Write the regular files of folder `src` into an uncompressed tar at `dest`, reproducibly.

    Names are sorted; mtime, uid and gid are 0, mode 0o644, no user or group names, no folder
    entries: the same tree always gives a byte-identical tar. Symlinks inside `src` are stored as
    the file they point to; symlinks pointing outside `src` are refused like in an archive, but
    for links into a DVC cache (a DVC-tracked folder with `cache.type symlink`).
    `leave_out(name)` says which files are not packed at all (default: none); of the rest,
    `store(names)` says per file whether its bytes go in (default: all); the others are stored
    empty, so that their names stay in the listing.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise NotADirectoryError(f"cannot pack {src}: it is not a directory")
    root = src.resolve()
    if dest.resolve().is_relative_to(root):
        raise ValueError(f"cannot pack {src} into {dest}: the tar would land inside the folder")
    listing = dir_entries(root)
    found = len(listing.entries)
    if leave_out and (left := listing.leave_out(leave_out)):
        log.info("left out %d hidden and system files of %s", len(left), src)
        warn_hidden_folders(src, left)
        warn_icloud_placeholders(src, left)
    listing.warn(src)
    entries, folders = listing.entries, listing.folders
    names = [e.name for e in entries]
    stored = store(names) if store and names else [True] * len(names)
    # The files stored whole are those preprocess reads; without `store`, those named as images.
    images = [name for name, keep in zip(names, stored, strict=True) if keep] if store else None
    warn_empty_folders(src, folders, names, " (not packed)", images)
    if not entries:
        but = f" but {found} hidden or system file{'s' * (found > 1)}" if found else ""
        raise ArchiveReadError(f"{src} holds no regular files{but}: nothing to pack")
    _check_room(src, dest, _tar_size(root, entries, stored))
    left_out = 0  # bytes of the files stored empty
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry, keep in zip(entries, stored, strict=True):
            left_out += _add_file(tar, root / entry.target, entry.name, keep)
    log.info("packed %d files of %s into %s", len(entries), src, dest)
    if not all(stored):
        empty = stored.count(False)
        log.info(
            "of which %d %s stored empty, names only (%s left out): files the pipeline does not"
            " read, such as videos and RAW files",
            empty,
            "is" if empty == 1 else "are",
            size_text(left_out),
        )
        _warn_dicom(src, root, [e for e, keep in zip(entries, stored, strict=True) if not keep])


def _warn_dicom(src: Path, root: Path, unstored: list[Entry]) -> None:
    """Name the files stored empty that are DICOM scans by their first bytes (a disc's IM0000,
    a PACS export named by its UID): preprocess reads their names only, and cannot tell."""
    scans = dicom_by_bytes((entry.name, root / entry.target) for entry in unstored)
    if scans:
        found = f"{counted(len(scans), 'DICOM scan')} ({listed(scans, 3)})"
        log.warning("%s: %s among its files: %s", src, found, DICOM_NOT_READ)


def _tar_size(root: Path, entries: list[Entry], stored: list[bool]) -> int:
    """The size of the tar `pack_directory` writes: each file's header as `_member` makes it
    (a PAX header before it where the name is long or not ASCII) and its bytes (those `stored`)
    in whole blocks; then the end's two zero blocks, the whole rounded up to tar's records."""
    block = tarfile.BLOCKSIZE
    size = 2 * block
    for entry, keep in zip(entries, stored, strict=True):
        data = (root / entry.target).stat().st_size if keep else 0
        header = _member(entry.name, data).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING)
        size += len(header) + -(-data // block) * block
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _check_room(src: Path, dest: Path, need: int) -> None:
    """Refuse, before writing, a tar its disk cannot hold: a full disk at the end of a long pack
    wastes it, and leaves that disk full for everything else."""
    free = free_bytes(dest.parent)
    if need > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"packing {src} takes {size_text(need)} in {dest.parent}, and its disk has"
            f" {size_text(free)} free: free some space and run the command again",
            str(dest),
        )


def _add_file(tar: tarfile.TarFile, path: Path, name: str, keep: bool) -> int:
    """Add file `path` as `name`, its bytes if `keep`, else empty; the bytes left out. A file
    stored empty is never opened: a video the user cannot read, or a cloud drive's placeholder
    that opening would download, costs nothing."""
    if not keep:
        tar.addfile(_member(name, 0))
        return path.stat().st_size
    with open(path, "rb") as f:
        tar.addfile(_member(name, os.fstat(f.fileno()).st_size), f)
    return 0


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A packed file's header: nothing of the machine that packed it (times, owners, modes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


Reader = Callable[[str], bytes]
# The files to yield, a reader, where each file's bytes lie, and the folder entries.
Opened = tuple[list[Entry], Reader, Callable[[str], Span | None], list[str]]


@contextlib.contextmanager
def _open(source: Path) -> Iterator[Opened]:
    """Validate every member of `source`, then hand back the files to yield, a reader and where
    each file's bytes lie."""
    kind = archive_kind(source)
    if kind == "dir":
        root = source.resolve()
        listing = dir_entries(root)
        listing.warn(source)
        entries, folders = listing.entries, listing.folders
        yield (
            entries,
            lambda name: (root / name).read_bytes(),
            lambda name: Span(str(root / name)),
            folders,
        )
    elif kind == "zip":
        with _open_zip(source) as opened:
            yield opened
    else:
        with _open_tar(source) as opened:
            yield opened


def _open_zip_file(source: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ArchiveReadError(
            f"{source} is not a readable zip archive ({e}): it is truncated, still being"
            " written, or not what its name says; copy, download or create it again"
        ) from e


def _folder_entry(info: zipfile.ZipInfo) -> bool:
    """Whether a member is a folder: named with a '/' at its end, or, in a zip PowerShell 5 or
    .NET wrote, with Windows' '\\' (`photos\\bird\\`) and nothing in it."""
    return info.is_dir() or (info.filename.endswith("\\") and info.file_size == 0)


# The zip format's "made by" systems whose names never hold a Windows separator: Unix, and
# macOS (Info-ZIP, Archive Utility, Python's zipfile). Windows tools write 0 (MS-DOS) or 10 (NTFS).
_UNIX_SYSTEMS = (3, 19)


@contextlib.contextmanager
def _open_zip(source: Path) -> Iterator[Opened]:
    with _open_zip_file(source) as zf:
        files: dict[str, zipfile.ZipInfo] = {}
        links: dict[str, str] = {}
        seen: set[str] = set()
        folders: list[str] = []
        too_large: list[str] = []
        names = ZipNames(source, zf.infolist())
        for info in zf.infolist():
            raw = names.name(info)
            name = clean_name(source, raw)  # refuses what Windows' reading would make unsafe
            if info.create_system in _UNIX_SYSTEMS:
                # Written on Unix or macOS, where a backslash is a letter of a name (a class
                # folder `dog\puppies`, as a folder or tar of the same photos reads it).
                name = clean_name(source, raw, windows=False)
            check_unique(source, info.filename, name, seen)
            if not name or _folder_entry(info):
                folders += [name] if name else []
                continue
            mode = info.external_attr >> 16  # Unix st_mode when written on Unix, else 0
            fmt = stat.S_IFMT(mode)
            if fmt == stat.S_IFLNK:
                if info.file_size > _MAX_SYMLINK_BYTES:
                    refuse(source, info.filename, f"symlink target of {info.file_size} bytes")
                links[name] = _read_zip_member(source, zf, info).decode("utf-8", "replace")
            elif fmt in (0, stat.S_IFREG):
                if _too_large(info.file_size):
                    too_large.append(name)
                files[name] = info
            elif fmt == stat.S_IFDIR:
                continue
            else:
                refuse_kind(source, info.filename, fmt)
        names.warn()
        entries = plan_entries(source, sorted(files), links, hardlinks={})
        path = str(source.resolve())
        yield _left_unread(
            (
                sorted(entries, key=lambda e: e.name),
                (lambda target: _read_zip_member(source, zf, files[target])),
                (lambda target: _zip_span(path, files[target])),
                sorted(folders),
            ),
            too_large,
        )


def _too_large(size: int) -> bool:
    """Whether a member unpacks to more than MAX_MEMBER_BYTES: left unread, an undecodable
    image where an image's name (its own, or a link's to it) has it read, not the whole
    archive refused."""
    return size > MAX_MEMBER_BYTES


def _left_unread(opened: Opened, too_large: list[str]) -> Opened:
    """`opened` with the `too_large` members' bytes never read: their read gives `Unread`,
    which preprocess reports as an undecodable image (on_bad_image decides) and its class
    counts without."""
    if not too_large:
        return opened
    entries, read, span, folders = opened
    why = Unread(
        f"unpacks to more than {size_text(MAX_MEMBER_BYTES)}, more than any image of at most 64"
        " megapixels takes uncompressed at 16 bits a channel (a zip bomb, or a damaged"
        " archive): left unread"
    )
    unread = set(too_large)
    return (
        entries,
        lambda target: why if target in unread else read(target),
        lambda target: None if target in unread else span(target),
        folders,
    )


def _zip_span(path: str, info: zipfile.ZipInfo) -> Span | None:
    """A stored or deflated, unencrypted member's span; None for others (read in this process)."""
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return None
    return Span(
        path,
        info.header_offset,
        info.compress_size,
        info.compress_type,
        info.CRC,
        info.orig_filename,
    )


def _read_zip_member(source: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return zf.read(info)
    except RuntimeError as e:  # zipfile's way of saying "encrypted, password required"
        raise ArchiveReadError(f"{source}: member {info.filename!r} cannot be read: {e}") from e
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as e:
        raise ArchiveReadError(
            f"{source} is corrupt or unsupported: member {info.filename!r} cannot be read ({e});"
            " re-download or re-create the archive"
        ) from e


_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError)


def _tar_members(source: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of `tf`, read to its very end: a truncated or corrupt archive is refused."""
    try:
        members = tf.getmembers()  # reads the whole archive once, so truncation shows here
        assert tf.fileobj is not None  # tarfile.open(path) always has one
        # Reading on to the very end makes gzip check its CRC and length trailer too.
        while tf.fileobj.read(1 << 20):
            pass
    except _TAR_ERRORS as e:
        raise ArchiveReadError(
            f"{source} is corrupt or truncated ({type(e).__name__}: {e}): {_RECOPY}"
        ) from e
    return members


@contextlib.contextmanager
def _open_tar(source: Path) -> Iterator[Opened]:
    try:
        tf = tarfile.open(source, "r:*")  # noqa: SIM115 (closed by the `with tf` below)
    except _TAR_ERRORS as e:
        raise ArchiveReadError(f"{source} is not a readable tar archive ({e}): {_RECOPY}") from e
    with tf:
        members = _tar_members(source, tf)
        files: dict[str, tarfile.TarInfo] = {}
        links: dict[str, str] = {}
        hardlinks: dict[str, str] = {}
        seen: set[str] = set()
        order: list[str] = []
        folders: list[str] = []
        too_large: list[str] = []
        for member in members:
            name = clean_name(source, member.name, windows=False)
            check_utf8(source, name)
            check_unique(source, member.name, name, seen)
            if not name or member.isdir():
                folders += [name] if name else []
                continue
            if member.isreg() and _too_large(member.size):
                too_large.append(name)
            if member.isreg():
                files[name] = member
            elif member.issym():
                links[name] = member.linkname
            elif member.islnk():
                hardlinks[name] = member.linkname
            else:
                refuse_kind(source, member.name, TAR_KINDS.get(member.type), member.type)
            order.append(name)
        planned = {e.name: e for e in plan_entries(source, list(files), links, hardlinks)}

        def read(target: str) -> bytes:
            try:
                f = tf.extractfile(files[target])
                assert f is not None  # a regular member always has a file object
                return f.read()
            except _TAR_ERRORS as e:
                raise ArchiveReadError(f"{source}: member {target!r} cannot be read ({e})") from e

        # An uncompressed tar (what the download stage packs a folder into) stores each file
        # as one byte range; a compressed one can only be read in order, in this process.
        plain = isinstance(tf.fileobj, io.BufferedReader)
        path = str(source.resolve())

        def span(target: str) -> Span | None:
            member = files[target]
            if not plain or member.issparse():
                return None
            return Span(path, member.offset_data, member.size)

        listed = [planned[name] for name in order if name in planned]
        yield _left_unread((listed, read, span, sorted(folders)), too_large)
