"""Decode a dataset once into uint8 image arrays per split, plus stats, samples and a record.

Input is whatever the download stage verified: the official CIFAR-10 python archive, or an image
folder, with split folders or flat (`visionpipe.split_plan` decides which file goes where).
Images are read straight from the archive in memory, decoded in worker processes on every core
(the same bytes, in the same order, as one process) and streamed to `data/processed/<split>.npy`
(`visionpipe.split_files`), so memory does not grow with the dataset. Everything is written into a
temporary folder that replaces data/processed only once complete.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from visionpipe import (
    archive,
    archive_members,
    cifar_pickle,
    identical,
    limits,
    parallel,
    paths,
    split_plan,
)
from visionpipe.config.data import DataConfig, DataParams
from visionpipe.datasets import DATASETS
from visionpipe.fsutil import CsvRows, atomic_dir, remove_stale_temps, size_text, write_json
from visionpipe.images import (
    DICOM_NOT_READ,
    DICOM_PEEKS,
    WIDE_RATIO,
    decode_batch,
    is_dicom,
    is_dicom_name,
    is_hidden,
    is_image_name,
    may_be_dicom,
    resize_center_crop,
    to_chw,
)
from visionpipe.names import SHOWN, counted, listed
from visionpipe.paths import SPLITS
from visionpipe.split_files import SplitWriter, channel_sums, mean_std, open_images, read_index
from visionpipe.split_plan import DatasetLayoutError, Item, Plan, common_folder

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # decoded bytes per chunk of work sent to a worker process
MAX_CHUNK_ITEMS = 256  # images per chunk: enough to make each hand-off cheap
PARALLEL_MIN_BYTES = 4 << 20  # smaller archives decode in this process: no workers to start


# Below this brightest value (of 255) an image is nearly black: 12-bit scans stored in 16-bit
# files (0-4095) read as 0-15, 13-bit ones as 0-31.
DARK_PEAK = 32


class Decoded(NamedTuple):
    """A chunk as a worker decoded it: its images, the (row, reason) of those it could not
    decode, the per-channel sums (`split_files.channel_sums`) of its train images and the
    digests of all (`identical.digests`), taken where they were decoded rather than in the one
    process that writes them."""

    images: np.ndarray
    failed: list[tuple[int, str]]
    sums: np.ndarray
    squares: np.ndarray
    digests: bytes
    dark: int  # its train images whose brightest pixel is below DARK_PEAK
    wide: int = 0  # its train images images.WIDE_RATIO times as long as wide

    @classmethod
    def of(
        cls,
        images: np.ndarray,
        failed: list[tuple[int, str]],
        wide: list[int],
        train: bytes,
    ) -> Decoded:
        """`train`: a byte per image, 1 for the train split's; `wide`: the rows of long ones."""
        counted = np.frombuffer(train, np.bool_).copy()
        counted[[row for row, _ in failed]] = False
        kept = images[counted]  # a copy: taken once
        sums, squares = channel_sums(kept)
        dark = int((kept.max(axis=(1, 2, 3), initial=0) < DARK_PEAK).sum())
        long = sum(1 for row in wide if counted[row])
        return cls(images, failed, sums, squares, identical.digests(images), dark, long)


@dataclass
class Result:
    """What decoding wrote (the files are in the output folder), and what it learned."""

    classes: list[str]
    layout: str
    test_split_source: str
    labels: dict[str, list[int]]  # per split, in file order
    mean: list[float]
    std: list[float]
    bad_images: list[dict[str, str]] = field(default_factory=list)
    bad_classes: list[str] = field(default_factory=list)  # the class of each of bad_images
    ignored_files: list[str] = field(default_factory=list)
    identical: list[list[identical.Copy]] = field(default_factory=list)  # groups of copies
    blank: list[int] = field(default_factory=list)  # those all black or white (identical.blank)
    layout_warnings: list[str] = field(default_factory=list)  # split_plan's, already logged
    dark: int = 0  # train images whose brightest pixel is below DARK_PEAK
    wide: int = 0  # train images images.WIDE_RATIO times as long as wide: cropped to half

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(labels) for split, labels in self.labels.items()}


def chunk_items(size: int) -> int:
    """Images per chunk of work at `size` pixels: about CHUNK_BYTES decoded, at most 256."""
    return max(1, min(MAX_CHUNK_ITEMS, CHUNK_BYTES // (3 * size * size)))


def decode_source(
    source: Path, size: int, data: DataConfig, out: Path, workers: int | None = None
) -> Result:
    """Decode every image of the archive (or folder) at `source` to `size` x `size` into the
    split files in folder `out`. `workers`: processes (default: one per core, one for a small
    archive, where starting them would cost more than it saves)."""
    if workers is None:
        big = source.is_dir() or source.stat().st_size >= PARALLEL_MIN_BYTES
        workers = limits.cpu_count() if big else 1
    # The workers start now and get ready while this process lists and checks the archive.
    with _no_cyclic_gc(), parallel.Workers(workers) as pool, archive.open_files(source) as files:
        if cifar_pickle.is_cifar_python(files.names):
            return _decode_cifar_python(files, size, data, out, pool)
        _warn_empty_folders(source, files)  # first: it explains the layout error of an empty test/
        try:
            plan = split_plan.plan_image_folder(
                files.names, data.test_fraction, data.val_fraction, data.seed
            )
        except split_plan.LayoutParamError:
            raise  # a param to set back, not a source to fix
        except split_plan.DatasetLayoutError as exc:
            scans = DICOM_NOT_READ not in str(exc) and _dicom_inside(files)
            said = f"{exc}{f' ({DICOM_NOT_READ})' if scans else ''}"
            raise split_plan.DatasetLayoutError(f"{said}{FIXED_SOURCE}") from None
        log.info(
            "%s: %s layout, %d classes (%s), %d image files to decode (%s)",
            source.name,
            plan.layout,
            len(plan.classes),
            listed([repr(c) for c in plan.classes], 10),  # quoted: a class may hold a comma
            len(plan.items),
            ", ".join(f"{s} {plan.count(s)}" for s in SPLITS),
        )
        _warn_ignored(plan.ignored, _dicom_inside(files, plan.ignored))
        for line in plan.warnings:
            log.warning("%s", line)
        payloads = _payloads(plan.items, files, chunk_items(size), pool.n > 1)
        decoded = pool.map(functools.partial(decode_chunk, size=size), payloads)
        return _write_splits(plan, _counted(decoded, len(plan.items)), size, out)


# What follows a fix of the source: DVC does not watch a folder or file outside the project, and
# `dvc exp run` alone would restore the download stage's last pack of it.
FIXED_SOURCE = (
    "\n(once the source is fixed: `uv run dvc repro -f -s download` in the project's folder,"
    " then the run again; a queued run: queue it again with -f; docs/datasets.md, 'Adding"
    " photos')"
)


PROGRESS_EVERY_S = 30.0


def _dicom_inside(files: archive.Files, among: Sequence[str] | None = None) -> bool:
    """Whether files of the source that no name marks are DICOM scans (a disc's `IM_0001`, a
    PACS export named by its UID): by the first bytes of a few of them (`may_be_dicom`)."""
    names = files.names if among is None else among  # a folder source's: stored empty
    peeked = [n for n in names if may_be_dicom(n) and not is_hidden(n)][:DICOM_PEEKS]
    return any(is_dicom(_head(files, name)) for name in peeked)


def _head(files: archive.Files, name: str) -> bytes:
    """A file's first 132 bytes, DICOM's preamble and magic: a zip's or folder's read no
    further (a compressed tar, read in order, unpacks it whole)."""
    span = files.span(name)
    return archive.read_head(span, 132) if span is not None else files.read(name)[:132]


def _counted(decoded: Iterable[Decoded], total: int) -> Iterator[Decoded]:
    """`decoded`, saying how many of the `total` images are decoded every PROGRESS_EVERY_S: a
    collection of large photos takes many minutes, which would pass on one line."""
    done, said = 0, time.monotonic()
    for chunk in decoded:
        done += len(chunk.images)
        if done < total and (now := time.monotonic()) - said >= PROGRESS_EVERY_S:
            log.info("decoded %d of %d images", done, total)  # as the lines around it count
            said = now
        yield chunk


def _warn_empty_folders(source: Path, files: archive.Files) -> None:
    """Name a zip's or tar's iCloud Drive placeholders, and its folders with no visible file
    below them, or no image (a tar packed from a folder source: download named those). An
    archive need not list its folders (`zip -D`, Python's zipfile): those its files sit in
    count too."""
    if source.name != archive.PACKED_FOLDER:
        # First: a class folder of placeholders alone is one of the empty ones below.
        archive_members.warn_icloud_placeholders(Path(source.name), files.names)
        visible = [n for n in files.names if not is_hidden(n)]
        parents = {p for name in visible for p in archive_members.parents(name)}
        listed = [f for f in sorted(parents.union(files.folders)) if not is_hidden(f)]
        archive_members.warn_empty_folders(Path(source.name), listed, visible)


# Why a visible file is left out, by what its name is, with what to do about it.
_IGNORED_WHY = {
    "archive": "archives inside the source, not opened (unpack them into it)",
    "bare": "without a suffix (a photo needs its format's: .jpg, .png, ...)",
    "other": "not images by their suffix",
    "loose": "images outside the class folders",
}


def _ignored_kind(name: str) -> str:
    base = name.rsplit("/", 1)[-1].lower()
    if is_image_name(name):
        return "loose"
    if base.endswith(archive.ARCHIVE_SUFFIXES):
        return "archive"
    return "other" if "." in base else "bare"


# Names of ignored files listed in metrics/preprocess.json, a DVC metric file that `dvc metrics
# show` reads whole: a NAS folder's 100,000 sidecar files would make it megabytes.
IGNORED_LISTED = 1000


def _warn_ignored(ignored: Sequence[str], scans: bool = False) -> None:
    """Name the files left out that a user may have meant as photos (camera RAW files, photos
    saved without a suffix, loose images beside the class folders), and why: hidden and system
    files go without saying. `scans`: some are DICOM by their first bytes."""
    visible = [name for name in ignored if not is_hidden(name)]
    if not visible:
        return
    kinds = {kind: [n for n in visible if _ignored_kind(n) == kind] for kind in _IGNORED_WHY}
    why = [
        f"{_IGNORED_WHY[k]} ({len(names)}): {_shown(names)}" for k, names in kinds.items() if names
    ]
    if scans or any(map(is_dicom_name, visible)):
        why.append(DICOM_NOT_READ)
    listed = f", the first {IGNORED_LISTED}" if len(ignored) > IGNORED_LISTED else ""
    log.warning(
        "ignoring %s (listed in %s%s): %s",
        _files(len(visible)),
        paths.PREPROCESS_REPORT,
        listed,
        "; ".join(why),
    )


def _files(n: int) -> str:
    return f"{n} file{'s' * (n != 1)}"


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause Python's cycle collector: listing and planning keep about ten objects per file,
    which it would otherwise scan again and again (a quarter of the listing time for 60,000
    files). Nothing here makes reference cycles; reference counting still frees the rest."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# A chunk of work: each image's name and its bytes or where they lie, and its train flags.
Payload = tuple[list[tuple[str, "bytes | archive.Span"]], bytes]


def _payloads(
    items: Sequence[Item], files: archive.Files, per_chunk: int, spans: bool
) -> Iterator[Payload]:
    """The items in consecutive chunks, each image as its bytes, or (`spans`) as where they
    lie, so that a worker process reads them itself and they never pass through this one."""
    for start in range(0, len(items), per_chunk):
        chunk: list[tuple[str, bytes | archive.Span]] = []
        train = bytearray()
        for item in items[start : start + per_chunk]:
            span = files.span(item.name) if spans else None
            chunk.append((item.name, files.read(item.name) if span is None else span))
            train.append(item.split == "train")
        yield chunk, bytes(train)


def decode_chunk(payload: Payload, size: int) -> Decoded:
    """A worker's unit of work: read what is not read yet, then decode (`images.decode_batch`)."""
    chunk, train = payload
    items = [(n, d if isinstance(d, bytes) else archive.read_span(d)) for n, d in chunk]
    return Decoded.of(*decode_batch(items, size), train)


def _decode_cifar_python(
    files: archive.Files,
    size: int,
    data: DataConfig,
    out: Path,
    pool: parallel.Workers,
) -> Result:
    if data.test_fraction is not None:
        raise DatasetLayoutError(
            f"data.test_fraction={data.test_fraction} applies to flat image folders; the CIFAR-10"
            " archive has its own test split: set data.test_fraction back to null"
        )
    cifar = cifar_pickle.read_cifar_python((n, files.read(n)) for n in files.names)
    in_val = split_plan.carve_val(len(cifar.train_labels), data.val_fraction, data.seed)
    items = [
        Item(f"train[{i}]", int(y), "val" if v else "train")
        for i, (y, v) in enumerate(zip(cifar.train_labels, in_val, strict=True))
    ] + [Item(f"test[{i}]", int(y), "test") for i, y in enumerate(cifar.test_labels)]
    plan = Plan(list(cifar.classes), items, "CIFAR-10 python batches", "test")
    step = chunk_items(size)
    train = bytes(item.split == "train" for item in items)
    chunks = (
        # The byte slice ends with its images: the train images' last chunk is a short one.
        (images[i : i + step], train[start + i : start + min(i + step, len(images))])
        for images, start in ((cifar.train_images, 0), (cifar.test_images, len(in_val)))
        for i in range(0, len(images), step)
    )
    return _write_splits(
        plan, pool.map(functools.partial(resize_batch, size=size), chunks), size, out
    )


def resize_batch(chunk: tuple[np.ndarray, bytes], size: int) -> Decoded:
    """uint8 NCHW images resized (shorter side, center crop) to `size`: a worker's chunk."""
    images, train = chunk
    if images.shape[-1] != size or images.shape[-2] != size:
        hwc = (Image.fromarray(i.transpose(1, 2, 0)) for i in images)
        images = np.stack([to_chw(resize_center_crop(img, size)) for img in hwc])
    return Decoded.of(images, [], [], train)


class DiskSpaceError(OSError):
    """The decoded images would not fit on the disk holding data/processed."""


def _check_disk(out: Path, plan: Plan, size: int) -> None:
    # Checked before the first write: a full disk midway would waste the whole decode.
    need = len(plan.items) * 3 * size * size
    free = shutil.disk_usage(out).free
    if need > free:
        raise DiskSpaceError(
            f"the {len(plan.items):,} images take {size_text(need)} at {size}x{size} pixels "
            f"and {out.parent} has {size_text(free)} free: free some space or lower "
            "preprocess.image_size"
        )


def _write_splits(plan: Plan, decoded: Iterable[Decoded], size: int, out: Path) -> Result:
    """Stream decoded chunks (consecutive runs of `plan.items`) into the split files and the
    record of which file went where."""
    _check_disk(out, plan, size)
    bad: list[dict[str, str]] = []
    bad_classes: list[str] = []
    sums, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)  # the train images'
    digests, failed_rows = bytearray(), []  # of every item, for identical.groups
    dark = wide = 0
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(SplitWriter(out, s, size)) for s in SPLITS}
        record = CsvRows(stack.enter_context(open(out / paths.SPLIT_RECORD.name, "w", newline="")))
        record.writerow(["file", "class", "split", "index"])
        # Names below the folder holding every image: the same photos zipped in a folder of
        # their own, or read from that folder, make the same record (and data/processed hash).
        cut = sum(len(part) + 1 for part in common_folder([i.name for i in plan.items]))
        done = 0
        for chunk in decoded:
            items = plan.items[done : done + len(chunk.images)]
            done += len(chunk.images)
            failed = dict(chunk.failed)
            bad += _route(items, chunk.images, failed, writers, record, plan.classes, cut)
            bad_classes += [plan.classes[items[row].label] for row in failed]
            failed_rows += [done - len(items) + row for row in failed]
            digests += chunk.digests
            sums += chunk.sums
            squares += chunk.squares
            dark += chunk.dark
            wide += chunk.wide
        assert done == len(plan.items), (done, len(plan.items))
        for writer in writers.values():
            writer.close()
    train = writers["train"]
    if train.count == 0 or writers["test"].count == 0:
        raise _empty_split("train" if train.count == 0 else "test", plan, bad)
    mean, std = mean_std(sums, squares, train.count * size * size)
    groups = identical.groups(bytes(digests), failed_rows)
    return Result(
        classes=plan.classes,
        layout=plan.layout,
        test_split_source=plan.test_split_source,
        labels={s: w.labels for s, w in writers.items()},
        mean=mean,
        std=std,
        bad_images=bad,
        bad_classes=bad_classes,
        ignored_files=plan.ignored,
        identical=_copies(plan, groups),
        blank=identical.blank(bytes(digests), groups, size),
        layout_warnings=plan.warnings,
        dark=dark,
        wide=wide,
    )


def _empty_split(split: str, plan: Plan, bad: list[dict[str, str]]) -> DatasetLayoutError:
    """The error for a split no decodable image landed in: its undecodable files named (the
    run stops before its report is written), and what fills it."""
    names = {item.name for item in plan.items if item.split == split}
    bad = [b for b in bad if b["file"] in names]
    named = f": {listed([b['file'] for b in bad], 5)}" if bad else ""
    fill = [*(["fix or replace the undecodable files"] if bad else []), "add images"]
    if split == "test" and plan.test_split_source == "carved":
        fill.append("raise data.test_fraction")  # train would lose what test gains
    return DatasetLayoutError(
        f"no decodable image landed in the {split} split ({len(names)} {split} images,"
        f" {len(bad)} undecodable{named}): {', or '.join(fill)}" + FIXED_SOURCE
    )


def _copies(plan: Plan, groups: list[list[int]]) -> list[list[identical.Copy]]:
    """The groups of identical images among `plan.items` (`identical.groups`), named."""
    items, classes = plan.items, plan.classes
    return [
        [identical.Copy(items[r].name, classes[items[r].label], items[r].split) for r in group]
        for group in groups
    ]


def _route(
    items: Sequence[Item],
    images: np.ndarray,
    failed: dict[int, str],
    writers: dict[str, SplitWriter],
    record: Any,
    classes: Sequence[str],
    cut: int,
) -> list[dict[str, str]]:
    """Append one decoded chunk to its splits' writers and the record (its names without their
    first `cut` characters); returns its failures."""
    ok = np.ones(len(items), dtype=bool)
    ok[list(failed)] = False
    split_codes = np.array([SPLITS.index(item.split) for item in items])
    labels = np.array([item.label for item in items], dtype=np.int64)
    next_index = {split: writers[split].count for split in SPLITS}  # rows in the split files
    for code, split in enumerate(SPLITS):
        where = ok & (split_codes == code)
        if where.any():
            writers[split].append(images[where], labels[where])
    rows = []
    for row, item in enumerate(items):
        if row in failed:
            rows.append((item.name[cut:], classes[item.label], "skipped", ""))
        else:
            rows.append((item.name[cut:], classes[item.label], item.split, next_index[item.split]))
            next_index[item.split] += 1
    record.writerows(rows)
    return [{"file": items[row].name, "reason": reason} for row, reason in failed.items()]


# A file name holds at most 255 bytes on Linux, macOS and Windows; 200 for the class leaves room
# for the index, the suffix and a file system that stores names decomposed (macOS: é takes 3).
_SAMPLE_CLASS_BYTES = 200


def sample_name(idx: int, cls: str, n_classes: int) -> str:
    """`NN_<class>.png`, a long class name cut (at a character boundary) to fit a file name, and
    the characters FAT, exFAT and Windows refuse in one (`a:b`, `what?`) as `_`. The index has
    as many digits as the last one (`007_` of 250 classes), so that sorting the names, as
    predict does, keeps the class order."""
    cut = cls.encode()[:_SAMPLE_CLASS_BYTES].decode("utf-8", "ignore")
    cut = "".join("_" if c in _NOT_IN_FAT_NAMES or ord(c) < 0x20 else c for c in cut)
    return f"{idx:0{max(2, len(str(n_classes - 1)))}d}_{cut}.png"


_NOT_IN_FAT_NAMES = frozenset('<>:"\\|?*')  # with '/', which no class folder's name holds


def write_samples(
    test_images: np.ndarray, test_labels: Sequence[int], classes: list[str], dest: Path
) -> list[Path]:
    """Save the first test image of each class as `NN_<class>.png` in the folder `dest`."""
    labels = np.asarray(test_labels)
    written, absent = [], []
    for idx, cls in enumerate(classes):
        hits = np.flatnonzero(labels == idx)
        if len(hits) == 0:
            absent.append(repr(cls))
            continue
        path = dest / sample_name(idx, cls, len(classes))
        Image.fromarray(np.asarray(test_images[hits[0]]).transpose(1, 2, 0)).save(
            path, optimize=False
        )
        written.append(path)
    if absent:
        log.warning(
            "no test image of %s: no sample written for %s",
            f"class {absent[0]}" if len(absent) == 1 else f"{len(absent)} classes",
            "it" if len(absent) == 1 else f"them ({listed(absent)})",
        )
    return written


def find_archive(raw_dir: Path) -> Path:
    """The one archive (or packed folder) the download stage left in `raw_dir`."""
    found = (
        sorted(p for p in raw_dir.iterdir() if p.is_file() and p.suffix != ".json")
        if (raw_dir.is_dir())
        else []
    )
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected exactly one dataset archive in {raw_dir}, found {len(found)}: "
            f"{paths.rerun('download')} first"
        )
    return found[0]


class BadImagesError(ValueError):
    """Undecodable images were found and data.on_bad_image is 'fail'."""


_LISTED_BAD = 50  # undecodable images named in the log; the report lists them all


def _check_bad_images(result: Result, on_bad_image: str) -> None:
    if not result.bad_images:
        return
    n = len(result.bad_images)
    listing = "\n".join(f"  {b['file']}: {b['reason']}" for b in result.bad_images[:_LISTED_BAD])
    if n > _LISTED_BAD:
        listing += f"\n  ... and {n - _LISTED_BAD} more"
    images = f"{n} image{'s' * (n != 1)}"
    if on_bad_image == "fail":
        # The stage stops before its report: it holds the list alone, so none goes unnamed.
        write_json(paths.PREPROCESS_REPORT, {"bad_images": result.bad_images})
        raise BadImagesError(
            f"{images} cannot be decoded (data.on_bad_image: fail; all listed in "
            f"{paths.PREPROCESS_REPORT}):\n{listing}\n"
            "Remove or fix them, or set data.on_bad_image: skip to leave them out." + FIXED_SOURCE
        )
    log.warning(
        "skipping %s that cannot be decoded (listed in %s):\n%s",
        images,
        paths.PREPROCESS_REPORT,
        listing,
    )


class EmptyClassError(DatasetLayoutError):
    """A class folder none of whose images could be decoded."""


def _warn_empty_val(result: Result, val_fraction: float) -> list[str]:
    """Say so when data.val_fraction asks for a validation split and none came of it: training
    then scores its epochs (and stops early) on the test split, as with val_fraction 0. A flat
    folder's images draw their split from their names, so a few can all miss a small share."""
    if val_fraction == 0 or result.counts["val"] > 0:
        return []
    warning = (
        f"data.val_fraction={val_fraction} put none of the {result.counts['train']} training"
        " images in the validation split, so training scores its epochs on the test split:"
        " raise data.val_fraction or add images for a validation split of their own"
    )
    log.warning("%s", warning)
    return [warning]


def _check_empty_classes(result: Result, class_counts: dict[str, dict[str, int]]) -> None:
    """Refuse a class left with no image in any split: the model would get an output for it
    that it never sees (torchvision's ImageFolder refuses such a class too)."""
    empty = [c for c in result.classes if not any(class_counts[s][c] for s in SPLITS)]
    if not empty:
        return
    lines = []
    for cls in empty:
        reasons = [
            f"{b['file']}: {b['reason']}"
            for b, of in zip(result.bad_images, result.bad_classes, strict=True)
            if of == cls
        ]
        listing = "".join(f"\n    {r}" for r in reasons[:5])
        more = f"\n    ... and {len(reasons) - 5} more" if len(reasons) > 5 else ""
        lines.append(f"  {cls!r}: {_files(len(reasons))}, none decodable:{listing}{more}")
    # The stage stops before its report: it holds the list alone, as for on_bad_image: fail.
    write_json(paths.PREPROCESS_REPORT, {"bad_images": result.bad_images})
    classes = f"{len(empty)} class{'es' * (len(empty) != 1)}"
    raise EmptyClassError(
        f"{classes} would have no image to train or test on, every file skipped as undecodable"
        f" (all listed under 'bad_images' in {paths.PREPROCESS_REPORT}):\n"
        + "\n".join(lines)
        + "\nRemove the class's folder (in split folders, each split's), or add photos to it or"
        " fix its files." + FIXED_SOURCE
    )


def _decode_named(
    source: Path, size: int, data: DataConfig, out: Path, workers: int | None
) -> Result:
    """`decode_source`, an unreadable copy named with the data.source it was copied from."""
    try:
        return decode_source(source, size, data, out, workers)
    except archive.ArchiveReadError as e:
        if data.source is None:  # an official archive: the download stage's own fetch
            raise
        raise archive.ArchiveReadError(f"{e} (data.source: {data.source!r})") from None


def _log_decoded(result: Result) -> None:
    """The counts as decoded: the plan's figures less the images that could not be decoded."""
    counts = result.counts
    skipped = f", {len(result.bad_images)} skipped" if result.bad_images else ""
    log.info(
        "decoded %d images (%s)%s",
        sum(counts.values()),
        ", ".join(f"{s} {counts[s]}" for s in SPLITS),
        skipped,
    )


def _warn_other_dataset(dataset: str, classes: list[str]) -> list[str]:
    """Say so when the source's classes are not the named dataset's: someone's own photos with
    data.dataset left at cifar10 train at CIFAR's 32 px and are recorded as CIFAR-10."""
    # An image-folder copy of a named dataset holds its classes.
    others = [c for c in classes if c not in (DATASETS[dataset].classes or classes)]
    if not others:
        return []
    named, own = DATASETS[dataset].image_size, DATASETS["imagefolder"].image_size
    warning = (
        f"data.dataset is {dataset}, but data.source holds classes that are not {dataset}'s"
        f" ({listed([repr(c) for c in others])}): for your own photos set"
        " data.dataset=imagefolder"
        + (f" (preprocess.image_size then defaults to {own}, not {named})" if own != named else "")
        # A switch of data.dataset with conf/'s data.source still naming the last dataset's.
        + (
            f"; for {dataset} itself, data.source=null takes its official archive (or the copy"
            " launch.data_root or DATA_MIRROR names)"
            if DATASETS[dataset].official is not None
            else ""
        )
    )
    log.warning("%s", warning)
    return [warning]


def _warn_dark(result: Result, size: int) -> list[str]:
    """Say so where most train images are nearly black at `size` pixels, as the model sees
    them: 12-bit scans in 16-bit files, most often; a resize also dims a small bright detail."""
    train = result.counts["train"]
    if result.dark * 2 <= train:
        return []
    warning = (
        f"{result.dark:,} of the {train:,} train images are nearly black as the model sees them"
        f" (resized to {size}x{size}, their brightest pixel below {DARK_PEAK} of 255): it learns"
        " little from them. 16-bit files are read on the 0-65535 scale, so 12-bit scans stored"
        " in them (values up to 4095) read 16 times darker: stretch such files to the full 16"
        " bits, or window them to 8 bits, before training (docs/datasets.md, 16-bit and"
        " scientific images); brighten dark photos likewise. Where dark is what they are"
        " (a night sky of small stars), this warning is no fault." + FIXED_SOURCE
    )
    log.warning("%s", warning)
    return [warning]


def _warn_wide(result: Result) -> list[str]:
    """Say so where a tenth or more of the train images lose half of themselves or more to the
    centre square: panoramas, phone screenshots, banners."""
    train = result.counts["train"]
    if result.wide == 0 or result.wide * 10 < train:
        return []
    warning = (
        f"{result.wide:,} of the {train:,} train images are at least {WIDE_RATIO} times as long as"
        " they are wide (or the reverse): the model sees the centre square of each, half of the"
        " image or less (a panorama's middle, a screenshot's band). Where what matters lies"
        " elsewhere, crop or pad them to squares before training (docs/datasets.md, Image"
        " size)" + FIXED_SOURCE
    )
    log.warning("%s", warning)
    return [warning]


def _warn_thin_classes(counts: dict[str, dict[str, int]], val_fraction: float) -> list[str]:
    """A warning per thin class (all in the report); the log gets one line for each, or where
    there are more than SHOWN, one for each kind (no test images; few train images), so that
    none of the kinds is crowded out by another's lines."""
    checked = [s for s in SPLITS if s != "val" or val_fraction > 0]
    warnings = split_plan.thin_classes(counts, checked)
    if len(warnings) <= SHOWN:
        for line in warnings:
            log.warning("%s", line)
        return warnings
    for none, split, thin in split_plan.thin_kinds(counts, checked):  # as the report has them
        what = (
            f"no {split} images" if none else f"fewer than {split_plan.FEW_IMAGES} {split} images"
        )
        have = "has" if len(thin) == 1 else "have"
        named = listed([repr(c) for c, _ in thin])
        log.warning("%s %s %s: %s", counted(len(thin), "class", "classes"), have, what, named)
    log.warning("(each class's line in %s)", paths.PREPROCESS_REPORT)
    return warnings


def _warn_identical(result: Result, size: int) -> list[str]:
    groups = result.identical
    warnings = identical.warnings(groups, str(paths.PREPROCESS_REPORT), size, result.blank)
    for line in warnings:
        log.warning("%s", line)
    same_place = identical.extra_copies(identical.in_one_place(groups))
    if same_place:  # no mistake to warn of, but each is trained or scored twice
        log.info(
            "%s an identical copy in %s class and split (counted twice there; listed under"
            " 'identical' in %s)",
            "1 image has" if same_place == 1 else f"{same_place} images have",
            "its" if same_place == 1 else "their",
            paths.PREPROCESS_REPORT,
        )
    return warnings


def run(params: DataParams, workers: int | None = None) -> dict[str, Any]:
    """Decode the downloaded archive into per-split arrays, stats, samples, record and report."""
    size = params.image_size()
    source = find_archive(paths.RAW_DIR)
    for output in (paths.PROCESSED_DIR, paths.SAMPLES_DIR):
        remove_stale_temps(output)  # what a killed run left: possibly gigabytes
    log.info("decoding %s at %dx%d", source, size, size)
    with atomic_dir(paths.PROCESSED_DIR) as out:
        result = _decode_named(source, size, params.data, out, workers)
        _check_bad_images(result, params.data.on_bad_image)
        class_counts = split_plan.class_counts(result.labels, result.classes)
        _check_empty_classes(result, class_counts)
        _log_decoded(result)
        warnings = result.layout_warnings + _warn_other_dataset(params.data.dataset, result.classes)
        warnings += _warn_empty_val(result, params.data.val_fraction)
        warnings += _warn_thin_classes(class_counts, params.data.val_fraction)
        warnings += _warn_identical(result, size)
        warnings += _warn_dark(result, size)
        warnings += _warn_wide(result)
        meta = {
            "dataset": params.data.dataset,
            "classes": result.classes,
            "image_size": size,
            "mean": result.mean,
            "std": result.std,
            "counts": result.counts,
            "layout": result.layout,
            "test_split_source": result.test_split_source,
            "class_counts": class_counts,
        }
        write_json(out / "meta.json", meta)
        with atomic_dir(paths.SAMPLES_DIR) as samples:
            test_index = out / paths.split_file("test").name
            test_images = open_images(test_index, read_index(test_index))
            write_samples(test_images, result.labels["test"], result.classes, samples)
    report = {
        "images": meta["counts"],
        "classes": len(result.classes),
        "skipped_bad_images": len(result.bad_images),
        "ignored_files": len(result.ignored_files),
        "identical_images": identical.extra_copies(result.identical),
        "bad_images": result.bad_images,
        "ignored": result.ignored_files[:IGNORED_LISTED],
        "identical": identical.listing(result.identical),
        "warnings": warnings,
    }
    write_json(paths.PREPROCESS_REPORT, report)
    return meta
