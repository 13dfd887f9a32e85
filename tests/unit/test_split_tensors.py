"""Training data in memory or memory-mapped: the same bytes, so the same weights."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.datasets import tiny_params, train_anew
from tests.helpers import ROOT
from visionpipe import memory, paths, split_files, split_tensors, train
from visionpipe.fsutil import size_text

MAPPED = "reading its batches from the memory-mapped"


def _weights() -> dict[str, torch.Tensor]:
    return torch.load(paths.MODEL, weights_only=True)["state_dict"]


def test_a_split_over_the_budget_stays_mapped_with_the_same_bytes(
    processed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_memory = split_tensors.load_training_data(torch.device("cpu"), budget=2**30)
    assert MAPPED not in caplog.text
    with caplog.at_level(logging.WARNING):
        mapped = split_tensors.load_training_data(torch.device("cpu"), budget=0)
    size = size_text(in_memory.train_x.numel())  # uint8: a byte an element
    assert f"train split is {size}, over the 0 bytes memory budget" in caplog.text
    assert "val split" in caplog.text and MAPPED in caplog.text
    assert torch.equal(in_memory.train_x, mapped.train_x)
    assert torch.equal(in_memory.val_x, mapped.val_x)
    assert torch.equal(in_memory.train_y, mapped.train_y)


def test_training_from_the_mapped_file_gives_the_same_weights(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    params = tiny_params(augment={"crop_padding": 2, "flip": True}, momentum=0.9)
    train.run(params)
    from_memory = _weights()
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "1KiB")
    with caplog.at_level(logging.WARNING):
        train_anew(params)
    assert MAPPED in caplog.text, "the small budget must force the memory-mapped path"
    from_file = _weights()
    assert all(torch.equal(from_memory[k], from_file[k]) for k in from_memory)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1024", 1024), ("1KiB", 1024), ("500 MB", 500_000_000), ("1.5GiB", 3 * 2**29)],
)
def test_memory_budget_sizes(text: str, expected: int) -> None:
    assert memory.parse_bytes(text) == expected


def test_a_bad_memory_budget_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="VISIONPIPE_MEMORY_BUDGET='lots' is not a size"):
        memory.memory_budget()


def test_the_mapped_split_is_only_read(processed: Path) -> None:
    """Mapped read-only (a split larger than memory cannot be mapped copy-on-write): every use
    of split images must make new tensors; a write would crash the process (SIGSEGV). Training
    is covered above; here the uses outside the batch path."""
    from tests.datasets import FAST_MODEL
    from visionpipe.inference import predict_logits
    from visionpipe.models import build_model

    mapped = split_tensors.load_training_data(torch.device("cpu"), budget=0)
    model = build_model(FAST_MODEL["name"], 3, 16, {}, [0.3] * 3, [0.2] * 3)
    model.prepare(mapped.train_x)  # airbench's whitening reads the train images
    logits = predict_logits(model, mapped.val_x, torch.device("cpu"), 8)
    assert logits.shape == (len(mapped.val_y), 3)


def test_a_split_that_does_not_fit_after_all_is_read_mapped(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A limit the budget cannot see (a cgroup v1 soft limit, overcommit): numpy's "Unable to
    # allocate" is a MemoryError, the kernel's refusal an OSError ENOMEM. Either way, mapped.
    expected = split_tensors.load_training_data(torch.device("cpu"), budget=0)
    real_load = split_files.np.load
    for refusal in (MemoryError("Unable to allocate 790. MiB"), OSError(errno.ENOMEM, "no")):

        def load(path: Path, mmap_mode: str | None = None, refusal: Exception = refusal) -> object:
            if mmap_mode is None:
                raise refusal
            return real_load(path, mmap_mode=mmap_mode)

        monkeypatch.setattr(split_files.np, "load", load)
        with caplog.at_level(logging.WARNING):
            data = split_tensors.load_training_data(torch.device("cpu"), budget=2**30)
        size = size_text(expected.train_x.numel())
        assert f"train split ({size}) did not fit in memory" in caplog.text
        assert torch.equal(data.train_x, expected.train_x)
        assert torch.equal(data.val_x, expected.val_x)
        caplog.clear()


def test_a_split_of_one_s_own_code_can_be_written_to(
    processed: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A notebook's `load_split("train")` and an in-place op on it (`x[0] = ...`, `mul_`): a
    # read-only mapping would crash the Python process (torch has no read-only tensors).
    stored = sorted((processed / paths.PROCESSED_DIR).glob("train*.npy"))
    before = [f.read_bytes() for f in stored]
    code = (
        "from visionpipe.split_tensors import load_split\n"
        "x, _ = load_split('train')\n"
        "x[0, 0, 0, 0] = 255\n"
        "x.mul_(1)\n"
        "print('written', int(x[0, 0, 0, 0]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=processed,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "written 255" in proc.stdout, (proc.returncode, proc.stderr)
    assert stored and [f.read_bytes() for f in stored] == before  # the file is untouched
    # A split over the memory budget is mapped, as the stages map it.
    opened: list[bool] = []
    real_open = split_files.open_images

    def open_images(index_path: Path, index: dict, in_memory: bool = False) -> object:
        opened.append(in_memory)
        return real_open(index_path, index, in_memory)

    monkeypatch.setattr(split_files, "open_images", open_images)
    in_memory, _ = split_tensors.load_split("train")
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "1")
    with caplog.at_level(logging.WARNING):
        mapped, _ = split_tensors.load_split("train")
    assert opened == [True, False] and torch.equal(mapped, in_memory)
    # The images' file, as the budget is weighed against it: the .npy header too.
    stored = list((Path.cwd() / paths.PROCESSED_DIR).glob("train*.npy"))
    said = [f"the train split ({size_text(f.stat().st_size)}) does not fit" for f in stored]
    assert any(line in caplog.text for line in said), caplog.text
    assert "the memory budget (1 bytes)" in caplog.text
    assert "read-only; a write into its images crashes Python" in caplog.text
