"""Read the official CIFAR-10 python batches without letting pickle run arbitrary code.

cifar-10-python.tar.gz holds `cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`,
each a Python 2 pickle (protocol 2) of a dict with bytes keys. A plain `pickle.load` would run
whatever a tampered file asks for, so `_CifarUnpickler` resolves only the few numpy globals an
array needs and refuses everything else with `UnsafePickleError`.

"""

from __future__ import annotations

import io
import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionpipe.datasets import CIFAR10_CLASSES

log = logging.getLogger(__name__)

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

CLASSES = CIFAR10_CLASSES  # in the order of the official batches' labels
ARCHIVE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
REQUIRED = (*TRAIN_BATCHES, TEST_BATCH, META)
IMAGE_SHAPE = (3, 32, 32)  # channel planes R, G, B; rows of 32 pixels
_PIXELS = 3 * 32 * 32

# The only globals a CIFAR batch references. numpy 2 moved numpy.core to numpy._core; files
# written by numpy 1 (the official ones) name the old module, so both spellings map here.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class CifarArchiveError(ValueError):
    """A CIFAR-10 python archive that is damaged or incomplete: the message names the member."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the CIFAR-10 format's few numpy ones."""


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, name: str) -> None:
        # encoding="bytes": Python 2 str objects (keys, raw pixel data) come out as bytes,
        # which numpy's array and dtype reconstruction accept unchanged.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._name}: refusing to load global {module}.{name}: a CIFAR-10 batch only"
                " needs numpy's array reconstruction. The file is not an official CIFAR-10"
                " batch (or was tampered with); re-download cifar-10-python.tar.gz"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._name}: refusing persistent id {pid!r}")


def load_batch(data: bytes, name: str) -> dict[str, Any]:
    """Unpickle one CIFAR-10 python batch file safely; keys decoded to str, values as stored.

    `name` is only used in error messages.
    """
    try:
        obj = _CifarUnpickler(data, name).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise CifarArchiveError(
            f"{name} is not a readable CIFAR-10 batch ({e}): re-download it"
        ) from e
    if not isinstance(obj, dict):
        raise CifarArchiveError(f"{name} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


@dataclass
class CifarPython:
    """The decoded official archive: uint8 images in CHW layout, int64 labels."""

    classes: list[str]
    train_images: np.ndarray  # (50000, 3, 32, 32) uint8 for the real archive
    train_labels: np.ndarray  # (50000,) int64 in 0..9
    test_images: np.ndarray  # (10000, 3, 32, 32) uint8
    test_labels: np.ndarray  # (10000,) int64


_MEMBER = re.compile(r"(?:^|/)(data_batch_[1-5]|test_batch|batches\.meta)$")


def is_cifar_python(names: Iterable[str]) -> bool:
    """True if the member names look like the CIFAR-10 python layout (any folder prefix).

    Deliberately lenient (one batch file or batches.meta is enough), so an incomplete copy is
    routed to `read_cifar_python`, which then says exactly what is missing.
    """
    return any(_MEMBER.search(name) for name in names)


def read_cifar_python(files: Iterable[tuple[str, bytes]]) -> CifarPython:
    """Decode the official CIFAR-10 python members, e.g. `read_cifar_python(iter_files(path))`.

    Only the seven batch files are kept in memory; other members (readme.html) are ignored.
    """
    found: dict[str, tuple[str, bytes]] = {}
    others = 0
    for path, data in files:
        match = _MEMBER.search(path)
        if match is None:
            others += 1
            continue
        key = match.group(1)
        if key in found:
            raise CifarArchiveError(
                f"CIFAR-10 python archive holds {key} twice: {found[key][0]} and {path};"
                " keep one cifar-10-batches-py folder"
            )
        found[key] = (path, data)
    missing = [key for key in REQUIRED if key not in found]
    if missing:
        seen = ", ".join(sorted(path for path, _ in found.values())) or "none of them"
        raise CifarArchiveError(
            f"CIFAR-10 python archive is missing {', '.join(missing)}; found {seen}"
            f" (plus {others} other files). Expected {ARCHIVE_DIR}/{{{', '.join(REQUIRED)}}}:"
            " re-download cifar-10-python.tar.gz"
        )

    meta = load_batch(found[META][1], found[META][0])
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise CifarArchiveError(f"{found[META][0]} has no label_names list: re-download it")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]

    train = [_batch(*found[key], n_classes=len(classes)) for key in TRAIN_BATCHES]
    test_images, test_labels = _batch(*found[TEST_BATCH], n_classes=len(classes))
    result = CifarPython(
        classes=classes,
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
    )
    log.info(
        "read CIFAR-10 python batches: %d train, %d test images, %d classes",
        len(result.train_labels),
        len(result.test_labels),
        len(classes),
    )
    return result


def _batch(path: str, data: bytes, *, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (N, 3, 32, 32) uint8 images and (N,) int64 labels, checked for shape."""
    batch = load_batch(data, path)
    pixels, labels = batch.get("data"), batch.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise CifarArchiveError(f"{path}: 'data' is not a 2-D uint8 array: re-download the archive")
    if pixels.shape[1] != _PIXELS:
        raise CifarArchiveError(
            f"{path}: rows of {pixels.shape[1]} values, expected {_PIXELS} (32x32x3)"
        )
    try:
        label_arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):  # none, or not numbers
        raise CifarArchiveError(f"{path}: its labels are not a list of numbers") from None
    if label_arr.shape != (pixels.shape[0],):
        raise CifarArchiveError(f"{path}: {label_arr.size} labels for {pixels.shape[0]} images")
    if label_arr.size and not (label_arr.min() >= 0 and label_arr.max() < n_classes):
        raise CifarArchiveError(f"{path}: labels outside 0..{n_classes - 1}")
    return pixels.reshape(-1, *IMAGE_SHAPE), label_arr
