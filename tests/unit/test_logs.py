"""The stage scripts' output as a log file or CI shows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def test_stdout_and_the_log_keep_their_order_in_a_pipe() -> None:
    # `dvc repro | tee run.log` and CI read one pipe: a line printed before an error (torch hub's
    # "Downloading ...") must not land after the error that followed it.
    script = (
        "import logging, sys\n"
        "from visionpipe import logs\n"
        "def main():\n"
        "    print('Downloading: weights')\n"
        "    logging.getLogger('visionpipe').error('could not load the weights')\n"
        "    sys.exit(1)\n"
        "logs.run_stage(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout
    assert lines[0] == "Downloading: weights", lines
    assert lines[1].endswith("ERROR visionpipe: could not load the weights"), lines
