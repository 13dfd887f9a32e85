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
byte-reproducible tar.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import logging
import os
import posixpath
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from visionpipe import fsutil
from visionpipe.fsutil import atomic_path, is_dvc_cache_file, size_text
from visionpipe.images import is_image_name
from visionpipe.names import counted, listed

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

_MAX_LINK_HOPS = 40  # as Linux's ELOOP limit: a longer chain of links is a loop
_MAX_SYMLINK_BYTES = 4096  # a zip symlink's target is its data; PATH_MAX bounds a real one
_DRIVE = re.compile(r"^[A-Za-z]:")  # Windows drive forms: C:\x, C:/x, C:x
_ZIP_UTF8_FLAG = 0x800  # general purpose bit 11: the member's name is UTF-8


class UnsafeArchiveError(ValueError):
    """An archive or folder member could escape the archive root, or is not a plain file."""


class ArchiveReadError(ValueError):
    """A source that cannot be read: not a folder or supported archive, or a corrupt or
    truncated one. The message names the file and what to do."""


class UndecodableNameError(ValueError):
    """A file name that is not UTF-8, which no class name, report or split record can hold."""


class _LinkLoop(Exception):
    """Raised by `_resolve` with the name of the link where a chain of links loops."""


Kind = Literal["dir", "zip", "tar"]


@dataclass(frozen=True)
class _Entry:
    """One listed file: its name in the listing and the member whose bytes it holds."""

    name: str
    target: str  # the name itself for a regular file; the resolved file for a followed link


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
def _opened(path: str) -> BinaryIO:
    # One handle per archive for the life of a worker process, which reads thousands of spans.
    return open(path, "rb")


def read_span(span: Span) -> bytes:
    """The bytes of one file, from where `Files.span` said they lie (any process may call it)."""
    if span.size < 0:
        return Path(span.path).read_bytes()
    f = _opened(span.path)
    f.seek(span.offset)
    if span.zip_method is None:
        data = f.read(span.size)
    else:
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
        data = f.read(span.size)
        if span.zip_method == zipfile.ZIP_DEFLATED:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
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
    listing = _dir_entries(root)
    found = len(listing.entries)
    if leave_out and (left := listing.leave_out(leave_out)):
        log.info("left out %d hidden and system files of %s", len(left), src)
        _warn_hidden_folders(src, left)
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


def _add_file(tar: tarfile.TarFile, path: Path, name: str, keep: bool) -> int:
    """Add file `path` as `name`, its bytes if `keep`, else empty; the bytes left out. A file
    stored empty is never opened: a video the user cannot read, or a cloud drive's placeholder
    that opening would download, costs nothing."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if not keep:
        tar.addfile(info)
        return path.stat().st_size
    with open(path, "rb") as f:
        info.size = os.fstat(f.fileno()).st_size
        tar.addfile(info, f)
    return 0


Reader = Callable[[str], bytes]
# The files to yield, a reader, where each file's bytes lie, and the folder entries.
Opened = tuple[list[_Entry], Reader, Callable[[str], Span | None], list[str]]


@contextlib.contextmanager
def _open(source: Path) -> Iterator[Opened]:
    """Validate every member of `source`, then hand back the files to yield, a reader and where
    each file's bytes lie."""
    kind = archive_kind(source)
    if kind == "dir":
        root = source.resolve()
        listing = _dir_entries(root)
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


@contextlib.contextmanager
def _open_zip(source: Path) -> Iterator[Opened]:
    with _open_zip_file(source) as zf:
        files: dict[str, zipfile.ZipInfo] = {}
        links: dict[str, str] = {}
        seen: set[str] = set()
        cp437: list[str] = []
        folders: list[str] = []
        for info in zf.infolist():
            name = _clean_name(source, _member_name(info, cp437))
            _check_unique(source, info.filename, name, seen)
            if not name or info.is_dir():
                folders += [name] if name else []
                continue
            mode = info.external_attr >> 16  # Unix st_mode when written on Unix, else 0
            fmt = stat.S_IFMT(mode)
            if fmt == stat.S_IFLNK:
                if info.file_size > _MAX_SYMLINK_BYTES:
                    _refuse(source, info.filename, f"symlink target of {info.file_size} bytes")
                links[name] = _read_zip_member(source, zf, info).decode("utf-8", "replace")
            elif fmt in (0, stat.S_IFREG):
                files[name] = info
            elif fmt == stat.S_IFDIR:
                continue
            else:
                _refuse_kind(source, info.filename, fmt)
        _warn_cp437(source, cp437)
        entries = _plan(source, sorted(files), links, hardlinks={})
        path = str(source.resolve())
        yield (
            sorted(entries, key=lambda e: e.name),
            (lambda target: _read_zip_member(source, zf, files[target])),
            (lambda target: _zip_span(path, files[target])),
            sorted(folders),
        )


def _member_name(info: zipfile.ZipInfo, cp437: list[str]) -> str:
    """A zip member's name as its maker meant it. A name not flagged UTF-8 is cp437 by the ZIP
    standard, and Python reads it so; but macOS's Archive Utility and other tools store UTF-8
    unflagged: a name that is valid UTF-8 is read as UTF-8, as unzip and 7-Zip read it. Names
    left to cp437 are added to `cp437`."""
    if info.flag_bits & _ZIP_UTF8_FLAG or info.orig_filename.isascii():
        return info.filename
    raw = info.orig_filename.encode("cp437")  # the bytes as stored: cp437 maps every byte
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        cp437.append(info.filename)
        return info.filename


def _warn_cp437(source: Path, names: list[str]) -> None:
    if names:
        log.warning(
            "%s holds file names neither marked nor valid UTF-8 (%d, such as %r), read as the"
            " ZIP standard's cp437: if they look garbled, the zip was made on a system with"
            " another code page (a Chinese Windows writes GBK). Unpack it with that code page"
            " (unzip -O GBK %s) and set data.source to the folder, or re-create the zip with"
            " 7-Zip, which writes UTF-8",
            source,
            len(names),
            names[0],
            source.name,
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


@contextlib.contextmanager
def _open_tar(source: Path) -> Iterator[Opened]:
    try:
        tf = tarfile.open(source, "r:*")  # noqa: SIM115 (closed by the `with tf` below)
    except _TAR_ERRORS as e:
        raise ArchiveReadError(f"{source} is not a readable tar archive ({e}): {_RECOPY}") from e
    with tf:
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
        files: dict[str, tarfile.TarInfo] = {}
        links: dict[str, str] = {}
        hardlinks: dict[str, str] = {}
        seen: set[str] = set()
        order: list[str] = []
        folders: list[str] = []
        for member in members:
            name = _clean_name(source, member.name)
            _check_utf8(source, name)
            _check_unique(source, member.name, name, seen)
            if not name or member.isdir():
                folders += [name] if name else []
                continue
            if member.isreg():
                files[name] = member
            elif member.issym():
                links[name] = member.linkname
            elif member.islnk():
                hardlinks[name] = member.linkname
            else:
                _refuse_kind(source, member.name, _TAR_KINDS.get(member.type), member.type)
            order.append(name)
        planned = {e.name: e for e in _plan(source, list(files), links, hardlinks)}

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

        yield [planned[name] for name in order if name in planned], read, span, sorted(folders)


def _refuse(source: Path, member: str, reason: str) -> None:
    what = "" if source.is_dir() else "member "
    raise UnsafeArchiveError(f"refusing {source}: {what}{member!r}: {reason}")


def warn_empty_folders(
    source: Path,
    folders: list[str],
    names: list[str],
    note: str = "",
    images: list[str] | None = None,
) -> None:
    """Name the `folders` with none of the files `names` below them: an empty class folder (its
    photos not copied yet) is no class, and the model would train without it, unsaid (a tar
    packed from a folder holds no folder entries: there it would vanish). Then, likewise, those
    with files but none of the `images` (default: the names with an image suffix) below them, a
    folder of videos, say. `note` ends each line."""
    holding = {parent for name in names for parent in parents(name)}
    empty = [f for f in folders if f not in holding]
    _warn_folders(source, _outermost(empty), f"no files, so no class or split comes of {{}}{note}")
    if images is None:
        images = [name for name in names if is_image_name(name)]
    with_images = {parent for name in images for parent in parents(name)}
    # A folder beside its parent's own photos (cats/videos/ beside cats/1.jpg) is no class
    # folder; only one whose parent holds no image itself may have been meant as a class.
    direct = {posixpath.dirname(name) for name in images}
    imageless = [f for f in folders if f in holding and f not in with_images]
    outer = [f for f in _outermost(imageless) if posixpath.dirname(f) not in direct]
    what = f"files but no image, so no class or split comes of {{}}{note} (images by their suffix"
    _warn_folders(source, outer, what + ": .jpg, .png, .heic, ...)")


def _outermost(folders: list[str]) -> list[str]:
    """Those of `folders` not below another of them: cats/ rather than cats/ and cats/2019/."""
    given = set(folders)
    return [f for f in folders if not any(p in given for p in parents(f))]


def _warn_folders(source: Path, folders: list[str], what: str) -> None:
    """One warning naming `folders` that hold `what` ({} there: "it" or "them")."""
    if folders:
        many = len(folders) > 1
        log.warning(
            "%s: %s %s %s: %s",
            source,
            counted(len(folders), "folder"),
            "hold" if many else "holds",
            what.format("them" if many else "it"),
            listed(sorted([f"{f}/" for f in folders]), most=5),
        )


def parents(name: str) -> list[str]:
    """The folders above posix path `name`, inside out: a/b/c.jpg -> a/b, a."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _warn_skipped(source: Path, folder_links: list[str], broken_links: list[str]) -> None:
    """Name every skipped link, those that lead to no file apart: each may be a photo lost."""
    if broken_links:
        log.warning(
            "%s: skipped %s that %s to no file (missing, a loop of links, or no regular file):"
            " %s. Copy the photos themselves in their place",
            source,
            counted(len(broken_links), "link"),
            "lead" if len(broken_links) > 1 else "leads",
            listed(sorted(broken_links)),
        )
    if folder_links:
        log.warning(
            "%s: skipped %s (not followed: they could loop): %s; copy such a folder in"
            " (`cp -rL`) if it holds photos to train on",
            source,
            counted(len(folder_links), "link to a folder", "links to folders"),
            listed(sorted(folder_links)),
        )


def _warn_hidden_folders(source: Path, left_out: list[str]) -> None:
    """Name the hidden folders (`.secret/`) whose images were left out with the hidden files: a
    folder of photos hidden by its name, not a Mac's `._IMG_1.jpg` or a system folder's."""
    counts: dict[str, int] = {}
    for name in left_out:
        parts = name.split("/")
        dot = next((i for i, p in enumerate(parts[:-1]) if p.startswith(".")), None)
        if dot is None or not is_image_name(name) or parts[-1].startswith("."):
            continue
        folder = "/".join(parts[: dot + 1]) + "/"
        counts[folder] = counts.get(folder, 0) + 1
    if counts:
        log.warning(
            "%s: left out %s in hidden folders (a name starting with '.'): %s; rename a folder"
            " without its dot if it holds photos to train on",
            source,
            counted(sum(counts.values()), "image"),
            listed([f"{f} ({n})" for f, n in sorted(counts.items())]),
        )


_KINDS = {
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}
_TAR_KINDS = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def _refuse_kind(source: Path, member: str, fmt: int | None, raw_type: object = None) -> None:
    """Refuse a device, fifo or other special archive member (`fmt`: its stat file type): an
    extractor would create it, unlike a folder's, which is skipped."""
    what = _KINDS.get(fmt, f"file type {oct(fmt)}") if fmt is not None else f"type {raw_type!r}"
    _refuse(
        source,
        member,
        f"{what} entries are not allowed (an archive of a folder that held one): re-create the"
        " archive without it, or unpack it and point data.source at the folder, where such"
        " entries are skipped",
    )


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or bool(_DRIVE.match(path))


def _clean_name(source: Path, raw: str) -> str:
    """Turn a member name into a clean posix relative path, refusing absolute and `..` names.

    Backslashes count as separators: zip tools on Windows write them, and an extractor there
    would honour them.
    """
    if _is_absolute(raw):
        _refuse(source, raw, "absolute path")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        _refuse(source, raw, "'..' component leads outside the archive")
    return "/".join(parts)


def _check_utf8(source: Path, name: str) -> None:
    """Refuse a name that is not UTF-8, which Python hands over with its bytes escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        raise UndecodableNameError(
            f"{source}: the name {raw!r} is not UTF-8: it was written on a system with another"
            " code page (GBK on a Chinese Windows, Shift-JIS on a Japanese one). Convert the"
            " names to UTF-8 (a folder's: convmv -f GBK -t UTF-8 -r --notest FOLDER) or rename"
            " that file or folder"
        ) from None


def _check_unique(source: Path, raw: str, name: str, seen: set[str]) -> None:
    # A repeated name makes extraction order-dependent (a file replaced by a link, say).
    if name and name in seen:
        _refuse(source, raw, "appears more than once, which makes the archive ambiguous")
    seen.add(name)


def _resolve(path: str, links: Mapping[str, str]) -> str | None:
    """Resolve `path` through the archive's symlinks as an extractor's OS would; None if it
    leaves the archive root. `links` maps a symlink's clean name to its raw target."""
    done: list[str] = []
    pending = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        here = "/".join([*done, part])
        if here not in links:
            done.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            raise _LinkLoop(here)
        target = links[here]
        if _is_absolute(target):
            return None
        # A symlink's target is relative to the folder holding the link, i.e. `done`.
        pending = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")] + pending
    return "/".join(done)


def _plan(
    source: Path, files: list[str], links: Mapping[str, str], hardlinks: Mapping[str, str]
) -> list[_Entry]:
    """Check every member's path and link target; return the files to yield (links followed).
    A link that loops, or leads to no file inside, is skipped as in a folder: an extractor
    could not make a file of it either, so nothing escapes through it."""
    file_set = set(files)
    entries: list[_Entry] = []
    folder_links: list[str] = []
    broken_links: list[str] = []
    folders: set[str] | None = None  # every file's parent folders, made when first needed
    for name in [*files, *links, *hardlinks]:
        try:
            target = _check_member(source, name, links, hardlinks)
        except _LinkLoop:
            broken_links.append(name)
            continue
        if target in file_set:
            entries.append(_Entry(name, target))
            continue
        if folders is None:
            folders = {parent for file in files for parent in parents(file)}
        (folder_links if target in folders or not target else broken_links).append(name)
    _warn_skipped(source, folder_links, broken_links)
    return entries


def _check_member(
    source: Path, name: str, links: Mapping[str, str], hardlinks: Mapping[str, str]
) -> str:
    """Refuse `name` if it or its link target lands outside the root; return what it reads."""
    # The member itself is created in its parent folder, which may pass through links (a clean
    # name's folder cannot leave the root when there are none: the common case, kept fast).
    if links and _resolve(posixpath.dirname(name), links) is None:
        _refuse(source, name, "its folder is a link that points outside the archive")
    if name in links:
        raw = links[name]
        joined = posixpath.join(posixpath.dirname(name), raw.replace("\\", "/"))
        target = None if _is_absolute(raw) else _resolve(joined, links)
        if target is None:
            _refuse(source, name, f"symlink to {raw!r} points outside the archive")
    elif name in hardlinks:
        # A hardlink's target is named from the archive root, not from the link's folder.
        raw = hardlinks[name]
        target = None if _is_absolute(raw) else _resolve(raw, links)
        if target is None:
            _refuse(source, name, f"hardlink to {raw!r} points outside the archive")
    else:
        target = name
    assert target is not None  # _refuse always raises
    return target


def _check_outside_link(
    root: Path, rel: str, real: Path, dvc_cache: Callable[[], Path | None]
) -> None:
    """Refuse link `rel`, whose target `real` is outside folder `root`, unless it leads into the
    DVC cache of the project holding `root`: a folder tracked by DVC with `cache.type symlink`
    is links into that cache, the photos themselves. A file elsewhere merely named like a cache
    file (a copy of a private file, another project's cache) would be packed into data/raw."""
    fix = "copy what it points to into the folder instead (cp -rL follows links)"
    link = os.readlink(root / rel)
    if not is_dvc_cache_file(real):
        _refuse(root, rel, f"symlink to {link!r} points outside the folder: {fix}")
    cache = dvc_cache()
    if cache is not None and real.is_relative_to(cache):
        return
    where = (
        f"outside the DVC cache of the project holding the folder ({cache.parents[1]})"
        if cache is not None
        else "the folder is in no DVC project"
    )
    _refuse(root, rel, f"symlink to {link!r} is named like a DVC cache file, but {where}: {fix}")


@dataclass
class _Listing:
    """A folder's files, folders, and what cannot be packed: links to no file and special files
    (named pipes, sockets, devices), which are skipped, never opened (a pipe would block)."""

    entries: list[_Entry] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    folder_links: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)  # missing, looping or special target
    specials: list[str] = field(default_factory=list)

    def leave_out(self, hidden: Callable[[str], bool]) -> list[str]:
        """Drop what `hidden` names; the names of the files dropped."""
        for names in (self.folders, self.folder_links, self.broken_links, self.specials):
            names[:] = [n for n in names if not hidden(n)]
        kept, left = [], []
        for entry in self.entries:
            (left if hidden(entry.name) else kept).append(entry)
        self.entries = kept
        return [e.name for e in left]

    def warn(self, source: Path) -> None:
        _warn_skipped(source, self.folder_links, self.broken_links)
        if self.specials:
            log.warning(
                "%s: skipped %s that %s not a regular file (a named pipe, socket or device),"
                " never opened: %s. Copy the photos themselves into the folder if these stood"
                " for any",
                source,
                counted(len(self.specials), "entry", "entries"),
                "are" if len(self.specials) > 1 else "is",
                listed(sorted(self.specials)),
            )


def _dir_entries(root: Path) -> _Listing:
    """Regular files under folder `root` (already resolved), sorted by relative posix path, the
    relative paths of the folders below it, sorted, and what was skipped."""
    found = _Listing()

    def fail(e: OSError) -> None:
        raise e  # os.walk would otherwise skip an unreadable folder silently

    dvc_cache = functools.cache(lambda: fsutil.dvc_cache_of(root))  # asked of outside links

    for folder, dirnames, filenames in os.walk(root, onerror=fail):
        here = Path(folder)
        for name in [*dirnames, *filenames]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            _check_utf8(root, rel)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                real = Path(os.path.realpath(path))
                if real.is_relative_to(root):
                    target = real.relative_to(root).as_posix()
                else:
                    target = str(real)
                    if real.is_file():  # a folder or nothing is skipped below, never read
                        _check_outside_link(root, rel, real, dvc_cache)
                if real.is_file():
                    found.entries.append(_Entry(rel, target))
                elif real.is_dir():
                    found.folder_links.append(rel)  # following could loop
                else:
                    found.broken_links.append(rel)
            elif stat.S_ISREG(st.st_mode):
                found.entries.append(_Entry(rel, rel))
            elif stat.S_ISDIR(st.st_mode):
                found.folders.append(rel)
            else:
                found.specials.append(rel)
    found.entries.sort(key=lambda e: e.name)
    found.folders.sort()
    return found
