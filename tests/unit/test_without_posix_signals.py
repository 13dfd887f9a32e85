"""`visionpipe predict` and `serve` where the system has only Windows' signals (SIGINT,
SIGTERM, no SIGKILL or SIGHUP) and its event loops' lack of add_signal_handler: emulated here by
a Python whose signal module and loop are cut down so, since the suite runs on Linux."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.helpers import ROOT, env

# Windows' signal module lacks these names; its loops raise NotImplementedError for
# add_signal_handler; os has no fork, getuid, O_NOCTTY or tcgetpgrp.
WINDOWS_LIKE = """
import asyncio, os, runpy, signal, sys
for name in ("SIGKILL", "SIGHUP", "SIGCHLD", "SIGSTOP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGPIPE"):
    delattr(signal, name)
def _unsupported(*args, **kwargs):
    raise NotImplementedError
asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = _unsupported
del os.fork, os.getuid, os.O_NOCTTY, os.tcgetpgrp
sys.argv[0] = "visionpipe"
runpy.run_module("visionpipe.cli", run_name="__main__", alter_sys=True)
"""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", WINDOWS_LIKE, *args]


def test_predict_runs(exported_model: Path, tmp_path: Path) -> None:
    Image.new("RGB", (20, 20), "red").save(tmp_path / "red.png")
    out = tmp_path / "out.json"
    cmd = _command("predict", "red.png", "--model", str(exported_model / "model.onnx"))
    done = subprocess.run(
        [*cmd, "--json", str(out)], cwd=tmp_path, env=env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())[0]["file"].endswith("red.png")
    version = subprocess.run(_command("--version"), env=env(), capture_output=True, text=True)
    assert version.stdout.startswith("visionpipe "), version.stderr[-3000:]


def test_serve_stops_on_ctrl_c_as_on_linux(exported_model: Path, tmp_path: Path) -> None:
    cmd = _command("serve", "--model", str(exported_model / "model.onnx"), "--port", "0")
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://" in line, log.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    assert "Traceback" not in log.read_text() and "Ctrl-C: stopping" in log.read_text(), (
        log.read_text()
    )
