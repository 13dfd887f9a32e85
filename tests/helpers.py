"""Shared test helpers: a copy of the project as a fresh git+DVC repo, running DVC in it, and
copies of one baselined project for end-to-end tests to change."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_JPEG_ZIP = SHARED / "datasets" / "cifar10-jpeg.zip"
HYMENOPTERA_ZIP = SHARED / "datasets" / "hymenoptera_data.zip"
DOG_PNG = SHARED / "samples" / "dog.png"

# What a user's clone holds that the pipeline and its wheel (README.md: its description) need;
# outputs and caches are left behind.
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    ".gitignore",
    ".dvcignore",
)
PROJECT_DIRS = ("stages", "src", "plots_template", "conf")


def env(threads: int = 1) -> dict[str, str]:
    """The environment DVC stages see: this venv's python first on PATH, no GPU, quiet git,
    `threads` CPU threads per process."""
    e = dict(os.environ)
    # The suite runs in 2 processes on 2 cores: a second OpenMP thread per stage spins for a busy
    # core, and tiny-model training steps take about ten times as long.
    e["OMP_NUM_THREADS"] = str(threads)
    # A stage of several threads (a DDP rank alone on its "machine") beside the other worker:
    # OpenMP's threads that spin while they wait take the core the other one needs (a rank's
    # epoch took 2-9 s instead of 0.3 s; bench/omp_wait_policy.py: 13.5 s spinning, 9.4 s
    # passive). Passive waiting changes no result, only who waits.
    e["OMP_WAIT_POLICY"] = "PASSIVE"
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("GIT_AUTHOR_NAME", "test")
    e.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    e.setdefault("GIT_COMMITTER_NAME", "test")
    e.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    e["CUDA_VISIBLE_DEVICES"] = ""
    # The stages' warm process (visionpipe.warm) exits a minute after the suite's last stage.
    e["VISIONPIPE_WARM_IDLE"] = "60"
    e.pop("DATA_MIRROR", None)
    return e


@functools.cache
def can_unshare_mounts() -> bool:
    """Whether this process may start one in a mount namespace of its own (`unshare -m`: root,
    or CAP_SYS_ADMIN), as a container or sandbox has."""
    probe = ["unshare", "-m", "--propagation", "private", "true"]
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(probe, stderr=subprocess.DEVNULL).returncode == 0


def run(cmd: list[str], cwd: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=kw.pop("env", env()), capture_output=True, text=True, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def run_stage(name: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """stages/<name>.py run in `cwd` as dvc.yaml's command runs it, its output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=cwd,
        env={**env(), "PYTHONPATH": str(ROOT / "src"), **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# The warning of a stage that imported project code dvc.yaml does not list: the project's own
# stages never give it (a test that adds unlisted code on purpose calls run itself).
UNLISTED_CODE = "which dvc.yaml does not list among its deps"


def dvc(repo: Path, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    proc = run([sys.executable, "-m", "dvc", *args], repo, check=check, **kw)
    said = f"{proc.stdout or ''}{proc.stderr or ''}"
    assert UNLISTED_CODE not in said, f"dvc {' '.join(args)}: {said[-3000:]}"
    return proc


EXP_SHOW_HEADLINE = ("val_acc", "step", "test_loss", "test_acc")


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


def pipeline_skeleton(folder: Path) -> Path:
    """`folder` as a project of this pipeline looks to predict and the stages: a dvc.yaml and
    the stage scripts, empty (another DVC project has no stages/train.py)."""
    (folder / "stages").mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text("stages: {}\n")
    for stage in ("download", "preprocess", "train", "evaluate", "export", "predict"):
        (folder / "stages" / f"{stage}.py").touch()
    return folder


def make_project(dest: Path, params: dict[str, dict[str, Any]] | None = None) -> Path:
    """Copy the project into `dest` as a fresh git repo with DVC, params overridden, committed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    # conf/local/ is this machine's own settings (git-ignored): a user's clone has none.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "local")
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    git(dest, "init", "-q", "-b", "main")
    dvc(dest, "init", "-q")
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")  # dvc.yaml's templates
    if params:
        set_params(dest, params)
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest


def set_params(repo: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """Change defaults as a user would: in conf/config.yaml, then params.yaml composed anew."""
    from visionpipe.config.compose import compose_yaml

    conf = repo / "conf" / "config.yaml"
    data = yaml.safe_load(conf.read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    conf.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    (repo / "params.yaml").write_text(compose_yaml([], conf.parent))


# The baseline's training: two short epochs, enough for every stage to have something to show.
TINY_TRAIN = {"epochs": 2, "batch_size": 16, "log_every": 5}


@dataclass(frozen=True)
class Baseline:
    """A project whose first `dvc repro` ran on a tiny CIFAR-10 archive fetched over HTTP (with
    its sha256), committed as a user commits before experimenting."""

    repo: Path
    repro: str  # that first `dvc repro`'s stdout
    server: Server  # serves the archive for as long as the baseline is in use


def make_baseline(dest: Path, server: Server, archive: str) -> Baseline:
    """`dvc repro` on the `archive` that `server` serves, in a fresh project copy, committed."""
    sha256 = hashlib.sha256((server.directory / archive).read_bytes()).hexdigest()
    source = {"source": f"{server.url}/{archive}", "sha256": sha256}
    repo = make_project(dest, {"data": source, "train": TINY_TRAIN})
    out = dvc(repo, "repro").stdout
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline run")
    return Baseline(repo, out, server)


def copy_project(src: Path, dest: Path) -> Path:
    """What a clone of `src` holds after `dvc checkout` from `src`'s cache: git history, DVC's
    cache and run cache, the committed outputs. A finished run's checkpoint and DVC's temporary
    files stay behind."""

    def left_behind(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        if here == src:
            return {"checkpoints"} & set(names)
        if here == src / ".dvc":
            return {"tmp"} & set(names)
        return set()

    shutil.copytree(src, dest, symlinks=True, ignore=left_behind)
    return dest


def subset_zip(src: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """Copy the first N images per class of each split of an ImageFolder zip into a new zip."""
    taken: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) != 4 or parts[1] not in per_class:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < per_class[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                zout.writestr(info.filename, zin.read(info))
    return dest


@dataclass
class Server:
    """A local HTTP server of `directory`: its base URL and the path of every GET it answered."""

    directory: Path
    url: str
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[Server]:
    """Serve `directory` on 127.0.0.1 (an ephemeral port), counting the requests."""
    requests: list[str] = []
    handler = functools.partial(_QuietHandler, directory=str(directory), requests=requests)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(directory, f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (an ephemeral port); yields the base URL."""
    with serve(directory) as server:
        yield server.url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, requests: list[str], **kwargs: Any) -> None:
        self.requests = requests  # before super().__init__, which handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (posix path below `root` -> bytes), folders and all; returns `root`."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def full_disk(room: int) -> Any:
    """An `open` for binary and text writes onto a disk with `room` bytes left: patched in
    as `visionpipe.fsutil.open`, it fills the disk under every atomic write."""

    class FullFile(io.FileIO):
        def write(self, b: Any) -> int:
            if self.tell() + len(b) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    def fake_open(
        file: Any, mode: str = "r", encoding: str | None = None, errors: str | None = None
    ) -> Any:
        raw = FullFile(file, "w")
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding, errors=errors)

    return fake_open


def make_venv(path: Path) -> str:
    """A fresh virtual environment at `path` (uv's, which is `python -m venv` without pip's
    seconds of bootstrapping); its python."""
    uv = shutil.which("uv")
    assert uv, "making a virtual environment needs uv on PATH"
    run([uv, "venv", "-q", "--python", sys.executable, str(path)], path.parent)
    return str(path / "bin" / "python")


def install_pinned(python: str, wheel: Path) -> None:
    """`pip install WHEEL` into `python`'s environment, each dependency pinned to the version this
    environment has, so that uv takes it from its cache rather than the network."""
    import importlib.metadata

    pins = Path(wheel).with_suffix(".pins.txt")
    dists = importlib.metadata.distributions()
    pins.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in dists))
    uv = shutil.which("uv")
    assert uv, "installing a wheel needs uv on PATH"
    run([uv, "pip", "install", "-q", "--python", python, "-c", str(pins), str(wheel)], pins.parent)


def model_info(
    arch: str, classes: list[str], size: int, arch_params: dict[str, Any], mean: list[float]
) -> Any:
    """What a normalizing model.pt says of a test's model (std 0.25 per channel, no params)."""
    import torch

    from visionpipe.modelfile import ModelInfo

    return ModelInfo(
        arch=arch,
        num_classes=len(classes),
        image_size=size,
        arch_params=arch_params,
        normalize=True,
        mean=mean,
        std=[0.25] * 3,
        classes=classes,
        params={},
        visionpipe_version="test",
        torch_version=str(torch.__version__),
    )
