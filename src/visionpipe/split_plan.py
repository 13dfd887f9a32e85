"""Which image of an image folder goes to which split, decided before any image is decoded.

Two layouts are accepted (torchvision's ImageFolder names, under any single root folder):

- **split folders**: `train/<class>/<image>` plus `test/<class>/...` or `val/<class>/...` (images
  may sit in sub-folders of a class folder). The source's own held-out folder is the test split;
  validation is its `val/` when it has both `test/` and `val/`, else carved from train by a
  seeded permutation (`carve_val`). Split folders named otherwise (`Train/`, `training/`) are
  refused rather than taken for classes.
- **flat**: `<class>/<image>` (images may sit in sub-folders of a class folder). Each image's
  split follows from a hash of `data.seed` and its path below the root, so it depends on nothing
  else: adding photos never moves an earlier one between train, val and test, and every class is
  split at the same rates (`data.test_fraction`, then `data.val_fraction` of the rest).

Hidden files and folders (`.DS_Store`, `__MACOSX/` in zips made on a Mac, Synology's `@eaDir/`
thumbnails, recycle bins) are ignored, as are non-image files; both are listed in the preprocess
report.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from visionpipe.archive import ARCHIVE_SUFFIXES
from visionpipe.images import (
    DICOM_NOT_READ,
    IMAGE_SUFFIXES,
    is_dicom_name,
    is_hidden,
    is_image_name,
)
from visionpipe.names import listed, split_like
from visionpipe.paths import SPLITS

HELD_OUT_NAMES = ("test", "val")  # what split-folder layouts call their held-out folder
GUIDE = "see docs/datasets.md, 'Your own photos'"


class DatasetLayoutError(ValueError):
    """The source is neither CIFAR-10 python batches nor an image folder this module reads."""


class LayoutParamError(DatasetLayoutError):
    """A data.* param that does not fit the source's layout: the param is what to change."""


class Item(NamedTuple):
    """One image to decode: its name in the archive, its class index and its split."""

    name: str
    label: int
    split: str


@dataclass
class Plan:
    """Every image of the source with its class and split, in archive order."""

    classes: list[str]
    items: list[Item]
    layout: str  # "split folders", "flat" or "CIFAR-10 python batches"
    test_split_source: str  # the folder the test split came from, or "carved" for flat ones
    ignored: list[str] = field(default_factory=list)  # files that are not images of the layout
    warnings: list[str] = field(default_factory=list)  # about a layout read, but perhaps not meant

    def count(self, split: str) -> int:
        return sum(item.split == split for item in self.items)


# Archive names are clean posix paths (visionpipe.archive: no '.', '..' or empty parts), so
# plain string splits stand in for PurePosixPath: 5x faster over a listing of 100,000 files.


def _parts(name: str) -> list[str]:
    return name.split("/")


def plan_image_folder(
    names: Sequence[str], test_fraction: float | None, val_fraction: float, seed: int
) -> Plan:
    """The split of every image file in `names` (an archive's listing, in archive order).

    `test_fraction` None means the default: flat collections then hold out 0.2, and a source
    with its own test/ or val/ folder is accepted. A number is refused for such a source, whose
    test split is its own.
    """
    candidates = [n for n in names if is_image_name(n) and not is_hidden(n)]
    if not candidates:
        raise DatasetLayoutError(_no_images(names))
    root = _split_folders_root(candidates)
    if root is not None and test_fraction is not None:
        raise LayoutParamError(
            f"data.test_fraction={test_fraction} applies to flat collections "
            f"(<class>/<image>), but this source has its own held-out split next to "
            f"'{root + '/' if root else ''}train/': set data.test_fraction back to null"
        )
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    try:
        if root is not None:
            plan = _plan_split_folders(candidates, root, val_fraction, seed)
        else:
            plan = _plan_flat(candidates, fraction, val_fraction, seed)
    except DatasetLayoutError as exc:  # its class kept: a param's error stays one
        raise type(exc)(f"{exc}{_imageless(names, candidates)}") from None
    _refuse_lookalikes(plan.classes)
    _refuse_control_characters(plan.classes)
    kept = {item.name for item in plan.items}
    plan.ignored = [n for n in names if n not in kept]
    return plan


def _with_twins(unknown: Sequence[str], classes: Sequence[str]) -> str:
    """`unknown` listed, each named with the class of train/ it differs from only in case
    (`Cat (train/ has 'cat': rename one)`): a class name is matched exactly, as ImageFolder does."""
    folded = {c.casefold(): c for c in classes}
    return ", ".join(
        f"{c} (train/ has {folded[c.casefold()]!r}: rename one)" if c.casefold() in folded else c
        for c in unknown
    )


def _refuse_lookalikes(classes: Sequence[str]) -> None:
    """Refuse two class folders named alike but for Unicode normalization or spaces at the ends:
    `café` typed on Linux (é one code point) beside `café` from a Mac's zip (e and a combining
    accent), or `dogs` beside `dogs ` (a Mac keeps a trailing space), would be two classes that
    every report, plot and prediction shows by the same name."""
    seen: dict[str, str] = {}
    for cls in classes:
        first = seen.setdefault(unicodedata.normalize("NFC", cls).strip(), cls)
        if first != cls:
            nfc = unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", cls)
            how = (
                f"in two Unicode forms ({first!a} and {cls!a}; a Mac writes accents decomposed)"
                if nfc
                else f"but for spaces at the ends ({first!a} and {cls!a})"
            )
            raise DatasetLayoutError(
                f"the class folders {first!r} and {cls!r} are one name {how}, which"
                " would train two classes shown alike: move the images of one folder into the"
                " other"
            )


def _refuse_control_characters(classes: Sequence[str]) -> None:
    """Refuse a class folder whose name holds a control character (a newline, a tab): the
    class name goes into every log line, table, CSV, plot label and the ONNX model's metadata,
    where it would break a line in two or show as nothing."""
    for cls in classes:
        if any(unicodedata.category(c) == "Cc" for c in cls):
            raise DatasetLayoutError(
                f"the class folder {cls!r} has a control character in its name, which every"
                " report, plot and prediction of the class would show broken: rename the folder"
            )


def _imageless(names: Sequence[str], images: Sequence[str]) -> str:
    """Name the folders holding files but no image, for a layout error: a class of scans in a
    format not read (DICOM) leaves one class folder. Said with the error, as a folder source's
    download stage, which warned of them, is skipped on a re-run."""
    holding = {"/".join(_parts(n)[:i]) for n in images for i in range(1, len(_parts(n)))}
    found: dict[str, list[str]] = {}
    for name in names:
        parts = _parts(name)
        outer = next(
            (
                "/".join(parts[:i])
                for i in range(1, len(parts))
                if "/".join(parts[:i]) not in holding
            ),
            None,
        )
        if outer is not None and not is_hidden(name):
            found.setdefault(outer, []).append(parts[-1])
    if not found:
        return ""
    shown = "; ".join(
        f"'{folder}/' ({len(files)} file{'s' * (len(files) != 1)}: {listed(files, 2)})"
        for folder, files in list(found.items())[:3]
    )
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    dicom = any(is_dicom_name(f) for files in found.values() for f in files)
    return (
        f". Folders with files but no image (images by their suffix: .jpg, .png, ...): "
        f"{shown}{more}" + (f"; {DICOM_NOT_READ}" if dicom else "")
    )


def _no_images(names: Sequence[str]) -> str:
    """Say what a source without images holds: a zip of zips or of HEIC photos, say."""
    if not names:
        return f"the source holds no files, {GUIDE}"
    shown = listed(names, 5)
    message = f"no image files found among the {len(names)} files of the source ({shown})"
    if any(n.lower().endswith(ARCHIVE_SUFFIXES) for n in names):
        message += "; archives inside the source are not opened: unpack them into it"
    if any(map(is_dicom_name, names)):
        message += f"; {DICOM_NOT_READ}"
    return f"{message}. Images are {', '.join(sorted(IMAGE_SUFFIXES))} files, {GUIDE}"


DEFAULT_TEST_FRACTION = 0.2  # fastai's valid_pct default; what a flat collection holds out


def _split_folders_root(names: Sequence[str]) -> str | None:
    """The folder holding `train/<class>/<image>` ("" for the top), None for a flat collection."""
    roots: set[str] = set()
    for name in names:
        parts = _parts(name)
        # train/<class>/<image>, or deeper (train/<class>/indoor/<image>): the class's sub-folders
        # belong to it, as in a flat collection.
        at = next((i for i, part in enumerate(parts[:-2]) if part == "train"), None)
        if at is not None:
            roots.add("/".join(parts[:at]))
    if not roots:
        return None
    if len(roots) > 1:
        found = ", ".join(sorted(r or "." for r in roots))
        raise DatasetLayoutError(
            f"found 'train/<class>/<image>' trees under several folders ({found}); keep one "
            f"dataset per source, {GUIDE}"
        )
    return roots.pop()


def _plan_split_folders(names: Sequence[str], root: str, val_fraction: float, seed: int) -> Plan:
    prefix = f"{root}/" if root else ""
    # (name, folder, class) of every <folder>/<class>/.../<image> below the root, in archive order.
    found = [
        (name, rel[0], rel[1])
        for name in names
        if name.startswith(prefix) and len(rel := name[len(prefix) :].split("/")) >= 3
    ]
    folders = {folder for _, folder, _ in found}
    _refuse_misnamed_splits(folders, prefix)
    held_out = next((s for s in HELD_OUT_NAMES if s in folders), None)
    if held_out is None:
        raise DatasetLayoutError(_no_held_out(names, prefix))
    # With test/ and val/ both present, val/ is the validation split as it is, as test/ is test.
    own_val = held_out == "test" and "val" in folders
    classes = sorted({cls for _, folder, cls in found if folder == "train"})  # ImageFolder's rule
    for other in (held_out, "val") if own_val else (held_out,):
        unknown = sorted({cls for _, folder, cls in found if folder == other} - set(classes))
        if unknown:
            raise DatasetLayoutError(
                f"{other}/ has classes not in train/: {_with_twins(unknown, classes)}"
                f" (train/'s are {listed(classes)})"
            )
    if len(classes) == 1:  # a model of one class answers it to every photo, "100% accurate"
        raise DatasetLayoutError(
            f"found only one class folder in {prefix}train/, '{classes[0]}': a model needs two"
            f" or more; put each class's images in a folder named after it, in train/ and in"
            f" {held_out}/, {GUIDE}"
        )
    depth = len(_parts(prefix))  # the class's index in a name's parts: prefix ends with "/"
    in_train = [(name, _parts(name)) for name, folder, _ in found if folder == "train"]
    # A segmentation set's train/images/ + train/masks/, as a flat collection's images/ + masks/.
    _refuse_data_folders(in_train, depth, classes)
    index = {c: i for i, c in enumerate(classes)}
    n_train = sum(folder == "train" for _, folder, _ in found)
    in_val = iter(carve_val(n_train, 0.0 if own_val else val_fraction, seed).tolist())
    # In archive order (the order the files are read in): the k-th train image met takes the
    # k-th draw of the val carve.
    split = {held_out: "test", "val": "val"} if own_val else {held_out: "test"}
    items = [
        Item(name, index[cls], split.get(folder) or ("val" if next(in_val) else "train"))
        for name, folder, cls in found
        if folder == "train" or folder in split
    ]
    # train/animals/cats/ beside train/birds/ trains one class animals, as in a flat collection.
    warnings = [f"{w}, in {held_out}/ too" for w in _folders_of_classes(in_train, depth)]
    return Plan(classes, items, "split folders", held_out, warnings=warnings)


def _no_held_out(names: Sequence[str], prefix: str) -> str:
    """Why `train/` below `prefix` has no held-out split next to it, and what to do."""
    # Kaggle's test/ holds unlabelled images (test/1.jpg): a held-out split without classes.
    loose = [n for n in names if n.startswith((f"{prefix}test/", f"{prefix}val/"))]
    # Images directly in folders beside train/ (car/1.jpg): a flat collection with a class
    # that is named train and has sub-folders of its own.
    below = [n[len(prefix) :].split("/") for n in names if n.startswith(prefix)]
    beside = sorted({r[0] for r in below if len(r) == 2 and r[0] != "train"})
    also = ""
    if loose:
        also = (
            f" ({len(loose)} unlabelled image{'s' * (len(loose) > 1)} lie outside any class"
            f" folder there, e.g. {loose[0]}: sort them into class folders, or move them out of"
            " the source)"
        )
    elif beside:
        also = (
            f"; or, if 'train' is a class beside {', '.join(beside[:3])}, rename its folder"
            " (trains/): a train/ folder holding sub-folders marks split folders"
        )
    if not also:  # its class folders alone are a collection the pipeline splits itself
        also = (
            f"; or point data.source at '{prefix}train/' itself (an archive of its contents),"
            " whose class folders the pipeline splits"
        )
    return (
        f"found '{prefix}train/' but no held-out split next to it: add a 'test/' or 'val/' "
        f"folder of class folders{also}, {GUIDE}"
    )


def _refuse_misnamed_splits(folders: set[str], prefix: str) -> None:
    """Refuse a split folder beside train/ under another name (`valid/` of Roboflow and Kaggle
    exports, `Val/`, `testing/`): read as neither split, its images would be left out of every
    split while validation is carved from train/ instead."""
    for folder in sorted(folders - set(SPLITS)):
        lower = folder.lower()
        if not split_like(folder):
            continue
        name = "val" if "val" in lower else "test" if "test" in lower else "train"
        fix = "merge its class folders into" if name in folders else "rename it to"
        # A Keras user's validation/ beside train/ alone: as val/, it is scored as the test.
        held_out = (
            " (beside train/ alone, that one held-out folder is the test split, and validation"
            " is carved from train/)"
            if name == "val" and not folders & {"val", "test"} - {folder}
            else ""
        )
        raise DatasetLayoutError(
            f"found '{prefix}{folder}/' beside '{prefix}train/': split folders are named "
            f"'train/', 'val/' and 'test/' (lower case), and '{folder}/' is none of them, so "
            f"its images would be used by no split; {fix} '{name}/'{held_out} (or move it out"
            f" of the source), {GUIDE}"
        )


def carve_val(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which of `n` training images go to validation: a seeded permutation's first share.

    Any other rule would move images between train and val in every dataset already split,
    and change its data/processed.
    """
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= n:
        raise LayoutParamError(
            f"data.val_fraction={val_fraction} leaves no training images out of {n}; lower it"
        )
    in_val = np.zeros(n, dtype=bool)
    in_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return in_val


def common_folder(names: Sequence[str]) -> list[str]:
    """The deepest folder holding every one of `names` (as path parts; [] for the top)."""
    common = _parts(names[0])[:-1]
    for name in names[1:]:
        folder = _parts(name)[:-1]
        while folder[: len(common)] != common:
            common = common[:-1]
    return common


def _flat_root(names: Sequence[str]) -> list[str]:
    """The deepest folder holding every image (as path parts): its sub-folders are the classes."""
    common = common_folder(names)  # plan_image_folder refused a source without images
    depth = len(common)
    classes = {parts[depth] for parts in map(_parts, names) if len(parts) > depth + 1}
    if len(classes) < 2:
        raise DatasetLayoutError(_too_few_classes(names, common, classes))
    return common


def _too_few_classes(names: Sequence[str], common: list[str], classes: set[str]) -> str:
    """Why the images of `names` under folder `common` make fewer than two classes."""
    fix = (
        "put each class's images in a folder named after the class, at least two of them "
        f"(photos/cats/*.jpg, photos/dogs/*.jpg), {GUIDE}"
    )
    where = "/".join(common) or "."
    loose = [n for n in names if len(_parts(n)) == len(common) + 1]
    if not classes:  # all images in one folder: that folder is the one class, or none
        found = f"only one class folder, '{common[-1]}'" if common else "0 class folders under '.'"
        return f"found {found}: {fix}{_unsorted(loose)}"
    if len(classes) == 1 and loose:
        # photos/ beside a stray cover.jpg: the images beside it keep photos/ from being the top.
        (only,) = classes
        shown = listed(loose, 3)
        return (
            f"found 1 class folder under '{where}', '{only}', beside images outside any class "
            f"folder ({shown}): move those images into a class folder or out of the source, "
            f"so that the folders in '{only}/' are the classes; or {fix}"
        )
    plural = "s" * (len(classes) != 1)
    return f"found {len(classes)} class folder{plural} under '{where}': {fix}"


def _unsorted(loose: Sequence[str]) -> str:
    """Say that images lie in one folder with no class folders: what a download that labels its
    images in their file names (Kaggle's cat.0.jpg, Oxford pets' Abyssinian_1.jpg) or in a list
    beside them looks like, and neither is read."""
    if not loose:
        return ""
    by_folder: dict[str, list[str]] = {}
    for name in loose:
        folder, _, file = name.rpartition("/")
        by_folder.setdefault(folder, []).append(file)
    shown = "; ".join(
        f"{len(files)} in '{folder or '.'}': {', '.join(files[:2])}{' ...' * (len(files) > 2)}"
        for folder, files in by_folder.items()
    )
    return (
        f". These images share one folder ({shown}), so they make one class at most: a label"
        " is read from an image's folder, never from its file name or a list beside it, see"
        " docs/datasets.md, 'Labels in file names'"
    )


def split_of(path: str, seed: int, test_fraction: float, val_fraction: float) -> str:
    """The split of the image at `path` (below the collection's root), from a hash alone.

    A uniform draw u in [0, 1) from SHA-256 of the seed and the path: test when u is below
    test_fraction, val in the next val_fraction of the remaining range, train otherwise.
    """
    key = f"{seed}\0{unicodedata.normalize('NFC', path)}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + (1 - test_fraction) * val_fraction:
        return "val"
    return "train"


def _plan_flat(names: Sequence[str], test_fraction: float, val_fraction: float, seed: int) -> Plan:
    depth = len(_flat_root(names))
    # Images directly in the root have no class folder: they end up in the ignored list.
    in_class = [(n, parts) for n in names if len(parts := _parts(n)) > depth + 1]
    classes = sorted({parts[depth] for _, parts in in_class})
    splits = [c for c in classes if split_like(c)]
    # A course's training_set/ + test_set/ beside a folder of its own (single_prediction/).
    trained = len(splits) > 1 and any("train" in c.lower() for c in splits)
    if splits == classes or trained:
        # Training a model to tell "Train" from "Test" photos is never what was meant.
        loose = [n for n, parts in in_class if len(parts) == depth + 2 and parts[depth] in splits]
        others = [c for c in classes if c not in splits]
        beside = (
            f" (beside them {listed(others, 3)}, which split folders leave out)" if others else ""
        )
        if "train" not in classes and set(classes) <= {"test", "val"}:
            raise DatasetLayoutError(
                f"the source holds {' and '.join(f'{c}/' for c in classes)} but no train/ beside"
                f" them: add the training images as train/<class>/<image>, {GUIDE}"
            )
        raise DatasetLayoutError(
            f"the class folders found are split folders ({', '.join(splits)}){beside}: name"
            f" them 'train/' plus 'test/' or 'val/' (lower case), each holding class folders "
            f"(train/<class>/<image>), {GUIDE}{_unsorted(loose)}"
        )
    _refuse_split_folder_of_classes(in_class, depth, classes)
    _refuse_data_folders(in_class, depth, classes)
    index = {c: i for i, c in enumerate(classes)}
    items = [
        Item(
            name,
            index[parts[depth]],
            split_of("/".join(parts[depth:]), seed, test_fraction, val_fraction),
        )
        for name, parts in in_class
    ]
    if not any(item.split == "train" for item in items):
        raise LayoutParamError(
            f"data.test_fraction={test_fraction} and data.val_fraction={val_fraction} leave no "
            f"training images out of {len(items)}; lower them"
        )
    warnings = _folders_of_classes(in_class, depth) + _held_out_as_class(classes)
    return Plan(classes, items, "flat", "carved", warnings=warnings)


def _held_out_as_class(classes: Sequence[str]) -> list[str]:
    """A warning per class folder named like a held-out split (`test/`, `val/`) beside the
    real classes: most likely unsorted test photos, trained here as a class of their own. (A
    `train/` class may be trains, beside cars and buses.)"""
    return [
        f"class '{c}' (beside {listed([x for x in classes if x != c], 3)}) is named like a"
        f" held-out split: if its images are photos of the other classes, it trains a class of"
        f" them; sort them into the class folders or move '{c}/' out of the source"
        for c in classes
        if split_like(c) and "train" not in c.lower() and not _negated(c, classes)
    ]


def _negated(name: str, classes: Sequence[str]) -> bool:
    """Whether a class is the other half of a yes/no pair (`valid/` beside `invalid/` or
    `not_valid/`): a class of its own, not a split."""
    forms = {
        f"{no}{sep}{name.lower()}"
        for no in ("in", "non", "not", "un")
        for sep in ("", "_", "-", " ")
    }
    return any(c.lower() in forms for c in classes)


_YEAR = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")  # 2019, 2019-06-01, Photos from 2019


def _folders_of_classes(in_class: Sequence[tuple[str, list[str]]], depth: int) -> list[str]:
    """A warning per class folder that holds only sub-folders, two or more, beside class folders
    holding images of their own: `animals/cats/` and `animals/dogs/` beside `birds/` train the
    classes animals and birds, where cats, dogs and birds were likely meant. Sub-folders named
    as another class's (`dogs/2019/` beside `cats/2019/`) or all by a year (`dogs/2019/`,
    `dogs/2020-06 Paris/`, Takeout's `Photos from 2019/`) are not: photos filed by date."""
    own = sorted({p[depth] for _, p in in_class if len(p) == depth + 2})
    if not own:  # every class sorted into sub-folders (by year, by place): a layout of its own
        return _years_as_classes(in_class, depth)
    subs: dict[str, set[str]] = {}
    for _, parts in in_class:
        if len(parts) > depth + 2:
            subs.setdefault(parts[depth], set()).add(parts[depth + 1])
    inner = {
        cls: names
        for cls, names in subs.items()
        if cls not in own
        and not any(names & other for c, other in subs.items() if c != cls)
        and not all(map(_YEAR.search, names))
    }
    prefix = "/".join([*in_class[0][1][:depth], ""])
    return [
        f"the class folder '{prefix}{cls}/' holds no images of its own, only the folders "
        f"{', '.join(f'{s}/' for s in sorted(subs)[:5])}{' ...' * (len(subs) > 5)}, whose images"
        f" all train as the one class '{cls}' (beside '{prefix}{own[0]}/', which holds its own):"
        f" if they are classes, move them up beside '{own[0]}/'"
        for cls, subs in sorted(inner.items())
        if len(subs) > 1
    ]


def _years_as_classes(in_class: Sequence[tuple[str, list[str]]], depth: int) -> list[str]:
    """A warning when the class folders are all named by a year and hold folders named alike
    across them: `photos/2024/cats/` beside `photos/2025/cats/` trains the years as classes,
    where cats and dogs were meant (the layout `photos/2024/cats/` alone had, before a photo
    came in 2025/)."""
    subs: dict[str, set[str]] = {}
    for _, parts in in_class:
        subs.setdefault(parts[depth], set()).add(parts[depth + 1])
    inner = sorted(set().union(*subs.values()))
    shared = [n for n in inner if sum(n in names for names in subs.values()) > 1]
    if not shared or not all(map(_YEAR.search, subs)) or any(map(_YEAR.search, shared)):
        return []
    prefix = "/".join([*in_class[0][1][:depth], ""])
    years = sorted(subs)
    return [
        f"the class folders {', '.join(f'{prefix}{y}/' for y in years[:5])}"
        f"{' ...' * (len(years) > 5)} are named by a year and hold folders named alike in each"
        f" ({', '.join(f'{n}/' for n in shared[:5])}{' ...' * (len(shared) > 5)}): the classes"
        f" trained are the years. If {shared[0]}/ and the others are the classes, file the"
        f" photos by class first ({prefix}{shared[0]}/{years[0]}/), or point data.source at"
        f" one year's folder"
    ]


def _refuse_split_folder_of_classes(
    in_class: Sequence[tuple[str, list[str]]], depth: int, classes: Sequence[str]
) -> None:
    """Refuse a split folder of class folders beside those class folders (cats/, dogs/ and
    test/cats/, test/dogs/): read as a class, `test` would be one more class of cats and dogs."""
    prefix = "/".join([*in_class[0][1][:depth], ""])
    for cls in classes:
        if not split_like(cls):
            continue
        inner = {p[depth + 1] for _, p in in_class if p[depth] == cls and len(p) > depth + 2}
        shared = sorted(inner & set(classes))
        if shared:
            raise DatasetLayoutError(
                f"'{prefix}{cls}/' holds the class folders {', '.join(shared)} found beside it: "
                f"as a class, '{cls}' would mix their images. To use it as a split, move the "
                f"class folders beside it into '{prefix}train/' ('{prefix}train/<class>/<image>',"
                f" and name the split 'test/' or 'val/'); else move '{cls}/' out of the "
                f"source, {GUIDE}"
            )


# Folders a downloaded dataset keeps its images and their annotations in: Oxford pets' images/ +
# annotations/trimaps/, Pascal VOC's JPEGImages/ + SegmentationClass/, a segmentation set's
# images/ + masks/. Each is a user's class name too (documents/ beside images/), so only two of
# them side by side are taken for a download.
_DATA_FOLDERS = frozenset(
    {"images", "imgs", "jpegimages", "annotations", "trimaps", "masks", "labels", "gt"}
    | {"groundtruth", "segmentationclass", "segmentationobject"}
)


def _refuse_data_folders(
    in_class: Sequence[tuple[str, list[str]]], depth: int, classes: Sequence[str]
) -> None:
    """Refuse class folders named like a dataset's data folders, two or more of them: Oxford
    pets' images/ (labels in its file names) beside annotations/trimaps/ (masks) would train a
    model to tell photos from masks, at a perfect test score, without a word. One such name
    among other classes (documents/ and images/) is the user's class."""
    named = [cls for cls in classes if cls.lower() in _DATA_FOLDERS]
    if len(named) < 2:
        return
    prefix = "/".join([*in_class[0][1][:depth], ""])
    examples = ", ".join(next(n for n, p in in_class if p[depth] == cls) for cls in named[:2])
    raise DatasetLayoutError(
        f"the class folders found, {', '.join(f'{prefix}{c}/' for c in classes[:5])}"
        f"{' ...' * (len(classes) > 5)}, include {', '.join(f'{c}/' for c in named)}, named like"
        f" a dataset's folders of images and of annotations, not like classes ({examples}): a"
        " label is read from an image's folder, never from its file name or an annotation file."
        " Sort the images into class folders (see docs/datasets.md, 'Labels in file names') and"
        " point data.source at them; or, if they are classes, rename one of the folders"
    )


def class_counts(
    labels: dict[str, Sequence[int]], classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Images per class per split, {split: {class: n}}, from each split's labels."""
    return {
        split: dict(
            zip(
                classes,
                np.bincount(np.asarray(ys, dtype=np.int64), minlength=len(classes)).tolist(),
                strict=True,
            )
        )
        for split, ys in labels.items()
    }


FEW_IMAGES = 5  # "a handful": below this a class's figures in a split mean little


def thin_kinds(
    counts: dict[str, dict[str, int]], splits: Sequence[str]
) -> list[tuple[bool, str, list[tuple[str, int]]]]:
    """The classes with fewer than FEW_IMAGES images in one of `splits`, by kind: (none, split,
    [(class, images)]), the kinds of none first (none to train on: the model never learns the
    class), split by split; kinds without a class left out."""
    kinds = []
    for none in (True, False):
        for split in splits:
            items = counts[split].items()
            thin = [(c, n) for c, n in items if (n == 0 if none else 0 < n < FEW_IMAGES)]
            if thin:
                kinds.append((none, split, thin))
    return kinds


def thin_classes(counts: dict[str, dict[str, int]], splits: Sequence[str]) -> list[str]:
    """A warning per class with fewer than FEW_IMAGES images (or none) in one of `splits`, in
    `thin_kinds`' order, as a log cut to the first few shows them."""
    return [
        f"class {c!r} has no {split} images"
        if none
        else f"class {c!r} has only {n} {split} image{'s' * (n > 1)}"
        for none, split, thin in thin_kinds(counts, splits)
        for c, n in thin
    ]
