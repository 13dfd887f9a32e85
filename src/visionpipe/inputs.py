"""The image files `visionpipe predict` is given: files, folders (searched recursively) and
globs, expanded to the photos preprocess would read, each unusable one named with its reason."""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import logging
import os
import posixpath
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TypeVar

from visionpipe import fsutil, paths
from visionpipe.images import (
    DICOM_NOT_READ,
    dicom_by_bytes,
    icloud_placeholder,
    is_dicom_name,
    is_hidden,
    is_image_name,
)
from visionpipe.names import counted, listed

log = logging.getLogger(__name__)

GLOB_CHARS = frozenset("*?[")
SYSTEM_FILE = "a system file (Explorer's, Finder's or a NAS's), no photo"
SYSTEM_FOLDER = "a system folder (Explorer's, Finder's or a NAS's) that holds no image files"

T = TypeVar("T")


@dataclass
class Inputs:
    files: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file or spec, why unusable)
    # file -> the folder it was found below: a folder named, or a glob's leading folder
    tops: dict[str, str] = field(default_factory=dict)
    # Per spec, where its files and errors start: the entries go back into the order given.
    starts: list[tuple[int, int]] = field(default_factory=list)
    # System files named one by one (a shell's `*` in a folder from Windows or a Mac's zip):
    # passed over, as a folder or a glob of ours passes over them.
    system: list[str] = field(default_factory=list)

    def in_order(self, for_files: list[T], for_errors: list[T]) -> list[T]:
        """Entries made for `files` and for `errors` (one each, in their order), spec by spec
        as the specs were given, a spec's unusable files after its usable ones."""
        ends = [*self.starts[1:], (len(self.files), len(self.errors))][: len(self.starts)]
        return [
            entry
            for (f0, e0), (f1, e1) in zip(self.starts, ends, strict=True)
            for entry in [*for_files[f0:f1], *for_errors[e0:e1]]
        ]


def collect_inputs(specs: list[str], seen: dict[Path, str] | None = None) -> Inputs:
    """Expand files, folders (recursively) and globs; unusable specs become error entries. A
    file (or an unusable spec) that several specs name (a folder and a photo in it) comes once,
    where first named; `seen` carries what earlier calls named (the stage's samples)."""
    inputs = Inputs()
    seen = {} if seen is None else seen  # each name's key: the name it was first given
    repeated: dict[str, None] = {}  # first names, in the order first repeated
    for spec in specs:
        first, first_error = len(inputs.files), len(inputs.errors)
        inputs.starts.append((first, first_error))
        _add_spec(inputs, spec)
        added, inputs.files[first:] = inputs.files[first:], []
        inputs.files += _first_named(added, str, seen, repeated)
        wrong, inputs.errors[first_error:] = inputs.errors[first_error:], []
        inputs.errors += _first_named(wrong, lambda error: error[0], seen, repeated)
    if inputs.system and not inputs.files and not inputs.errors:  # nothing else was named
        _named_alone(inputs, seen, repeated)
    if repeated:
        log.warning(
            "%s named more than once, each predicted once: %s",
            counted(len(repeated), "file"),
            listed(list(repeated)),
        )
    if inputs.system:  # among other inputs: the shell's `*` named them
        log.warning(
            "passed over %s among the inputs: %s (Explorer's, Finder's or a NAS's; a system"
            " folder named alone is predicted)",
            counted(len(inputs.system), "system file"),
            listed(inputs.system, 5),
        )
    return inputs


def _named_alone(inputs: Inputs, seen: dict[Path, str], repeated: dict[str, None]) -> None:
    """System files and folders named with nothing else: no shell's `*` passing them on, but
    asked for. A folder's photos are predicted (`#recycle`, a NAS's bin), each once; a file is
    an error."""
    system, inputs.system, inputs.starts = inputs.system, [], []
    for spec in system:
        first, named = len(inputs.files), len(inputs.errors)
        inputs.starts.append((first, named))
        path = Path(spec)
        if not path.is_dir():
            inputs.errors.append((spec, SYSTEM_FILE))
        elif not _add_folder(inputs, path, spec, spec) and len(inputs.errors) == named:
            inputs.errors.append((spec, SYSTEM_FOLDER))
        added, inputs.files[first:] = inputs.files[first:], []
        inputs.files += _first_named(added, str, seen, repeated)
        wrong, inputs.errors[named:] = inputs.errors[named:], []
        inputs.errors += _first_named(wrong, lambda error: error[0], seen, repeated)


def _first_named(
    entries: list[T], name: Callable[[T], str], seen: dict[Path, str], repeated: dict[str, None]
) -> list[T]:
    """The entries whose file was not named before, noting the others in `repeated`. A file is
    known by its folder's real path and its own name: `./a.jpg` is `a.jpg`, and so is
    `photos/../a.jpg` and a photo reached through a link to its folder; a link to a photo is a
    name of its own."""
    kept = []
    real: dict[Path, str] = {}  # a folder's real path, resolved once for all its photos
    for entry in entries:
        path = Path(name(entry))
        if path.parent not in real:
            real[path.parent] = os.path.realpath(path.parent)
        key = Path(real[path.parent], path.name)
        if key in seen:
            repeated[seen[key]] = None
        else:
            kept.append(entry)
            seen[key] = str(path)
    return kept


def _add_spec(inputs: Inputs, spec: str) -> None:
    # A Mac's decomposed `café` typed composed; a glob's folders before its pattern.
    spec = fsutil.as_on_disk(spec)
    path = Path(spec)
    if not spec:  # as a Path it is ".": an unset shell variable would predict the folder
        inputs.errors.append((spec, "an empty name: give a file, folder or glob"))
    elif any(ch in spec for ch in GLOB_CHARS) and not path.exists() and not _win32(spec):
        _add_glob(inputs, spec)
    elif path.is_dir() and is_hidden(path.name) and not path.name.startswith("."):
        inputs.system.append(spec)  # __MACOSX, a NAS's @eaDir of thumbnails, #recycle
    elif path.is_dir():
        named = len(inputs.errors)
        # A folder of broken photo links only: each is named already.
        if not _add_folder(inputs, path, spec, spec) and len(inputs.errors) == named:
            inputs.errors.append((spec, "folder holds no image files" + _placeholders(path)))
    elif path.is_file() and (photo := icloud_placeholder(path.name)) is not None:
        why = f"iCloud Drive's placeholder of {photo}, not downloaded: download it (Finder's"
        inputs.errors.append((spec, f"{why} Download Now) and give the photo"))
    elif _system(path):
        inputs.system.append(spec)
    elif path.is_file():
        inputs.files.append(path)
    elif path.is_symlink():  # the link itself exists: "no such file" would puzzle
        inputs.errors.append((spec, _dangling(path)))
    elif path.exists():
        inputs.errors.append((spec, _not_regular(path)))
    else:
        inputs.errors.append((spec, _missing(spec)))


def _system(path: Path) -> bool:
    """A system file named one by one (`Thumbs.db`, `.DS_Store`, a Mac's `._IMG_1.jpg`), which a
    folder's walk passes over; a hidden photo named so (`.IMG_1.jpg`) is asked for."""
    name = path.name
    if not is_hidden(name) or not path.is_file():
        return False
    return name.startswith("._") or not is_image_name(name)


def _placeholders(folder: Path) -> str:
    """What a folder of no photos holds instead where that is iCloud Drive's placeholders of
    photos kept online (hidden `.IMG_1.HEIC.icloud` files, as `cp` copies them): how many."""
    stubs = sum(
        icloud_placeholder(name) is not None for _, _, names in os.walk(folder) for name in names
    )
    if not stubs:
        return ""
    return (
        f", but {counted(stubs, 'iCloud Drive placeholder')} of photos not downloaded: download"
        " them (Finder's Download Now on the folder) and copy the folder again"
    )


def _win32(spec: str) -> bool:
    """A Windows share's path (\\\\nas\\photos) or Win32's long form (\\\\?\\C:\\x, whose '?' is no
    glob's)."""
    return spec.startswith("\\\\")


def _missing(spec: str) -> str:
    """Why `spec` names nothing: a Windows habit (`.\\cats\\a.jpg`) or `-` for stdin is named
    with its fix."""
    if spec == "-":  # stdin to many tools; here a file's name is its result's key
        return "standard input is not read for images: save the image to a file and name that"
    slashed = spec.replace("\\", "/")
    if slashed != spec and Path(slashed).exists():
        return f"no such file or directory; this system separates folders with /: {slashed}"
    if (re.match(r"[A-Za-z]:[\\/]", spec) or _win32(spec)) and (meant := paths.meant_here(spec)):
        return f"no such file or directory: a Windows path; here, write {meant}"
    # A space a table shows as any other: an input method's full-width one, a no-break one.
    odd = [c for c in spec if _odd_space(c)]
    if odd:
        plain = _plain_spaces(spec)
        there = f", and {plain!r} is there" if Path(plain).exists() else ""
        return f"no such file or directory; the name holds {_codes(odd)}, not a plain space{there}"
    # Or the file's name holds one where a plain space was typed: macOS names a screenshot
    # "... at 10.00.00\u202fAM.png".
    folder, name = os.path.split(spec)
    if " " not in name:  # nothing to look for: no listing (a folder of 100,000 photos)
        return "no such file or directory"
    with contextlib.suppress(OSError):
        found = next((n for n in os.listdir(folder or ".") if _plain_spaces(n) == name), None)
        if found is not None:
            spaces = _codes([c for c in found if _odd_space(c)])
            return f"no such file or directory; {found!r} is there, with {spaces} for a space"
    return "no such file or directory"


# Invisible, and no space at all (not the joiners ZWNJ and ZWJ, parts of Persian words and
# of emoji).
ZERO_WIDTH = frozenset("\u200b\u2060\ufeff")


def _odd_space(c: str) -> bool:
    return c in ZERO_WIDTH or (unicodedata.category(c) == "Zs" and c != " ")


def _plain_spaces(name: str) -> str:
    """`name` with its odd spaces plain and its zero-width ones gone."""
    return "".join("" if c in ZERO_WIDTH else " " if _odd_space(c) else c for c in name)


def _codes(chars: list[str]) -> str:
    return ", ".join(dict.fromkeys(f"U+{ord(c):04X} ({unicodedata.name(c, '?')})" for c in chars))


def _add_glob(inputs: Inputs, spec: str) -> None:
    """The files a glob matches, and the photos in the folders it matches, each once (`**`
    matches a folder and the files in it): what the shell's expansion of the pattern gives."""
    top, matches = _glob(spec)
    named_before = len(inputs.errors)
    hits = sorted(Path(p) for p in matches)
    found = [p for p in hits if p.is_file()]
    photos = [p for p in hits if is_image_name(p.name)]
    inputs.errors += _broken_links(photos) + _odd_files(photos)
    inputs.tops.update({str(p): top for p in hits})
    walked = Inputs()
    for folder in _outermost(p for p in hits if p.is_dir()):
        # A link from one matched folder to another is inside the glob's folder: not followed.
        _add_folder(walked, folder, str(folder), top, inside=top)
    named = {str(p) for p in found}
    inputs.files += sorted([*found, *(p for p in walked.files if str(p) not in named)])
    named_wrong = {file for file, _ in inputs.errors}
    inputs.errors += [e for e in walked.errors if e[0] not in named_wrong]
    inputs.tops.update(walked.tops)
    # A glob of broken photo links only: each is named already.
    if not found and not walked.files and len(inputs.errors) == named_before:
        what = "no image files" if walked.tops else "no files"
        slashed = spec.replace("\\", "/")
        if slashed != spec and _glob(slashed)[1]:
            what += f"; this system separates folders with /: {slashed}"
        elif re.match(r"[A-Za-z]:[\\/]", spec) and (meant := paths.meant_here(spec)):
            what += f": a Windows path; here, write {meant}"
        inputs.errors.append((spec, f"glob matched {what}{_placeholders_of(spec)}"))
    elif found and (stubs := _placeholders_of(spec)):  # some photos here, some still online
        log.warning(
            "%s: %s%s", spec, counted(len(found), "photo"), stubs.replace(", but", " beside", 1)
        )


def _placeholders_of(spec: str) -> str:
    """Where a glob of photos (`IMG_*.HEIC`) matches iCloud Drive's placeholders of them
    instead (`.IMG_1.HEIC.icloud`, hidden): how many, and what to do."""
    head, tail = os.path.split(spec)
    # The folders the pattern's last part is in: as written, or those its own wildcards match
    # (`photos/**/IMG_*.HEIC`), a few hundred at most.
    wild = any(c in head for c in GLOB_CHARS)
    # `head/` matches folders alone: the cap counts no file.
    folders = (
        itertools.islice(glob.iglob(os.path.join(head, ""), recursive=True), 500)
        if wild
        else [head or "."]
    )
    stubs = []
    for folder in folders if tail else []:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        stubs += [n for n in names if fnmatchcase(n, f".{tail}.icloud") and icloud_placeholder(n)]
    if not stubs:
        return ""
    return (
        f", but {counted(len(stubs), 'iCloud Drive placeholder')} of photos not downloaded:"
        " download them (Finder's Download Now on the folder)"
    )


def _outermost(folders: Iterable[Path]) -> list[Path]:
    """`folders` (sorted: a folder's own come right after it) without those inside another."""
    kept: list[Path] = []
    for folder in folders:
        if not kept or not _within(str(folder), str(kept[-1])):
            kept.append(folder)
    return kept


def _add_folder(
    inputs: Inputs, folder: Path, spec: str, top: str, inside: str | None = None
) -> bool:
    """Add the photos below `folder` (and name its broken photo links); False if none.
    `inside`: the folder links are checked against (default `folder`), see `_below`."""
    below = [(p, p.relative_to(folder).as_posix()) for p in _below(folder, inside=inside)]
    every = [(p, rel) for p, rel in below if p.is_file()]
    found = [p for p, rel in every if _is_photo(rel)]
    left_out = [rel for _, rel in every if not _is_photo(rel)]
    _warn_left_out(spec, left_out)
    if found:  # a folder of placeholders alone is an error that counts them (`_placeholders`)
        _warn_placeholders(spec, left_out)
    # A photo's link whose target is gone (an unmounted drive) is no file: named, not passed
    # over, so that the count of predictions adds up; so is a pipe named like a photo.
    photos = [p for p, rel in below if _is_photo(rel)]
    inputs.errors += _broken_links(photos) + _odd_files(photos)
    inputs.files += found
    inputs.tops.update({str(p): top for p, _ in below})
    return bool(found)


def _glob(spec: str) -> tuple[str, list[str]]:
    """The longest leading folder of glob `spec` that exists as written (`.` or `/` when none),
    taken literally (the brackets of `Photos [2024]/*.jpg` name a folder, not a character
    class), and the matches, found by walking that folder as a folder argument is walked:
    links to folders outside it followed once, a link back into it or above it not (Python's
    `glob` follows those, and two links to `..` make its `**` repeat every photo billions of
    times). What the wildcards reach inside a system folder (Synology's `@eaDir/` thumbnails)
    is left out, as a folder argument leaves it."""
    cut = spec.rfind("/")
    while cut > 0 and not os.path.isdir(spec[:cut]):
        cut = spec.rfind("/", 0, cut)
    top = spec[:cut] if cut > 0 else "/" if cut == 0 else "."
    pattern = [part for part in spec[cut + 1 :].split("/") if part]
    depth = None if "**" in pattern else len(pattern)
    prefix = "" if cut < 0 else spec[: cut + 1]
    hits = []
    for path in _below(Path(top), depth):
        rel = path.relative_to(top).as_posix()
        if not is_hidden(rel) and _matches(rel.split("/"), pattern):
            hits.append(prefix + rel)
    return top, [hit for hit in hits if os.path.isdir(hit)] if spec.endswith("/") else hits


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Whether path `parts` match glob `pattern`'s parts, `**` standing for any number of
    folders, as in Python's recursive glob."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _below(folder: Path, depth: int | None = None, inside: str | None = None) -> list[Path]:
    """Every path below `folder` (down to `depth` levels; None: all) but in hidden and system
    folders, sorted, links to folders outside it (or outside `inside`) followed (a test set
    made of links to class folders, `cat -> /data/cats`), each once. A link to a folder inside
    it, to it or to a folder above it is not: the walk reaches those anyway, or would loop."""
    root = os.path.realpath(inside if inside is not None else folder)
    # Every folder walked, by its real path: one reached again (a real folder of a linked tree
    # that another link leads into too) is not walked twice.
    walked: set[str] = set()
    found: list[Path] = []
    for here, dirnames, filenames in os.walk(folder, followlinks=True):
        # Nothing in a hidden or system folder is a photo: `.git/`, `.venv/` and `.dvc/cache/`
        # under a project would make a `**` from its root walk for minutes.
        dirnames[:] = [name for name in dirnames if not is_hidden(name)]
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(here, name))
            link = os.path.islink(os.path.join(here, name))
            if real in walked or (link and (_within(real, root) or _within(root, real))):
                dirnames.remove(name)
            else:
                walked.add(real)
        found += [Path(here, name) for name in [*dirnames, *filenames]]
        if depth is not None and len(Path(here).relative_to(folder).parts) >= depth - 1:
            dirnames.clear()  # what they hold is deeper than asked
    return sorted(found)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_photo(rel: str) -> bool:
    """Whether a file at `rel` below a folder is an image preprocess would read too: not hidden
    (`._IMG_1.jpg`, the AppleDouble twin a Mac leaves on other disks, is no image) nor a NAS
    thumbnail."""
    return is_image_name(rel) and not is_hidden(rel)


def _warn_left_out(spec: str, left_out: list[str]) -> None:
    """Say how many files of a folder get no prediction, as preprocess lists what it leaves
    out: a phone's folder of 60 files that gives 40 predictions (its videos, .AAE edits) would
    otherwise leave the user counting. Hidden and system files (.DS_Store, NAS thumbnails) go
    without saying, as in preprocess's list: every folder a Mac has opened holds one."""
    names = [name for name in left_out if not is_hidden(name)]
    if not names:
        return
    log.warning(
        "%s: left out %d file%s not named as an image (%s): a photo needs its format's"
        " suffix (.jpg, .png, ...)%s",
        spec, len(names), "s" * (len(names) > 1), listed(names, 3),
        f"; {DICOM_NOT_READ}" if _dicom(spec, names) else "",
    )  # fmt: skip


def _dicom(folder: str, names: list[str]) -> bool:
    """Whether files left out of `folder` are DICOM scans: by name, or by the first bytes of
    those that may be (`may_be_dicom`), a few read at most."""
    if any(is_dicom_name(name) for name in names):
        return True
    return bool(dicom_by_bytes((name, os.path.join(folder, name)) for name in names))


def _warn_placeholders(spec: str, left_out: list[str]) -> None:
    """Name the photos of a folder that iCloud Drive keeps online only: their placeholders are
    hidden files (`.IMG_3.HEIC.icloud`), left out without a word with the other hidden ones."""
    photos = [
        posixpath.join(posixpath.dirname(name), photo)
        for name in left_out
        if (photo := icloud_placeholder(name)) is not None
    ]
    if photos:
        log.warning(
            "%s: %s not predicted, iCloud Drive's placeholders of photos not downloaded (%s):"
            " download them (Finder's Download Now on the folder) to predict them",
            spec,
            counted(len(photos), "photo"),
            listed(photos, 3),
        )


def _broken_links(paths: list[Path]) -> list[tuple[str, str]]:
    """An error entry for each of `paths` that is a symlink to no file (`_dangling`)."""
    return [(str(p), _dangling(p)) for p in paths if p.is_symlink() and not p.is_file()]


def _odd_files(paths: list[Path]) -> list[tuple[str, str]]:
    """An error entry for each of `paths` that exists as neither file, folder nor link: a named
    pipe or a device named like a photo, which reading would block on or misread."""
    odd = [p for p in paths if not p.is_symlink() and p.exists() and not p.is_file()]
    odd = [p for p in odd if not p.is_dir()]
    return [(str(p), _not_regular(p)) for p in odd]


def _not_regular(path: Path) -> str:
    mode = path.stat().st_mode
    kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket or device"
    return f"not a regular file but {kind}, which holds no image; give the photo's file"


def _dangling(link: Path) -> str:
    """Why a symlink that is no file or folder cannot be read: it loops, or its target is gone."""
    target = str(link.readlink())
    try:
        link.resolve(strict=True)
    except (RuntimeError, OSError) as exc:  # a loop: RuntimeError up to Python 3.12, then ELOOP
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return f"symlink to {target!r} loops back on itself"
        return f"broken symlink: {target!r} does not exist; fix or remove the link"
    return f"symlink to {target!r}, which is not a regular file"
