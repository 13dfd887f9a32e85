"""Atomic writes when the disk fills up: a clear message, and nothing half-written left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import full_disk
from visionpipe import fsutil, logs


def test_a_full_disk_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"the last good model")
    # torch.save reports the disk only as the context of a RuntimeError about zip positions.
    monkeypatch.setattr(fsutil, "open", full_disk(room=1000), raising=False)
    with pytest.raises(fsutil.DiskFullError) as err:
        fsutil.save_torch(dest, {"w": torch.zeros(10_000)})
    assert f"no space left on the disk holding {dest}" in str(err.value)
    assert "free there" in str(err.value)
    assert dest.read_bytes() == b"the last good model"
    assert list(tmp_path.iterdir()) == [dest], "the temporary file must go"

    with pytest.raises(fsutil.DiskFullError, match=r"metrics\.json"):
        fsutil.write_json(tmp_path / "metrics.json", {"x": "y" * 5000})


def test_a_stage_stopped_by_a_full_disk_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)

    def stage() -> None:  # a library's writer (TensorBoard's, say) wraps the OSError
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "logs/events.out")
        except OSError:
            raise RuntimeError("event writer failed")  # noqa: B904 (the OSError is its context)

    with pytest.raises(SystemExit) as stopped:
        logs.run_stage(stage, interrupted="the next `uv run dvc repro` resumes")
    assert stopped.value.code == 1
    assert "no space left on the disk holding logs/events.out" in caplog.text
    assert "DVC's cache, .dvc/cache, keeps a copy of every output" in caplog.text
    assert caplog.text.rstrip().endswith("; the next `uv run dvc repro` resumes")

    def buggy() -> None:
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        logs.run_stage(buggy)


def test_sizes_read_in_the_unit_that_fits() -> None:
    assert fsutil.size_text(812) == "812 bytes"
    assert fsutil.size_text(150 * 1024) == "150.0 KiB"
    assert fsutil.size_text(3.5 * 2**20) == "3.5 MiB"
    assert fsutil.size_text(1.25 * 2**30) == "1.2 GiB"
