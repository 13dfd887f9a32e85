"""Atomic writes when the disk fills up: a clear message, and nothing half-written left."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, full_disk
from visionpipe import fsutil, logs, streams


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
        logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
    assert stopped.value.code == 1
    assert "no space left on the disk holding logs/events.out" in caplog.text
    assert "(.dvc/cache, or where `dvc cache dir` put it) keeps every output" in caplog.text
    assert caplog.text.rstrip().endswith("; the next `uv run dvc repro` resumes")

    def buggy() -> None:
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        logs.run_stage(buggy)


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        # A read-only models/: the atomic write's temporary file is what open() names.
        (
            PermissionError(errno.EACCES, "Permission denied", "{cwd}/models/.model.pt.k2x8.tmp"),
            "models/model.pt: permission denied (`ls -ld` it and its folder",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "metrics/train.json"),
            "metrics/train.json: read-only filesystem",
        ),
        # preprocess writes its arrays into atomic_dir's temporary folder.
        (
            OSError(errno.EFBIG, "File too large", "{cwd}/data/.processed.x9y8.tmp/train.npy"),
            "data/processed/train.npy: file too large for its filesystem (FAT32",
        ),
        # FAT32's 4 GiB or `ulimit -f`, under TensorBoard's writer, which names no file.
        (OSError(errno.EFBIG, "File too large"), "a write failed: file too large"),
    ],
)
def test_a_file_refused_for_good_is_one_line_naming_it(
    raised: OSError,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    if raised.filename:
        raised.filename = raised.filename.format(cwd=tmp_path)

    def stage() -> None:
        try:
            raise raised
        except OSError:
            raise RuntimeError("writer failed")  # noqa: B904 (the OSError is its context)

    with pytest.raises(SystemExit) as stopped:
        logs.run_stage(stage, interrupted=lambda: "the next `uv run dvc repro` resumes")
    assert stopped.value.code == 1
    assert said in caplog.text
    assert caplog.text.rstrip().endswith("; the next `uv run dvc repro` resumes")

    def unnamed() -> None:  # a process's EPERM, say: no file to blame, so a bug's traceback
        raise PermissionError(errno.EPERM, "Operation not permitted")

    with pytest.raises(PermissionError):
        logs.run_stage(unnamed)


def test_a_background_writer_s_refused_file_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # TensorBoard writes its event file from a thread of its own: its EFBIG came out as a
    # thread's traceback above the stage's one line.
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)

    def write() -> None:
        raise OSError(errno.EFBIG, "File too large")

    def stage() -> None:
        writer = threading.Thread(target=write)
        writer.start()
        writer.join()
        write()

    with pytest.raises(SystemExit):
        logs.run_stage(stage)
    assert caplog.text.count("a write failed: file too large") == 2  # the thread's, the stage's
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture
def stage_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test runs in `tmp_path` as a stage in its project folder, its errors shown as users
    see them (no VISIONPIPE_DEBUG traceback)."""
    monkeypatch.delenv("VISIONPIPE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.usefixtures("stage_folder")
def test_a_full_disk_under_a_temporary_folder_names_the_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # preprocess's arrays fill the disk inside atomic_dir's folder, gone when the user reads.
    def stage() -> None:
        temp = tmp_path / "data" / ".processed.q7w2.tmp" / "train.npy"
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))

    with pytest.raises(SystemExit):
        logs.run_stage(stage)
    assert "no space left on the disk holding data/processed/train.npy (" in caplog.text


@pytest.mark.usefixtures("stage_folder")
def test_a_full_device_the_system_names_no_file_for_is_not_blamed_on_the_project(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # multiprocessing's locks in a full /dev/shm: ENOSPC with no file name.
    def stage() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(SystemExit):
        logs.run_stage(stage)
    assert "no space left on a device this command writes to; not the project's" in caplog.text
    assert "/dev/shm" in caplog.text and "dvc gc" not in caplog.text


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.usefixtures("stage_folder")
def test_a_missing_file_is_a_user_error_only_when_named(
    named: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "[Errno 2] No such file or directory" alone (a missing /dev/shm) tells a user nothing.
    def stage() -> None:
        if named:
            (tmp_path / "gone.txt").read_text()
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

    with pytest.raises(SystemExit if named else FileNotFoundError):
        logs.run_stage(stage)
    assert ("gone.txt" in caplog.text) is named


def test_sizes_read_in_the_unit_that_fits() -> None:
    assert fsutil.size_text(812) == "812 bytes"
    assert fsutil.size_text(150 * 1024) == "150.0 KiB"
    assert fsutil.size_text(3.5 * 2**20) == "3.5 MiB"
    assert fsutil.size_text(1.25 * 2**30) == "1.2 GiB"


def _record_syncs(monkeypatch: pytest.MonkeyPatch, events: list[str], fail: int = 0) -> None:
    """Log each fsync (by path) and rename into `events`; with `fail`, fsync raises that errno."""
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("sync " + os.readlink(f"/proc/self/fd/{fd}"))
        if fail:
            raise OSError(fail, os.strerror(fail))
        real_fsync(fd)

    def replace(src: Path | str, dst: Path | str) -> None:
        events.append(f"rename {src} -> {dst}")
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    monkeypatch.setattr(fsutil.os, "replace", replace)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fds' paths from /proc")
def test_a_written_file_is_on_the_disk_before_its_name_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power cut after the rename but before the data is flushed leaves an empty file under the
    # output's name: the data is synced first, the folder holding the new name after.
    events: list[str] = []
    _record_syncs(monkeypatch, events)
    fsutil.write_json(tmp_path / "metrics.json", {"acc": 0.5})
    tmp = events[0].removeprefix("sync ")
    assert events == [
        f"sync {tmp}",
        f"rename {tmp} -> {tmp_path / 'metrics.json'}",
        f"sync {tmp_path}",
    ]

    events.clear()
    with fsutil.atomic_dir(tmp_path / "processed") as out:
        (out / "sub").mkdir()
        (out / "sub" / "x.pt").write_bytes(b"x")
        (out / "y.pt").write_bytes(b"y")
    synced = {e.removeprefix("sync ") for e in events[:-2]}
    assert synced == {str(out), str(out / "sub"), str(out / "sub" / "x.pt"), str(out / "y.pt")}
    assert events[-2:] == [f"rename {out} -> {tmp_path / 'processed'}", f"sync {tmp_path}"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fds' paths from /proc")
def test_a_flush_that_fails_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"the last good model")
    # Network filesystems report a full disk when the data is flushed, not when it is written.
    _record_syncs(monkeypatch, [], fail=errno.ENOSPC)
    with pytest.raises(fsutil.DiskFullError, match="no space left on the disk holding"):
        fsutil.save_torch(dest, {"w": torch.zeros(3)})
    _record_syncs(monkeypatch, [], fail=errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        fsutil.write_text(dest, "new")
    assert dest.read_bytes() == b"the last good model"
    assert list(tmp_path.iterdir()) == [dest]

    # A filesystem that cannot flush at all says EINVAL: the write goes on without it.
    _record_syncs(monkeypatch, [], fail=errno.EINVAL)
    fsutil.write_text(dest, "new")
    assert dest.read_text() == "new"


def test_json_files_hold_names_as_users_read_them(tmp_path: Path) -> None:
    # Class names from photo folders (猫, café) read as they are in metrics and predictions files;
    # a file name that is not UTF-8 keeps its bytes as JSON escapes, so the file stays UTF-8.
    obj = {"per_class": {"猫": 0.5, "café": None}, "file": "caf\udce9.jpg"}
    fsutil.write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_bytes().decode("utf-8")
    assert '"猫": 0.5' in text and '"café": null' in text
    assert '"caf\\udce9.jpg"' in text
    assert json.loads(text) == obj


def test_stale_temporaries_go_and_nothing_else(tmp_path: Path) -> None:
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"the model")
    (tmp_path / ".model.pt.a1b2.tmp").write_bytes(b"half a model")  # atomic_path's, killed
    (tmp_path / ".model.pt.c3d4.tmp").mkdir()  # atomic_dir's
    (tmp_path / ".model.pt.c3d4.tmp" / "x.npy").write_bytes(b"x")
    (tmp_path / ".other.pt.e5f6.tmp").write_bytes(b"another output's")
    fsutil.remove_stale_temps(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.e5f6.tmp", "model.pt"]


def test_git_ignores_what_a_killed_write_leaves(tmp_path: Path) -> None:
    # The README's `git add -A` must not commit half a model or 149 MB of decoded images.
    with pytest.raises(KeyboardInterrupt), fsutil.atomic_path(tmp_path / "x.onnx") as tmp:
        left = tmp.name
        raise KeyboardInterrupt
    left_dir = Path(tempfile.mkdtemp(prefix=".processed.", suffix=".tmp", dir=tmp_path)).name
    names = [f"models/{left}", f"data/{left_dir}/train.npy", "models/model.onnx.tmp"]
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.stdout.split() == names[:2]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder another group takes root")
def test_an_atomic_folder_in_a_group_shared_folder_stays_the_group_s(tmp_path: Path) -> None:
    # A project folder shared by a team (chgrp team; chmod 2775): what preprocess writes must
    # go on belonging to the team's group, or teammates cannot read data/processed.
    shared = tmp_path / "team"
    shared.mkdir()
    team_gid = 54321
    os.chown(shared, -1, team_gid)
    os.chmod(shared, 0o2775)
    with fsutil.atomic_dir(shared / "processed") as tmp:
        (tmp / "meta.json").write_text("{}")
    made = shared / "processed"
    assert made.stat().st_mode & stat.S_ISGID, "the folder keeps the setgid bit"
    assert (made / "meta.json").stat().st_gid == team_gid


def test_a_file_the_user_names_is_written_through_its_link_but_never_into_a_dvc_cache(
    tmp_path: Path,
) -> None:
    # `--json latest.json` where latest.json links to a dated file: the file gets the new bytes
    # and the link stays, as `>` writes. An output DVC links to its cache (cache.type symlink;
    # DVC 3's files/md5/ layout or DVC 2's) is replaced as a link, or the cache's recorded bytes
    # would change under it; so is every link under the pipeline's own writes.
    target, link = tmp_path / "2026-12.json", tmp_path / "latest.json"
    target.write_text("old")
    link.symlink_to(target.name)
    fsutil.write_text(fsutil.through_link(link), "new")
    assert link.is_symlink() and target.read_text() == "new"
    for layout in ("cache/files/md5", "cache2"):
        cached = tmp_path / layout / "ab" / ("c" * 30)
        cached.parent.mkdir(parents=True)
        cached.write_text("recorded")
        output = tmp_path / f"{layout.replace('/', '_')}.json"
        output.symlink_to(cached)
        fsutil.write_text(fsutil.through_link(output), "rewritten")
        assert not output.is_symlink() and output.read_text() == "rewritten"
        assert cached.read_text() == "recorded"
    pipeline = tmp_path / "metrics.json"
    pipeline.symlink_to(target)
    fsutil.write_text(pipeline, "the stage's")
    assert not pipeline.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()))
    reader.start()
    fsutil.write_text(fifo, "streamed")  # into the pipe: no temporary file beside it
    reader.join(timeout=30)
    assert read == ["streamed"] and not list(tmp_path.glob(".*.tmp"))


def test_a_filesystem_that_refuses_chmod_still_takes_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FAT or exFAT drive mounted with its defaults refuses chmod (EPERM; ENOSYS through
    # FUSE): every output failed, "operation not permitted", a temporary file left each time.
    def refused(path: object, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(fsutil.os, "chmod", refused)
    fsutil.write_json(tmp_path / "metrics" / "m.json", {"acc": 0.5})
    with fsutil.atomic_dir(tmp_path / "samples") as folder:
        (folder / "00_cat.png").write_bytes(b"png")
    assert json.loads((tmp_path / "metrics" / "m.json").read_text()) == {"acc": 0.5}
    assert (tmp_path / "samples" / "00_cat.png").read_bytes() == b"png"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_full_disk_names_dvc_s_cache_only_where_the_cache_is_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache on another disk (`dvc cache dir /mnt/big`): pruning it frees nothing here.
    from visionpipe import logs

    full = fsutil.DiskFullError(errno.ENOSPC, "no space left on the disk holding x", "ckpt/x")
    monkeypatch.chdir(tmp_path)
    for cache, said in ((tmp_path / "cache", True), (Path("/proc"), False), (None, False)):
        monkeypatch.setattr(fsutil, "dvc_cache_of", lambda folder, c=cache: c)
        if cache is not None:
            cache.mkdir(exist_ok=True)
        assert ("DVC's cache" in logs._disk_full_text(full)) is said, cache
        stdout_full = fsutil.DiskFullError(errno.ENOSPC, streams.STDOUT_FULL)  # `> /dev/full`
        assert "DVC's cache" not in logs._disk_full_text(stdout_full)
    assert os.stat("/proc").st_dev != os.stat(tmp_path).st_dev


def test_a_file_is_flushed_through_a_handle_that_may_write_it_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows' fsync (_commit) refuses a read-only handle with EBADF: every atomic write
    (predict's --json, --csv, --grid) would fail there."""
    target = tmp_path / "x.json"
    target.write_text("{}")
    opened: list[int] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object) -> int:
        opened.append(flags)
        return real_open(path, flags, *args)

    monkeypatch.setattr(fsutil.os, "open", recording_open)
    for windows in (False, True):
        monkeypatch.setattr(fsutil, "WINDOWS", windows)
        fsutil._fsync(target)
        assert bool(opened.pop() & os.O_RDWR) is windows
