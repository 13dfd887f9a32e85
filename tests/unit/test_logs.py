"""The stage scripts' output as a log file or CI shows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import env
from visionpipe import logs

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


DVC_YAML = """\
stages:
  train:
    cmd: python stages/train.py
    outs:
      - models/model.pt
      - data/processed
      - metrics/train.json
    metrics:
      - dvclive/metrics.json:
          cache: false
"""


def test_outputs_git_tracks_that_dvc_caches_stop_the_stage_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A project committed under an older visionpipe kept metrics/train.json in git; DVC refuses
    # it ('already tracked by SCM') only after train ran. dvclive's metrics stay in git.
    monkeypatch.chdir(tmp_path)
    Path("dvc.yaml").write_text(DVC_YAML)
    for name in ("metrics/train.json", "data/processed/train.npy", "dvclive/metrics.json"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("{}")
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "add", "-A"], check=True)
    ran = []
    with pytest.raises(SystemExit) as stop:
        logs.run_stage(lambda: ran.append(True))
    assert stop.value.code == 1 and not ran
    line = "git rm -r --cached data/processed metrics/train.json'"
    assert line in caplog.text and "dvclive" not in caplog.text and "model.pt" not in caplog.text
    subprocess.run(["git", "rm", "-q", "-r", "--cached", "data", "metrics"], check=True)
    with pytest.raises(SystemExit) as stop:
        logs.run_stage(lambda: ran.append(True))
    assert stop.value.code == 0 and ran


def test_a_stage_whose_params_change_while_it_runs_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A second `dvc exp run -S train.lr=...` rewrites params.yaml before DVC tells it the
    # workspace is busy: the running stage's outputs must not be recorded with its lr.
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("train:\n  lr: 0.08\n")

    def second_run_meanwhile() -> None:
        Path("params.yaml").write_text("train:\n  lr: 0.09\n")

    with pytest.raises(SystemExit) as stop:
        logs.run_stage(second_run_meanwhile)
    assert stop.value.code == 1
    assert "params.yaml changed while this stage ran (another `dvc exp run`" in caplog.text
    assert "`dvc exp run --queue -S ...`, then `dvc queue start`" in caplog.text
    caplog.clear()
    with pytest.raises(SystemExit) as stop:  # the same bytes written again change nothing
        logs.run_stage(lambda: Path("params.yaml").write_text("train:\n  lr: 0.09\n") and None)
    assert stop.value.code == 0 and not caplog.text


def test_a_stage_whose_code_is_edited_while_it_runs_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DVC hashes a stage's deps when it ends: a fix saved during a long run would be recorded as
    # the code that made its outputs, and the `dvc repro` after it would run nothing.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "train")
    Path("dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python stages/train.py\n    deps:\n      - data/processed\n"
        "      - stages/train.py\n      - src/visionpipe/optim.py\n    outs:\n      - models\n"
    )
    for name in ("stages/train.py", "src/visionpipe/optim.py", "data/processed/x.bin"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("lr = 0.01\n")

    monkeypatch.setattr(logs, "SETTLE_S", 0.5)

    def fixed_meanwhile() -> None:
        Path("src/visionpipe/optim.py").write_text("lr = 0.02\n")
        Path("data/processed/x.bin").write_text("other data: DVC's own to notice\n")

    with pytest.raises(SystemExit) as stop:
        logs.run_stage(fixed_meanwhile)
    assert stop.value.code == 1
    assert "src/visionpipe/optim.py changed while this stage ran" in caplog.text, caplog.text
    assert "stages/train.py" not in caplog.text and "(`dvc repro`)" in caplog.text
    # Train's finished run keeps its checkpoint: with the edit undone, nothing trains again.
    assert "or undo the edit, and `dvc repro` writes this run's outputs" in caplog.text
    caplog.clear()
    with pytest.raises(SystemExit) as stop:
        logs.run_stage(lambda: Path("stages/train.py").write_text("lr = 0.01\n") and None)
    assert stop.value.code == 0 and not caplog.text
    # `dvc exp run --queue` stashes uncommitted code for a moment, then puts it back.
    Path("src/visionpipe/optim.py").write_text("lr = 0.03\n")
    monkeypatch.setattr(logs, "SETTLE_S", 2.0)

    def stashed_meanwhile() -> None:
        Path("src/visionpipe/optim.py").write_text("lr = 0.01\n")
        threading.Timer(0.5, Path("src/visionpipe/optim.py").write_text, ["lr = 0.03\n"]).start()

    with pytest.raises(SystemExit) as stop:
        logs.run_stage(stashed_meanwhile)
    assert stop.value.code == 0 and not caplog.text


def test_params_rewritten_for_a_moment_and_put_back_are_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dvc exp run --queue -S ...` composes params.yaml in the workspace, stashes it and puts the
    # running experiment's back: a stage ending an epoch meanwhile must go on.
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("train:\n  lr: 0.08\n")
    monkeypatch.setattr(logs, "_params_at_start", b"train:\n  lr: 0.08\n")
    Path("params.yaml").write_text("train:\n  lr: 0.09\n")
    restore = threading.Timer(0.5, lambda: Path("params.yaml").write_text("train:\n  lr: 0.08\n"))
    restore.start()
    try:
        assert not logs.params_changed()
    finally:
        restore.join()
    Path("params.yaml").write_text("train:\n  lr: 0.09\n")
    assert logs.params_changed(settle=0.5)


def test_a_non_ascii_name_under_an_ascii_locale_says_which_setting_to_change(
    tmp_path: Path,
) -> None:
    # LC_ALL=C with Python's UTF-8 mode and locale coercion off (some minimal images, cron):
    # file names are ASCII to this Python, and a data.source in "données" cannot be opened.
    script = tmp_path / "stage.py"
    script.write_text(
        "from pathlib import Path\n"
        "from visionpipe import logs\n"
        "logs.run_stage(lambda: Path('/tmp/donn\\u00e9es/photos').resolve())\n"
    )
    ascii_env = {**env(), "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    ascii_env.pop("VISIONPIPE_DEBUG", None)
    run = subprocess.run(
        [sys.executable, str(script)], env=ascii_env, capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "run with LANG=C.UTF-8" in run.stderr


def test_a_second_ctrl_c_while_the_stage_exits_adds_no_traceback(tmp_path: Path) -> None:
    # torch's exit handlers run after the stop message; a Ctrl-C pressed twice lands in them.
    script = (
        "import atexit, time\n"
        "from visionpipe import logs\n"
        "atexit.register(lambda: (print('exiting', flush=True), time.sleep(3)))\n"
        "def main():\n"
        "    raise KeyboardInterrupt\n"
        "logs.run_stage(main)\n"
    )
    e = {**env(), "PYTHONPATH": str(SRC)}
    e.pop("VISIONPIPE_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=e, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "exiting\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err, err


@pytest.mark.parametrize("stage", ["download", "preprocess", "predict"])
def test_a_ctrl_c_while_a_stage_s_libraries_load_is_one_line(tmp_path: Path, stage: str) -> None:
    # The stages DVC starts without the warm process import their libraries inside run_stage;
    # the Ctrl-C is made exact by a library whose import is interrupted.
    shim = tmp_path / "shim" / "pydantic"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise KeyboardInterrupt\n")
    e = {**env(), "PYTHONPATH": f"{shim.parent}:{SRC}"}
    e.pop("VISIONPIPE_DEBUG", None)
    script = SRC.parent / "stages" / f"{stage}.py"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=e, capture_output=True, text=True
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted (Ctrl-C)" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("stage", ["train", "predict"])
def test_a_stage_script_given_arguments_refuses_them_before_any_work(
    tmp_path: Path, stage: str
) -> None:
    # `python stages/train.py --help` had trained: a stage takes its settings from params.yaml.
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    script = SRC.parent / "stages" / f"{stage}.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        env={**env(), "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert f"{script} takes no arguments (got --help)" in done.stderr
    assert "dvc exp run -S key=value" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "nothing was written"


def test_a_name_s_control_characters_reach_the_terminal_escaped() -> None:
    # A zip member `ants/evil\x1b]0;PWNED\x07\x1b[2J.txt` named in a warning retitled the
    # terminal and cleared it; one with a newline forged a log line of its own.
    from visionpipe.names import listed

    assert listed(["ants/new\nline.jpg", "ok.jpg"]) == "ants/new\\nline.jpg, ok.jpg"
    # A right-to-left override shows what follows reversed: invoice\u202egpj.exe as a .jpg.
    assert (
        listed(["invoice\u202egpj.exe", "a\u2028b.jpg"]) == "invoice\\u202egpj.exe, a\\u2028b.jpg"
    )
    code = (
        "import logging; from visionpipe import logs; logs.setup(); "
        "logging.getLogger('visionpipe').warning('skipped %s\\nsee above', "
        "'ants/evil\\x1b]0;PWNED\\x07\\x1b[2J.txt')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env(), "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr, repr(done.stderr)
    assert "skipped ants/evil\\x1b]0;PWNED\\x07\\x1b[2J.txt\nsee above" in done.stderr
    code = code.replace("\\x1b]0;PWNED\\x07\\x1b[2J", "\\u202egpj.exe 猫 é")
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env(), "PYTHONPATH": str(SRC), "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert "skipped ants/evil\\u202egpj.exe 猫 é.txt\nsee above" in done.stderr, done.stderr


def test_a_stage_run_outside_dvc_says_dvc_lock_does_not_record_it(tmp_path: Path) -> None:
    # `python stages/evaluate.py`, then a commit: its metrics beside dvc.lock's older model.
    script = SRC.parent / "stages" / "predict.py"
    said = "runs outside DVC (not by `dvc repro` or `dvc exp run`): dvc.lock and DVC's cache"
    # A DDP rank: its launcher, the stage run by hand, said it once for all.
    for stage, outside, rank in (
        ("", True, {}),
        ("predict", False, {}),
        ("", False, {"LOCAL_RANK": "0"}),
    ):
        e = {**env(), "PYTHONPATH": str(SRC), "DVC_STAGE": stage, **rank}
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=e, capture_output=True, text=True
        )
        assert done.returncode == 1  # no params.yaml here: the stage's own error follows
        assert (said in done.stderr) is outside, done.stderr


def test_a_bad_param_under_dvc_says_dvc_removed_the_outputs_but_not_in_a_queued_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe.config import ConfigError

    monkeypatch.setenv("DVC_STAGE", "train")
    monkeypatch.chdir(tmp_path)
    assert "(DVC removed the train stage's outputs" in logs._outputs_removed(ConfigError("x"))
    # A queued run's copy of the project: the workspace's outputs are untouched.
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert logs._outputs_removed(ConfigError("x")) == ""


def test_a_stop_taken_leaves_its_copies_ignored_and_nohup_s_sighup_stays_ignored() -> None:
    """`uv run` passes a process group's SIGTERM on: the copy must not end the process before
    the stop is said. A SIGHUP that `nohup` made ignored stays so."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(logs.Stopped), logs.stops_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
        assert signal.getsignal(signal.SIGTERM) == logs._let_pass
        os.kill(os.getpid(), signal.SIGTERM)  # the copy: nothing happens
        logs.stop_said()  # said: a caller that goes on gets its handlers back
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup's
        with logs.stops_on_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the block goes on
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        # A block that ends without a stop gives the handlers back.
        with logs.stops_on_signals():
            pass
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_two_stop_signals_at_once_make_one_stop_and_no_race_report() -> None:
    """SIGHUP and SIGTERM pending together (a closed terminal and a supervisor): the second is
    let pass as the first unwinds; CPython's "Signal 15 ignored due to race condition" (a
    handler made SIG_IGN while its signal is pending) is not printed."""
    script = (
        "import os, signal\n"
        "from visionpipe import logs\n"
        "both = {signal.SIGHUP, signal.SIGTERM}\n"
        "try:\n"
        "    with logs.stops_on_signals():\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, both)\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)\n"
        "        for _ in range(10**6): pass\n"
        "except KeyboardInterrupt as e:\n"
        "    print(logs.stop_text(e))\n"
    )
    e = {**env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=e, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "('stopped by SIGHUP', 129)", done.stdout + done.stderr
    assert "race condition" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_warm_client_passes_no_signal_it_was_started_to_ignore() -> None:
    """`nohup dvc exp run`: the stage, forked from the warm process, gets no SIGHUP from it."""
    import socket

    from visionpipe import warm

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    ours, theirs = socket.socketpair()
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        theirs.sendall(b"exit 0\n")  # the warm process's reply, there already
        assert warm.run_there(ours, ["stages/train.py"], {}) == 0
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert callable(signal.getsignal(signal.SIGTERM))  # passed on
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        ours.close()
        theirs.close()
