"""Worker processes: they end with the process that made them, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, can_unshare_mounts, env

SCRIPT = """
import os, sys, time
from visionpipe.parallel import Workers

def pid(_):
    time.sleep(0.2)  # each worker takes one, so both answer
    return os.getpid()

if __name__ == "__main__":
    workers = Workers(2)
    print(*sorted(set(workers.map(pid, range(4)))), flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether `pid` runs: a zombie (ended, not yet reaped) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(tmp_path: Path, script: str, **options: Any) -> subprocess.Popen[str]:
    """`script` run as a stage runs, its stdout piped."""
    path = tmp_path / "stage.py"
    path.write_text(textwrap.dedent(script))
    env_ = {**env(), "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(path)]
    return subprocess.Popen(cmd, env=env_, stdout=subprocess.PIPE, text=True, **options)


def test_workers_end_when_the_stage_that_made_them_is_killed(tmp_path: Path) -> None:
    # stderr: the resource tracker's note on the semaphores left behind
    stage = _start(tmp_path, SCRIPT, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        pids += [int(p) for p in stage.stdout.readline().split()]
        assert len(pids) == 2 and all(map(_running, pids)), pids
        stage.send_signal(signal.SIGKILL)  # no cleanup runs: a laptop's OOM killer
        stage.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(map(_running, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, pids)), "the workers outlived the process that made them"
    finally:
        stage.kill()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


CTRL_C_SCRIPT = """
import os, time
from visionpipe.parallel import Workers

def pid(_):
    time.sleep(0.2)
    return os.getpid()

if __name__ == "__main__":
    with Workers(2) as workers:
        print(*sorted(set(workers.map(pid, range(4)))), flush=True)
        time.sleep(600)
"""


def _ignores_ctrl_c(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:"))[7:], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def test_ctrl_c_stops_the_stage_with_one_traceback_not_one_per_helper_process(
    tmp_path: Path,
) -> None:
    # A terminal's Ctrl-C reaches the whole process group: the fork server and its workers
    # too, each of which printed a KeyboardInterrupt traceback around the stage's own message.
    # A process group of its own, as a terminal's job.
    stage = _start(tmp_path, CTRL_C_SCRIPT, stderr=subprocess.PIPE, start_new_session=True)
    try:
        pids = [int(p) for p in stage.stdout.readline().split()]
        server = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert all(map(_ignores_ctrl_c, [server, *pids])), (server, pids)
        os.killpg(stage.pid, signal.SIGINT)
        _, err = stage.communicate(timeout=30)
    finally:
        stage.kill()
    assert stage.returncode != 0 and err.count("KeyboardInterrupt") == 1, err
    assert not any(map(_running, pids)), "a worker outlived the stage"


SHM = {  # /dev/shm as containers have it when workers cannot start
    "full": "mount -t tmpfs -o size=16k tmpfs /dev/shm",
    "read-only": "mount -t tmpfs -o ro tmpfs /dev/shm",
    "missing": "mount -t tmpfs tmpfs /dev",
}


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare -m` (root, CAP_SYS_ADMIN)")
@pytest.mark.parametrize("shm", sorted(SHM))
def test_without_a_usable_dev_shm_the_work_is_done_in_one_process(shm: str) -> None:
    script = (
        "import logging; logging.basicConfig()\n"
        "from visionpipe.parallel import Workers\n"
        "with Workers(2) as w: print('results', list(w.map(abs, [-1, -2, 3])), w.n)\n"
    )
    inside = f'{SHM[shm]} && "$0" -c "$1"'
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", inside, sys.executable, script],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "results [1, 2, 3] 1" in run.stdout
    assert "worker processes cannot start" in run.stderr and "/dev/shm" in run.stderr
