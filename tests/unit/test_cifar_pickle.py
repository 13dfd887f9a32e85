"""cifar_pickle: the restricted unpickler refuses code, the fake archive round-trips."""

from __future__ import annotations

import os
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.cifar_archive import _py2_pickle, write_cifar_python_archive
from visionpipe.archive import iter_files, list_files
from visionpipe.cifar_pickle import (
    CLASSES,
    UnsafePickleError,
    is_cifar_python,
    load_batch,
    read_cifar_python,
)
from visionpipe.logs import is_user_error


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _Exec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


class _Popen:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce__(self) -> tuple[object, tuple[list[str]]]:
        return subprocess.Popen, (self.argv,)


# The refused global's name; its module is spelled the Python 2 way at protocol 2
# (__builtin__.exec), the Python 3 way at higher protocols (builtins.exec).
@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (lambda f: _System(f"touch {f}"), r"\.system"),
        (lambda f: _Exec(f"open({str(f)!r}, 'w').write('pwned')"), r"\.exec"),
        (lambda f: _Popen(["touch", str(f)]), r"\.Popen"),
    ],
)
def test_malicious_pickle_refused(
    tmp_path: Path, make: Callable[[Path], object], refused: str
) -> None:
    marker = tmp_path / "pwned"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        # Hidden inside a batch-like dict, as a tampered data_batch_1 would carry it. (str keys:
        # Python 3 writes bytes keys at protocol 2 through _codecs.encode, refused first.)
        data = pickle.dumps({"data": make(marker), "labels": []}, protocol=protocol)
        with pytest.raises(UnsafePickleError, match=rf"evil/data_batch_1.*{refused}"):
            load_batch(data, "evil/data_batch_1")
    assert not marker.exists()


def test_payload_is_real(tmp_path: Path) -> None:
    # Control: plain pickle does run the payload the restricted unpickler refuses above.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_System(f"touch {marker}"), protocol=2))
    assert marker.exists()


def test_refusal_is_an_unpickling_error() -> None:
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_malicious_member_refused_by_read_cifar_python(tmp_path: Path) -> None:
    src = tmp_path / "cifar.tar.gz"
    write_cifar_python_archive(src, n_train_per_batch=2, n_test=2)
    files = dict(iter_files(src))
    marker = tmp_path / "pwned"
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps(_System(f"touch {marker}"), 2)
    with pytest.raises(UnsafePickleError, match=r"batches\.meta"):
        read_cifar_python(files.items())
    assert not marker.exists()


def test_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_python_archive(src, n_train_per_batch=20, n_test=30, seed=3)
    names = list_files(src)
    assert is_cifar_python(names)
    data = read_cifar_python(iter_files(src))

    assert data.classes == list(CLASSES)
    assert data.train_images.shape == (100, 3, 32, 32)
    assert data.train_images.dtype == np.uint8
    assert data.test_images.shape == (30, 3, 32, 32)
    assert data.train_labels.dtype == np.int64 == data.test_labels.dtype
    assert np.bincount(data.train_labels).tolist() == [10] * 10  # 2 per class per batch
    assert np.bincount(data.test_labels).tolist() == [3] * 10

    # Official row layout: 1024 red, then green, then blue values, each row-major 32x32.
    batch = load_batch(dict(iter_files(src))["cifar-10-batches-py/data_batch_1"], "b1")
    assert set(batch) == {"batch_label", "labels", "data", "filenames"}
    assert batch["batch_label"] == b"training batch 1 of 5"
    row = batch["data"][0]
    assert np.array_equal(data.train_images[0, 1, 0, :], row[1024:1056])


def test_archive_is_deterministic(tmp_path: Path) -> None:
    write_cifar_python_archive(tmp_path / "a.tar.gz", 3, 2, seed=7)
    write_cifar_python_archive(tmp_path / "b.tar.gz", 3, 2, seed=7)
    write_cifar_python_archive(tmp_path / "c.tar.gz", 3, 2, seed=8)
    a = (tmp_path / "a.tar.gz").read_bytes()
    assert a == (tmp_path / "b.tar.gz").read_bytes()
    assert a != (tmp_path / "c.tar.gz").read_bytes()


def test_plain_pickle_reads_fake_archive_like_torchvision(tmp_path: Path) -> None:
    # torchvision reads the official files with pickle.load(f, encoding="latin1"); ours must too.
    src = tmp_path / "c.tar.gz"
    write_cifar_python_archive(src, 4, 2)
    raw = dict(iter_files(src))["cifar-10-batches-py/test_batch"]
    batch = pickle.loads(raw, encoding="latin1")
    assert batch["data"].shape == (2, 3072)
    assert batch["data"].dtype == np.uint8


def test_missing_member_lists_what_was_found(tmp_path: Path) -> None:
    src = tmp_path / "c.tar.gz"
    write_cifar_python_archive(src, 2, 2)
    files = {k: v for k, v in iter_files(src) if not k.endswith(("data_batch_3", "test_batch"))}
    with pytest.raises(ValueError, match=r"missing data_batch_3, test_batch; found .*data_batch_1"):
        read_cifar_python(files.items())


def test_is_cifar_python() -> None:
    assert is_cifar_python(["x/y/batches.meta"])
    assert is_cifar_python(["data_batch_1"])
    assert not is_cifar_python(["train/cat/1.png", "test/dog/data_batch_1.png"])


def test_py2_pickle_has_no_python3_bytes_global() -> None:
    # Python 3 pickles bytes via _codecs.encode at protocol 2; the real files never do.
    data = _py2_pickle({b"k": [b"v" * 300], b"data": np.zeros((1, 3072), np.uint8)})
    assert b"_codecs" not in data
    assert load_batch(data, "x")["k"] == [b"v" * 300]


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="broken/test_batch") as err:
        load_batch(b"not a pickle", "broken/test_batch")
    assert is_user_error(err.value)  # a stage says it in one line, with no traceback


def test_a_batch_cut_short_or_missing_is_an_error_a_stage_says_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "c.tar.gz"
    write_cifar_python_archive(src, 4, 2)
    files = dict(iter_files(src))
    files["cifar-10-batches-py/data_batch_1"] = files["cifar-10-batches-py/data_batch_1"][:200]
    with pytest.raises(ValueError, match="data_batch_1 is not a readable") as err:
        read_cifar_python(files.items())
    assert is_user_error(err.value)
    for labels in (None, [b"x", b"y"]):  # a batch without labels, or of text
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}
        files["cifar-10-batches-py/data_batch_1"] = _py2_pickle(batch)
        with pytest.raises(ValueError, match="data_batch_1: its labels are not") as err:
            read_cifar_python(files.items())
        assert is_user_error(err.value)
    del files["cifar-10-batches-py/test_batch"]
    with pytest.raises(ValueError, match="missing test_batch") as err:
        read_cifar_python(files.items())
    assert is_user_error(err.value)
