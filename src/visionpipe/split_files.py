"""The preprocessed splits on disk: images as memory-mappable .npy files, labels beside them.

Each split is two files: `<split>.npy`, the uint8 images (N, 3, H, W) in numpy's own format, and
`<split>.json`, its labels, shape and the SHA-256 of the image bytes (what identifies the split:
a resumed training run checks it). Preprocess streams images into a `SplitWriter` chunk by chunk,
so its memory does not grow with the dataset; readers (`open_images`) map the file and the OS
pages in what they touch, or, with `in_memory`, read it whole when it fits.

numpy only, no torch: preprocess writes these without importing it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from visionpipe import paths

IMAGES_SUFFIX, INDEX_SUFFIX = ".npy", ".json"


def _header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    # numpy pads the header so that the first dimension can grow to 21 digits in place:
    # the header written for 0 images has the length of the final one.
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": shape,
        },
    )
    return buf.getvalue()


def channel_sums(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of the pixels and of their squares of uint8 NCHW `images`, as int64.

    Exact integers, so the totals (and the mean/std made from them) do not depend on how the
    images were chunked. Squares of uint8 fit uint16: 255**2 = 65025.
    """
    sums = images.sum(axis=(0, 2, 3), dtype=np.int64)
    squares = np.square(images, dtype=np.uint16).sum(axis=(0, 2, 3), dtype=np.int64)
    return sums, squares


class SplitWriter:
    """Append uint8 (n, 3, size, size) images and their labels to `<folder>/<split>.npy|json`.

    Plain sequential writes, not a writable memory map: a full disk then raises OSError
    instead of killing the process with SIGBUS. The header is rewritten with the final count
    when the writer closes.
    """

    def __init__(self, folder: Path, split: str, size: int) -> None:
        self.images_path = folder / f"{split}{IMAGES_SUFFIX}"
        self.index_path = folder / f"{split}{INDEX_SUFFIX}"
        self.item_shape = (3, size, size)
        self.count = 0
        self.labels: list[int] = []
        self._sha = hashlib.sha256()
        self._file = open(self.images_path, "wb")  # noqa: SIM115 (closed by close/__exit__)
        self._header_len = self._file.write(_header((0, *self.item_shape)))

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        assert images.dtype == np.uint8 and images.shape[1:] == self.item_shape, images.shape
        images = np.ascontiguousarray(images)
        try:
            self._file.write(images.data)
        except OSError as exc:  # a file object's write names no file: a user needs to know which
            exc.filename = exc.filename or str(self.images_path)
            raise
        self._sha.update(images.data)
        self.count += len(images)
        self.labels += labels.tolist()

    def close(self) -> dict[str, Any]:
        """Finish both files; returns the index written to `<split>.json`."""
        shape = (self.count, *self.item_shape)
        header = _header(shape)
        assert len(header) == self._header_len, "numpy's header padding changed"
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        index = {
            "images": self.images_path.name,
            "shape": list(shape),
            "sha256": self._sha.hexdigest(),
            "labels": self.labels,
        }
        self.index_path.write_text(json.dumps(index, separators=(",", ":")) + "\n")
        return index

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()  # on success close() already did; a failed write leaves no index


def mean_std(
    sums: np.ndarray, squares: np.ndarray, n_pixels: int
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale, from `channel_sums` totals over n_pixels."""
    mean = sums.astype(np.float64) / n_pixels
    sq = squares.astype(np.float64) / n_pixels
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    return [round(float(m) / 255, 6) for m in mean], [round(float(s) / 255, 6) for s in std]


class SplitFileError(ValueError):
    """A split's files are missing, or do not belong together."""


def read_index(index_path: Path) -> dict[str, Any]:
    return json.loads(index_path.read_text())


def open_images(index_path: Path, index: dict[str, Any], in_memory: bool = False) -> np.ndarray:
    """The split's images: memory-mapped read-only (nothing is read until touched), or read
    whole into memory.

    Read-only, not copy-on-write: Linux counts a private writable mapping against its memory
    commit limit as if every page might be copied, and refuses one larger than memory, which
    is the case this mapping is for.
    """
    path = index_path.with_name(index["images"])
    try:
        images = np.load(path, mmap_mode=None if in_memory else "r")
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            raise SplitFileError(
                f"{path} cannot be read ({exc}): {paths.rerun('preprocess')}"
            ) from None
        if in_memory:  # the caller maps it instead
            raise MemoryError(f"{path}: {exc}") from exc
        raise SplitFileError(
            f"{path} cannot be memory-mapped ({exc}): the process's address space is limited "
            "(`ulimit -v`) or the machine is out of memory; raise the limit or free memory"
        ) from None
    except ValueError as exc:
        raise SplitFileError(
            f"{path} cannot be read ({exc}): {paths.rerun('preprocess')}"
        ) from None
    if list(images.shape) != index["shape"] or images.dtype != np.uint8:
        raise SplitFileError(
            f"{path} holds {images.dtype} {list(images.shape)}, but {index_path} says uint8 "
            f"{index['shape']}: {paths.rerun('preprocess')}"
        )
    return images
