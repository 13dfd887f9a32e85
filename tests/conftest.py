"""Fixtures: tiny preprocessed datasets, a tiny exported model and a baselined DVC project, made on
the fly."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cifar_archive import write_cifar_python_archive
from tests.datasets import tiny_params, write_processed
from tests.helpers import ROOT, Baseline, Server, copy_project, make_baseline, serve
from visionpipe.config.params import parse_params


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # `-n N` hands tests out by worksteal: xdist gives each worker half the tests up front (here
    # the unit tests to one, the end-to-end ones to the other), and a worker that runs dry takes
    # half of the other's queue. Set here, not in addopts, so `-p no:xdist` (to debug) still runs.
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no":
        option.dist = "worksteal"


def pytest_configure(config: pytest.Config) -> None:
    # Under `pytest -n N` each worker has about one core: a second intra-op thread only waits
    # for a busy core, and tiny tensors' ops take several times as long (as the DVC stages the
    # tests start, which get OMP_NUM_THREADS=1 from tests.helpers.env).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _ctrl_c_handler() -> Iterator[None]:
    # A stage stopped in this process (logs.run_stage under test) ignores later Ctrl-Cs, as it
    # is exiting; the next test gets Python's handler back.
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="session")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photo to predict, made here (a colour gradient with a dark square): the tests that need
    any photo run without ../shared."""
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    pixels[12:30, 20:44] //= 4
    path = tmp_path_factory.mktemp("photo") / "dog.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def conf_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the project's conf/ (no machine settings); the test runs
    inside it, as `visionpipe params` does in a clone."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def processed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding tiny preprocessed splits; the test runs inside it."""
    write_processed(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def processed32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Like `processed`, at 32 px (vgg16's minimum): every model trains on it."""
    write_processed(tmp_path, n_train=40, n_val=8, n_test=8, size=32)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/model.pt and model.onnx of a briefly trained tutorial CNN (16 px, 3 classes)."""
    from visionpipe import export, train

    root = tmp_path_factory.mktemp("exported")
    write_processed(root)
    old = Path.cwd()
    os.chdir(root)
    try:
        train.run(tiny_params())
        export.run(parse_params({}).export.model_copy(update={"parity_images": 30}))
    finally:
        os.chdir(old)
    return root / "models"


@pytest.fixture(scope="session")
def cifar_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A tiny CIFAR-10 python archive (200 train, 60 test images) served over HTTP."""
    folder = tmp_path_factory.mktemp("served")
    write_cifar_python_archive(
        folder / "cifar-10-python.tar.gz", n_train_per_batch=40, n_test=60, seed=1
    )
    with serve(folder) as server:
        yield server


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory, cifar_server: Server) -> Baseline:
    """One `dvc repro` of the whole pipeline from the served archive, committed; made once per
    test process, read by the end-to-end tests and copied by `baselined_repo`."""
    dest = tmp_path_factory.mktemp("baseline") / "repo"
    return make_baseline(dest, cifar_server, "cifar-10-python.tar.gz")


@pytest.fixture
def baselined_repo(baseline: Baseline, tmp_path: Path) -> Path:
    """A copy of the baseline for one test to change: DVC's cache and run cache restore its
    stages instead of running them again."""
    return copy_project(baseline.repo, tmp_path / "repo")
