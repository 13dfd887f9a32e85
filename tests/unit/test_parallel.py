"""Worker processes: they end with the process that made them, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers import ROOT, env

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


def test_workers_end_when_the_stage_that_made_them_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(SCRIPT))
    stage = subprocess.Popen(
        [sys.executable, str(script)],
        env={**env(), "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the resource tracker's note on the semaphores left behind
        text=True,
    )
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
