"""Which members of an archive or folder may be read: names checked (no absolute paths, `..`,
duplicates, devices or undecodable bytes), links resolved inside the root or skipped, and the
warnings naming what was left out. `archive` lists and reads the members these checks pass.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from visionpipe import fsutil
from visionpipe.fsutil import is_dvc_cache_file
from visionpipe.images import icloud_placeholder, is_image_name
from visionpipe.names import counted, listed

log = logging.getLogger(__name__)

_MAX_LINK_HOPS = 40  # as Linux's ELOOP limit: a longer chain of links is a loop
_DRIVE = re.compile(r"^[A-Za-z]:")  # Windows drive forms: C:\x, C:/x, C:x


class UnsafeArchiveError(ValueError):
    """An archive or folder member could escape the archive root, or is not a plain file."""


class UndecodableNameError(ValueError):
    """A file name that is not UTF-8, which no class name, report or split record can hold."""


class _LinkLoop(Exception):
    """Raised by `_resolve` with the name of the link where a chain of links loops."""


@dataclass(frozen=True)
class Entry:
    """One listed file: its name in the listing and the member whose bytes it holds."""

    name: str
    target: str  # the name itself for a regular file; the resolved file for a followed link


def refuse(source: Path, member: str, reason: str) -> None:
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
    folder of videos, say. `note` ends the first line."""
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
    # `note` is not theirs: their files are listed (packed empty, in a folder source's tar).
    what = "files but no image, so no class or split comes of {} (images by their suffix"
    _warn_folders(source, outer, what + ": .jpg, .png, .heic, ...)")
    _warn_label_folders(source, outer, with_images)


def _warn_label_folders(source: Path, imageless: list[str], with_images: set[str]) -> None:
    """Say what comes of the PyTorch tutorial's layout, ants_image/ of photos beside ants_label/
    of one .txt label each: the classes are the folders' names, ants_image, and no label file
    is read."""
    folders = {f.lower(): f for f in with_images}
    pairs = sorted(  # (images folder, labels folder, class): ants_Images/ beside ants_labels/
        (folders[i], f, posixpath.basename(m[1]))
        for f in imageless
        if (m := re.fullmatch(r"(.+)_labels?", f, re.IGNORECASE))
        for i in (f"{m[1]}{end}".lower() for end in ("_image", "_images", "_img", "_imgs"))
        if i in folders
    )
    if not pairs:
        return
    images = [i for i, _, _ in pairs]
    named = {posixpath.basename(i): c for i, _, c in pairs}  # train/ and val/ have one each
    names, classes = list(named), list(named.values())
    log.warning(
        "%s: %s beside %s, the layout of a tutorial's own Dataset class: here a class is a"
        " folder of photos named as the class (these would make the classes %s), and no label"
        " file is read. Rename each %s so the classes are %s; the _label folders can go",
        source,
        listed([f"{i}/" for i in images]),
        listed([f"{f}/" for _, f, _ in pairs]),
        listed(names),
        listed([f"{n}/ to {c}/" for n, c in zip(names, classes, strict=True)]),
        listed(classes),
    )


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


def warn_icloud_placeholders(source: Path, left_out: list[str]) -> None:
    """Name the photos of `source` (a folder, or an archive of one) that iCloud Drive holds
    online only: their placeholders are hidden files, left out, and a class folder of them
    alone would be said to hold no files."""
    stubs = [name for name in left_out if icloud_placeholder(name)]
    if stubs:
        suffix = source.name.lower()
        again = (
            " and zip the folder again"
            if suffix.endswith(".zip")
            else " and pack the folder again"
            if suffix.endswith((".tar", ".tar.gz", ".tgz"))
            else ""
        )
        log.warning(
            "%s: left out %s, iCloud Drive's placeholders of photos not downloaded (%s, of %s):"
            f" download them (Finder's Download Now on the folder){again},"
            " then `uv run dvc repro -f -s download` (DVC does not watch the source)",
            source,
            counted(len(stubs), "file"),
            listed(stubs, 3),
            listed(sorted({posixpath.dirname(s) + "/" for s in stubs})),
        )


def warn_hidden_folders(source: Path, left_out: list[str]) -> None:
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
TAR_KINDS = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def refuse_kind(source: Path, member: str, fmt: int | None, raw_type: object = None) -> None:
    """Refuse a device, fifo or other special archive member (`fmt`: its stat file type): an
    extractor would create it, unlike a folder's, which is skipped."""
    what = _KINDS.get(fmt, f"file type {oct(fmt)}") if fmt is not None else f"type {raw_type!r}"
    refuse(
        source,
        member,
        f"{what} entries are not allowed (an archive of a folder that held one): re-create the"
        " archive without it, or unpack it and point data.source at the folder, where such"
        " entries are skipped",
    )


def _is_absolute(path: str, windows: bool = True) -> bool:
    return path.startswith(("/", "\\") if windows else "/") or bool(_DRIVE.match(path))


def clean_name(source: Path, raw: str, windows: bool = True) -> str:
    """Turn a member name into a clean posix relative path, refusing absolute and `..` names.

    `windows`: backslashes count as separators, as in a zip written on Windows: zip tools there
    write them, and an extractor there would honour them. In a tar (the download stage's own of
    a folder included), or a zip written on Unix, a backslash is a letter of the name, as on
    Linux: a class folder `dog\\puppies` is not `dog`'s subfolder.
    """
    if _is_absolute(raw, windows):
        refuse(source, raw, "absolute path")
    parts = [p for p in (raw.replace("\\", "/") if windows else raw).split("/")]
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts:
        refuse(source, raw, "'..' component leads outside the archive")
    return "/".join(parts)


def check_utf8(source: Path, name: str) -> None:
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


def check_unique(source: Path, raw: str, name: str, seen: set[str]) -> None:
    # A repeated name makes extraction order-dependent (a file replaced by a link, say).
    if name and name in seen:
        refuse(source, raw, "appears more than once, which makes the archive ambiguous")
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


def plan_entries(
    source: Path, files: list[str], links: Mapping[str, str], hardlinks: Mapping[str, str]
) -> list[Entry]:
    """Check every member's path and link target; return the files to yield (links followed).
    A link that loops, or leads to no file inside, is skipped as in a folder: an extractor
    could not make a file of it either, so nothing escapes through it."""
    file_set = set(files)
    entries: list[Entry] = []
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
            entries.append(Entry(name, target))
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
        refuse(source, name, "its folder is a link that points outside the archive")
    if name in links:
        raw = links[name]
        joined = posixpath.join(posixpath.dirname(name), raw.replace("\\", "/"))
        target = None if _is_absolute(raw) else _resolve(joined, links)
        if target is None:
            refuse(source, name, f"symlink to {raw!r} points outside the archive")
    elif name in hardlinks:
        # A hardlink's target is named from the archive root, not from the link's folder.
        raw = hardlinks[name]
        target = None if _is_absolute(raw) else _resolve(raw, links)
        if target is None:
            refuse(source, name, f"hardlink to {raw!r} points outside the archive")
    else:
        target = name
    assert target is not None  # refuse always raises
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
        refuse(root, rel, f"symlink to {link!r} points outside the folder: {fix}")
    cache = dvc_cache()
    if cache is not None and real.is_relative_to(cache):
        return
    where = (
        f"outside the DVC cache of the project holding the folder ({cache.parents[1]})"
        if cache is not None
        else "the folder is in no DVC project"
    )
    refuse(root, rel, f"symlink to {link!r} is named like a DVC cache file, but {where}: {fix}")


@dataclass
class _Listing:
    """A folder's files, folders, and what cannot be packed: links to no file and special files
    (named pipes, sockets, devices), which are skipped, never opened (a pipe would block)."""

    entries: list[Entry] = field(default_factory=list)
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


def dir_entries(root: Path) -> _Listing:
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
            check_utf8(root, rel)
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
                    found.entries.append(Entry(rel, target))
                elif real.is_dir():
                    found.folder_links.append(rel)  # following could loop
                else:
                    found.broken_links.append(rel)
            elif stat.S_ISREG(st.st_mode):
                found.entries.append(Entry(rel, rel))
            elif stat.S_ISDIR(st.st_mode):
                found.folders.append(rel)
            else:
                found.specials.append(rel)
    found.entries.sort(key=lambda e: e.name)
    found.folders.sort()
    return found
