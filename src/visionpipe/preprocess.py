"""Decode a dataset archive once into uint8 tensors per split, plus stats and per-class samples.

Input is whatever the download stage verified: the official CIFAR-10 python archive, or any
ImageFolder export (`<root>/train/<class>/*` plus `<root>/test/<class>/*` or
`<root>/val/<class>/*`).
Images are read straight from the archive in memory; nothing is extracted to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from visionpipe import archive, cifar_pickle, paths
from visionpipe.config import Params
from visionpipe.fsutil import atomic_dir, save_torch, write_json
from visionpipe.images import BadImageError, is_image_name, load_array, resize_center_crop, to_chw

log = logging.getLogger(__name__)

EVAL_SPLIT_NAMES = ("test", "val")  # ImageFolder exports name their held-out split either way


class DatasetLayoutError(ValueError):
    """The archive is neither CIFAR-10 python batches nor an ImageFolder layout."""


@dataclass
class Split:
    images: np.ndarray  # (N, 3, H, W) uint8
    labels: np.ndarray  # (N,) int64


@dataclass
class Decoded:
    classes: list[str]
    train: Split
    test: Split
    test_split_name: str  # "test" or "val": what the source called its held-out split
    bad_images: list[dict[str, str]] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)


def _find_imagefolder_root(names: Iterable[str]) -> tuple[PurePosixPath, str]:
    """Locate `<root>/train/<class>/<file>` and the held-out split folder next to it."""
    names = list(names)
    roots: set[PurePosixPath] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        for i, part in enumerate(parts[:-2]):
            if part == "train" and len(parts) == i + 3:
                roots.add(PurePosixPath(*parts[:i]) if i else PurePosixPath("."))
    if len(roots) != 1:
        found = ", ".join(sorted(str(r) for r in roots)) or "none"
        raise DatasetLayoutError(
            "expected an ImageFolder layout with exactly one 'train/<class>/<image>' tree "
            f"(found train folders under: {found}); see README 'Bring your own images'"
        )
    root = roots.pop()
    for split in EVAL_SPLIT_NAMES:
        prefix = (root / split).as_posix() + "/"
        prefix = prefix.removeprefix("./")
        if any(n.startswith(prefix) for n in names):
            return root, split
    raise DatasetLayoutError(
        f"found '{(root / 'train').as_posix()}/' but no held-out split next to it: "
        "add a 'test/' or 'val/' folder of class folders"
    )


def _decode_imagefolder(source: Path, size: int) -> Decoded:
    root, test_name = _find_imagefolder_root(archive.list_files(source))
    images: dict[str, list[np.ndarray]] = {"train": [], test_name: []}
    labels: dict[str, list[str]] = {"train": [], test_name: []}
    bad: list[dict[str, str]] = []
    ignored: list[str] = []
    for name, data in archive.iter_files(source):
        rel = PurePosixPath(name)
        try:
            rel = rel.relative_to(root)
        except ValueError:
            ignored.append(name)
            continue
        if len(rel.parts) != 3 or rel.parts[0] not in images:
            ignored.append(name)
            continue
        if not is_image_name(name):
            ignored.append(name)
            continue
        split, cls = rel.parts[0], rel.parts[1]
        try:
            images[split].append(load_array(data, name, size))
        except BadImageError as exc:
            bad.append({"file": name, "reason": exc.reason})
            continue
        labels[split].append(cls)
    classes = sorted(set(labels["train"]))  # ImageFolder's rule: sorted folder names
    if not classes:
        raise DatasetLayoutError(f"{source}: no decodable images under train/")
    unknown = sorted(set(labels[test_name]) - set(classes))
    if unknown:
        raise DatasetLayoutError(
            f"{source}: {test_name}/ has classes not in train/: {', '.join(unknown)}"
        )
    index = {c: i for i, c in enumerate(classes)}

    def stack(split: str) -> Split:
        if not images[split]:
            raise DatasetLayoutError(f"{source}: no decodable images under {split}/")
        return Split(
            np.stack(images[split]), np.array([index[c] for c in labels[split]], dtype=np.int64)
        )

    return Decoded(classes, stack("train"), stack(test_name), test_name, bad, ignored)


def _resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return np.stack(
        [to_chw(resize_center_crop(Image.fromarray(i.transpose(1, 2, 0)), size)) for i in images]
    )


def _decode_cifar_python(source: Path, size: int) -> Decoded:
    data = cifar_pickle.read_cifar_python(archive.iter_files(source))
    return Decoded(
        classes=list(data.classes),
        train=Split(_resize_batch(data.train_images, size), data.train_labels.astype(np.int64)),
        test=Split(_resize_batch(data.test_images, size), data.test_labels.astype(np.int64)),
        test_split_name="test",
    )


def decode_source(source: Path, size: int) -> Decoded:
    """Decode every image of the archive (or folder) at `source` to `size` x `size`."""
    if cifar_pickle.is_cifar_python(archive.list_files(source)):
        return _decode_cifar_python(source, size)
    return _decode_imagefolder(source, size)


def split_train_val(train: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a seeded random val split out of train; both keep their original order."""
    n = len(train.labels)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if n_val >= n:
        raise ValueError(
            f"data.val_fraction={val_fraction} leaves no training images out of {n}; lower it"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (
        Split(train.images[train_idx], train.labels[train_idx]),
        Split(train.images[val_idx], train.labels[val_idx]),
    )


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.reshape(images.shape[0], 3, -1)
    # Accumulate in float64 per channel: exact enough and independent of batch order.
    n = x.shape[0] * x.shape[2]
    mean = x.sum(axis=(0, 2), dtype=np.float64) / n
    sq = np.einsum("ncp,ncp->c", x.astype(np.float64), x.astype(np.float64)) / n
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    return [round(float(m) / 255, 6) for m in mean], [round(float(s) / 255, 6) for s in std]


def write_samples(test: Split, classes: list[str], dest: Path) -> list[Path]:
    """Save the first test image of each class as `NN_<class>.png` in the folder `dest`."""
    written = []
    for idx, cls in enumerate(classes):
        hits = np.flatnonzero(test.labels == idx)
        if len(hits) == 0:
            log.warning("no test image of class %r: no sample written for it", cls)
            continue
        path = dest / f"{idx:02d}_{cls}.png"
        Image.fromarray(test.images[hits[0]].transpose(1, 2, 0)).save(path, optimize=False)
        written.append(path)
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
            "run 'uv run dvc repro download' first"
        )
    return found[0]


def run(params: Params) -> dict[str, Any]:
    """Decode the downloaded archive into per-split tensors, stats, samples and a report."""
    import torch

    size = params.image_size()
    source = find_archive(paths.RAW_DIR)
    log.info("decoding %s at %dx%d", source, size, size)
    decoded = decode_source(source, size)
    if decoded.bad_images:
        listing = "\n".join(f"  {b['file']}: {b['reason']}" for b in decoded.bad_images[:50])
        if params.data.on_bad_image == "fail":
            raise BadImagesError(
                f"{len(decoded.bad_images)} images cannot be decoded "
                f"(data.on_bad_image: fail):\n{listing}\n"
                "Remove or fix them, or set data.on_bad_image: skip to leave them out."
            )
        log.warning(
            "skipping %d undecodable images (listed in %s):\n%s",
            len(decoded.bad_images),
            paths.PREPROCESS_REPORT,
            listing,
        )
    train, val = split_train_val(decoded.train, params.data.val_fraction, params.data.seed)
    mean, std = channel_stats(train.images)
    splits = {"train": train, "val": val, "test": decoded.test}
    for name, split in splits.items():
        save_torch(
            paths.split_file(name),
            {"images": torch.from_numpy(split.images), "labels": torch.from_numpy(split.labels)},
        )
    meta = {
        "dataset": params.data.dataset,
        "source_file": source.name,
        "classes": decoded.classes,
        "image_size": size,
        "mean": mean,
        "std": std,
        "counts": {name: len(s.labels) for name, s in splits.items()},
        "test_split_source": decoded.test_split_name,
    }
    write_json(paths.PROCESSED_DIR / "meta.json", meta)
    with atomic_dir(paths.SAMPLES_DIR) as tmp_dir:
        write_samples(decoded.test, decoded.classes, tmp_dir)
    report = {
        "images": meta["counts"],
        "classes": len(decoded.classes),
        "skipped_bad_images": len(decoded.bad_images),
        "ignored_files": len(decoded.ignored_files),
        "bad_images": decoded.bad_images,
        "ignored": decoded.ignored_files[:1000],
    }
    write_json(paths.PREPROCESS_REPORT, report)
    return meta


class BadImagesError(ValueError):
    """Undecodable images were found and data.on_bad_image is 'fail'."""
