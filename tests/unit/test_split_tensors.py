"""Training data in memory or memory-mapped: the same bytes, so the same weights."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.datasets import tiny_params
from visionpipe import memory, paths, split_files, split_tensors, train

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
    assert "train split is 0.00 GiB, over the 0.00 GiB memory budget" in caplog.text
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
        train.run(params)
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


def _group(root: Path, path: str, limit: str, usage: int, v1: bool = False) -> None:
    place = root / ("memory" if v1 else "") / path.lstrip("/")
    place.mkdir(parents=True, exist_ok=True)
    names = (
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
        if v1
        else ("memory.max", "memory.current")
    )
    (place / names[0]).write_text(f"{limit}\n")
    (place / names[1]).write_text(f"{usage}\n")


def test_a_container_s_memory_limit_bounds_the_budget(tmp_path: Path) -> None:
    # /proc/meminfo inside a container is the host's: the limit is in its cgroup, or above it.
    v2 = tmp_path / "v2"
    _group(v2, "/", "max", 0)
    _group(v2, "/job", str(4 * 2**30), 3 * 2**30)  # the limit is the parent's
    _group(v2, "/job/step", "max", 2**30)
    membership = tmp_path / "cgroup"
    membership.write_text("0::/job/step\n")
    assert memory.cgroup_headroom(v2, membership) == [2**30]
    v1 = tmp_path / "v1"
    _group(v1, "/", str(2**63 - 4096), 0, v1=True)  # v1's "no limit"
    _group(v1, "/docker/abc", str(2**31), 2**29, v1=True)
    membership.write_text("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert memory.cgroup_headroom(v1, membership) == [2**31 - 2**29]
    membership.write_text("0::/\n")
    assert memory.cgroup_headroom(v2, membership) == []


def test_ulimit_v_bounds_the_budget() -> None:
    # A process under `ulimit -v` gets at most what the limit leaves it, whatever the host has.
    script = (
        "import resource\n"
        "from visionpipe import memory\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status')"
        " if l.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**29, resource.RLIM_INFINITY))\n"
        "print(memory.available_memory())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert 2**28 < int(out.stdout) <= 2**29


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
        assert "train split (0.00 GiB) did not fit in memory" in caplog.text
        assert torch.equal(data.train_x, expected.train_x)
        assert torch.equal(data.val_x, expected.val_x)
        caplog.clear()
