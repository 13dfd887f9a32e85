"""A tiny fake of the official cifar-10-python.tar.gz, for tests: same layout, same pickle bytes."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionpipe.cifar_pickle import ARCHIVE_DIR, CLASSES, META, TEST_BATCH, TRAIN_BATCHES
from visionpipe.fsutil import atomic_path

_PIXELS = 3 * 32 * 32


def write_cifar_python_archive(
    dest: Path, n_train_per_batch: int, n_test: int, seed: int = 0
) -> None:
    """Write a tiny cifar-10-python.tar.gz look-alike at `dest`: same layout, same pickle format.

    Random uint8 pixels; labels 0..9 spread evenly (then shuffled); the real class names. The
    pickles use Python 2's protocol-2 opcodes for str, as the official files do. The same
    arguments always give the same bytes (gzip and tar mtimes are 0).
    """
    if n_train_per_batch < 1 or n_test < 1:
        raise ValueError(
            f"n_train_per_batch={n_train_per_batch} and n_test={n_test}: both must be >= 1"
        )
    rng = np.random.default_rng(seed)
    members: list[tuple[str, bytes]] = []
    for i, key in enumerate(TRAIN_BATCHES, start=1):
        label = f"training batch {i} of 5".encode()
        members.append((key, _py2_pickle(_fake_batch(rng, n_train_per_batch, label))))
    members.append(("readme.html", b"<html>fake CIFAR-10 for tests</html>\n"))
    members.append((TEST_BATCH, _py2_pickle(_fake_batch(rng, n_test, b"testing batch 1 of 1"))))
    meta = {
        b"num_cases_per_batch": n_train_per_batch,
        b"label_names": [c.encode() for c in CLASSES],
        b"num_vis": _PIXELS,
    }
    members.append((META, _py2_pickle(meta)))

    with (
        atomic_path(dest) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo(ARCHIVE_DIR)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(folder)
        for name, data in members:
            info = tarfile.TarInfo(f"{ARCHIVE_DIR}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def _fake_batch(rng: np.random.Generator, n: int, batch_label: bytes) -> dict[bytes, Any]:
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    return {
        b"batch_label": batch_label,
        b"labels": [int(x) for x in labels],
        b"data": rng.integers(0, 256, size=(n, _PIXELS), dtype=np.uint8),
        b"filenames": [f"{CLASSES[x]}_s_{i:06d}.png".encode() for i, x in enumerate(labels)],
    }


@dataclass(frozen=True)
class _Raw:
    """Opcodes emitted as they are (a GLOBAL, a reduced dtype) inside a tuple."""

    opcodes: bytes


def _py2_pickle(obj: Any) -> bytes:
    """Pickle `obj` as Python 2's cPickle (protocol 2) did for the official CIFAR-10 files.

    Python 3's pickler would write bytes through `_codecs.encode`, a global the restricted
    unpickler rightly refuses; Python 2 used plain string opcodes, emitted here by hand.
    """
    return b"\x80\x02" + _py2(obj) + b"."


def _py2(obj: Any) -> bytes:
    if isinstance(obj, bool) or obj is None:
        return {None: b"N", True: b"\x88", False: b"\x89"}[obj]
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + struct.pack("<B", obj)  # BININT1
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)  # BININT2
        return b"J" + struct.pack("<i", obj)  # BININT
    if isinstance(obj, bytes):
        if len(obj) < 256:
            return b"U" + struct.pack("<B", len(obj)) + obj  # SHORT_BINSTRING
        return b"T" + struct.pack("<I", len(obj)) + obj  # BINSTRING
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2(x) for x in obj) + b"t"  # MARK ... TUPLE
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(x) for x in obj) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(obj, dict):
        body = b"".join(_py2(k) + _py2(v) for k, v in obj.items())
        return b"}(" + body + b"u"  # EMPTY_DICT MARK ... SETITEMS
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        # What numpy 1's ndarray.__reduce__ gives, as Python 2 wrote it:
        # _reconstruct(ndarray, (0,), 'b') then BUILD with (version, shape, dtype, fortran, data).
        dtype = (
            b"cnumpy\ndtype\n"
            + _py2((b"u1", 0, 1))
            + b"R"  # REDUCE: dtype('u1', False, True)
            + _py2((3, b"|", None, None, None, -1, -1, 0))
            + b"b"  # BUILD: its __setstate__
        )
        state = (1, obj.shape, _Raw(dtype), False, obj.tobytes())
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            + _py2((_Raw(b"cnumpy\nndarray\n"), (0,), b"b"))
            + b"R"  # REDUCE
            + _py2(state)
            + b"b"  # BUILD
        )
    if isinstance(obj, _Raw):
        return obj.opcodes
    raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")
