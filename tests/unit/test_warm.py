"""Stages started through `python -m visionpipe.warm` behave as `python SCRIPT` would: arguments,
folder, environment, streams, exit status, signals and kills, and the project's own modules from
the stage's PYTHONPATH. Each test checks that the script really ran in the warm process (its
parent is not the command), so a silent fallback to a plain run would fail it."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import can_unshare_mounts, env
from visionpipe import warm

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="warm starts are Linux-only")

SCRIPT = """
import os, sys
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("X", os.environ.get("X"))
print("parent", os.getppid(), "self", os.getpid())
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("CODE", "0")))
"""


def _env(**extra: str) -> dict[str, str]:
    # Its own warm process (the key includes VISIONPIPE_WARM_*), gone soon after the tests.
    return {**env(), "PYTHONPATH": str(ROOT / "src"), "VISIONPIPE_WARM_IDLE": "30", **extra}


def _warm(script: Path, *args: str, **kw: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "visionpipe.warm", script.name, *args]
    return subprocess.run(cmd, cwd=script.parent, capture_output=True, text=True, **kw)


def _field(out: str, name: str) -> str:
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(name + " "))


def test_a_script_runs_as_python_would_but_in_the_warm_process(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    plain = subprocess.run(
        [sys.executable, "stage.py", "a", "b c"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(X="1", CODE="7"),
    )
    warmed = _warm(script, "a", "b c", env=_env(X="1", CODE="7"))
    again = _warm(script, "d", env=_env(X="2"))
    assert (warmed.returncode, plain.returncode, again.returncode) == (7, 7, 0)
    for name in ("argv", "cwd", "X"):
        assert _field(warmed.stdout, name) == _field(plain.stdout, name)
    assert (_field(again.stdout, "argv"), _field(again.stdout, "X")) == ("['d']", "2")
    assert warmed.stderr == plain.stderr == "to stderr\n"
    parent = _field(warmed.stdout, "parent").split()[0]
    assert parent == _field(again.stdout, "parent").split()[0], "one warm process serves both"
    assert int(parent) != os.getpid()


def test_an_exception_prints_its_traceback_and_exits_1(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import os\nprint(os.getppid(), flush=True)\nraise RuntimeError('boom')\n")
    proc = _warm(script, env=_env())
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: boom" in proc.stderr
    assert int(proc.stdout) != os.getpid()


def test_off_switch_runs_the_script_in_the_command_itself(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "visionpipe.warm", "stage.py", "x"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=_env(VISIONPIPE_WARM="0")
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert _field(out, "parent").split()[2] == str(proc.pid)


def test_a_warm_process_that_cannot_serve_leaves_the_stage_to_the_command(tmp_path: Path) -> None:
    # The warm address bound by something that never answers (as a process that lost the start
    # race and hung would hold it): the warm process this command starts cannot bind it, and
    # after a few seconds the stage runs in the command itself, as with VISIONPIPE_WARM=0.
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    env_ = _env(VISIONPIPE_WARM_IDLE="31")  # a key no other test's warm process has
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter:
        squatter.bind(warm.address(warm.server_key(env_)))  # bound, never listening
        cmd = [sys.executable, "-m", "visionpipe.warm", "stage.py", "x"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env_)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and _field(out, "argv") == "['x']"
    assert _field(out, "parent").split()[2] == str(proc.pid), "ran in the command"


def _started(
    tmp_path: Path, body: str, env_: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int]:
    """A command running `body` warm, and the pid of the stage once it is running."""
    script = tmp_path / "sleeper.py"
    pid_file = tmp_path / "pid"
    script.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n{body}\n"
    )
    cmd = [sys.executable, "-m", "visionpipe.warm", script.name]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env_ or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (pid_file.is_file() and pid_file.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    stage = int(pid_file.read_text())
    assert stage != proc.pid
    return proc, stage


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_killing_the_command_kills_the_stage(tmp_path: Path) -> None:
    proc, stage = _started(tmp_path, "time.sleep(120)")
    proc.kill()  # SIGKILL: the command cannot pass anything on
    proc.wait()
    assert _gone(stage), "the stage outlived its command"


def test_ctrl_c_reaches_the_stage_and_the_command_ends_as_it_did(tmp_path: Path) -> None:
    proc, stage = _started(
        tmp_path,
        "try:\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    print('cleaned up')\n    raise",
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT
    # Uncaught at the script's top level, as in a stage's imports (logs.run_stage's handling
    # has not begun): one line, not a traceback through the imports.
    assert out == "cleaned up\n" and err == warm.STARTING_INTERRUPTED + "\n"
    assert _gone(stage)


def test_ctrl_c_in_a_stage_s_imports_run_here_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "importing.py"
    script.write_text("import time\nprint('importing', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionpipe.warm", script.name],
        cwd=tmp_path,
        env=_env(VISIONPIPE_WARM="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "importing\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (-signal.SIGINT, warm.STARTING_INTERRUPTED + "\n")


def test_a_stage_killed_outright_ends_its_command_as_killed(tmp_path: Path) -> None:
    # The OOM killer's SIGKILL: the command dies of it too, no traceback of its own.
    proc, stage = _started(tmp_path, "time.sleep(120)")
    os.kill(stage, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    assert "Traceback" not in err, err


def test_project_modules_come_from_each_stage_s_own_pythonpath(tmp_path: Path) -> None:
    """One warm process serves two copies of the project (two clones; a queued experiment's
    temporary copy): each stage must import its own copy's code."""
    outputs = []
    for name in ("a", "b"):
        src = tmp_path / name / "src"
        shutil.copytree(ROOT / "src" / "visionpipe", src / "visionpipe")
        (src / "visionpipe" / "marker.py").write_text(f"COPY = {name!r}\n")
        script = tmp_path / name / "stage.py"
        script.write_text(
            "import os\nfrom visionpipe import marker\nprint(marker.COPY, os.getppid())\n"
        )
        proc = _warm(script, env=_env(PYTHONPATH=str(src)))
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.split())
    (copy_a, parent_a), (copy_b, parent_b) = outputs
    assert (copy_a, copy_b) == ("a", "b")
    assert parent_a == parent_b, "both ran in one warm process"


def test_the_warm_process_is_chosen_by_install_and_import_time_settings() -> None:
    base = {"PATH": "/usr/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": "src"}
    key = warm.server_key(base)
    # What differs between stages and clones, and is read after start: same process.
    assert warm.server_key({**base, "PYTHONPATH": "/other/src", "DVC_EXP_NAME": "x"}) == key
    # Read when torch loads: another process.
    assert warm.server_key({**base, "OMP_NUM_THREADS": "2"}) != key
    assert warm.server_key({**base, "CUDA_VISIBLE_DEVICES": ""}) != key
    assert warm.server_key({**base, "PYTHONHASHSEED": "0"}) != key


def test_a_stage_keeps_its_command_s_priority_and_limits(tmp_path: Path) -> None:
    # `nice -n 10 dvc repro` on a shared machine, `ulimit -f`: a warm process started without
    # them must not run the stage; the command's own warm process inherits them.
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, resource\n"
        "print('nice', os.nice(0))\n"
        "print('fsize', resource.getrlimit(resource.RLIMIT_FSIZE)[0])\n"
        "print('parent', os.getppid())\n"
    )
    assert _warm(script, env=_env()).returncode == 0  # a warm process without them, running

    def limited() -> None:
        os.nice(10 - os.nice(0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, resource.RLIM_INFINITY))

    proc = _warm(script, env=_env(), preexec_fn=limited)
    assert proc.returncode == 0, proc.stderr
    assert (_field(proc.stdout, "nice"), _field(proc.stdout, "fsize")) == ("10", str(1 << 30))
    assert int(_field(proc.stdout, "parent")) != os.getpid()


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare -m` (root, CAP_SYS_ADMIN)")
def test_a_stage_in_another_mount_namespace_runs_among_its_own_files(tmp_path: Path) -> None:
    # A container on the host's network, an `unshare -m` sandbox: same socket address space,
    # other files under the same paths. The host's warm process must not run its stage.
    (tmp_path / "seen.txt").write_text("host's file")
    (tmp_path / "other.txt").write_text("the sandbox's file")
    script = tmp_path / "probe.py"
    script.write_text(
        "import os\nprint('seen', open('seen.txt').read())\nprint('parent', os.getppid())\n"
    )
    host = _warm(script, env=_env())
    assert (host.returncode, _field(host.stdout, "seen")) == (0, "host's file"), host.stderr
    # The host's warm process, asked directly from the sandbox, hangs up without serving.
    ask = (
        "import socket, sys; from visionpipe import warm; s = socket.socket(socket.AF_UNIX);"
        " s.connect(warm.address(sys.argv[1])); print('answer', s.makefile('rb').readline())"
    )
    inside = (
        f"mount --bind other.txt seen.txt && {sys.executable} -m visionpipe.warm probe.py"
        f' && {sys.executable} -c "$0" {warm.server_key(_env())}'
    )
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", inside, ask],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert _field(run.stdout, "seen") == "the sandbox's file"
    assert _field(run.stdout, "parent") != _field(host.stdout, "parent")
    assert _field(run.stdout, "answer") == "b''"


SQUATTER = """
import socket, sys
from visionpipe import warm
listener = socket.socket(socket.AF_UNIX)
listener.bind(warm.address(sys.argv[1]))
listener.listen()
print("listening", flush=True)
listener.settimeout(60)
conn, _ = listener.accept()
conn.settimeout(5)
try:
    conn.sendall(b"ready\\n")
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
except OSError:  # the stage hung up
    data, fds = b"", []
print("received", len(data), len(fds), flush=True)
"""


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare -m` (root, CAP_SYS_ADMIN)")
def test_a_stage_never_hands_its_streams_to_a_process_that_took_the_address(
    tmp_path: Path,
) -> None:
    # Any process can bind an abstract address first (another user on a lab server, a
    # container on the host's network): the stage must not send it its environment and
    # terminal, and runs in its own process instead.
    stage_env = _env(VISIONPIPE_WARM_IDLE="31")  # a key no other test's warm process holds
    key = warm.server_key(stage_env)
    squatter = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SQUATTER, key],
        env=stage_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "listening\n"
        script = tmp_path / "probe.py"
        script.write_text("import os\nprint('pid', os.getpid())\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "visionpipe.warm", script.name],
            cwd=tmp_path,
            env=stage_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert int(_field(out, "pid")) == proc.pid, "the stage ran in its own command"
        assert "held by a process of another user or container" in err
        answer, _ = squatter.communicate(timeout=30)
        assert "received 0 0" in answer, answer
    finally:
        squatter.kill()
        squatter.wait()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("warmed", [False, True], ids=["plain", "warm"])
def test_a_stage_stops_when_its_dvc_is_killed(tmp_path: Path, warmed: bool) -> None:
    # `kill <dvc's pid>` (a supervisor, another terminal) kills DVC alone: its stage trained on,
    # unseen, writing the workspace the next run writes too.
    (tmp_path / "stage.py").write_text(
        "import os, time\nfrom pathlib import Path\nfrom visionpipe import logs\n"
        "def main():\n"
        "    Path('pid.tmp').write_text(str(os.getpid()))\n"
        "    os.replace('pid.tmp', 'stage.pid')\n"
        "    time.sleep(60)\n"
        "logs.run_stage(main)\n"
    )
    (tmp_path / "dvc.py").write_text(  # stands in for DVC: runs the stage, waits
        "import subprocess, sys\nsubprocess.run(sys.argv[1:], stderr=open('stage.err', 'w'))\n"
    )
    launcher = [sys.executable, "-m", "visionpipe.warm"] if warmed else [sys.executable]
    command = [sys.executable, "dvc.py", *launcher, "stage.py"]
    dvc = subprocess.Popen(command, cwd=tmp_path, env=_env(DVC_STAGE="train"))
    pid_file = tmp_path / "stage.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        dvc.kill()
        dvc.wait()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the stage outlived its DVC"
        if not warmed:  # the warm stage's stderr belongs to its command, gone too
            assert "stopped by SIGTERM" in (tmp_path / "stage.err").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_bad_idle_setting_is_named(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    proc = _warm(script, env=_env(VISIONPIPE_WARM_IDLE="soon"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "VISIONPIPE_WARM_IDLE='soon' is not a number of seconds" in proc.stderr


def test_no_warm_process_serves_after_an_import_that_would_not_survive_a_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread or an initialised CUDA context does not pass to a forked child: the warm process
    refuses to serve (its stages then run in their own processes) rather than hang or fail."""
    import threading

    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(SystemExit, match="initialised CUDA"):
        warm.preload()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(SystemExit, match="started a thread"):
            warm.preload()
    finally:
        stop.set()
        thread.join()


def _dead(pid: int, seconds: float = 10) -> bool:
    """Gone, or a zombie: killed, waiting for a reaper that a container's init may never be."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_warm_process_kills_its_stages(tmp_path: Path, sig: int) -> None:
    # Else the stage trains on, writing outputs, after DVC has been told it failed.
    import psutil

    # A warm process of its own (another key): the one the other tests share may be running
    # their stages in another xdist worker.
    cache = tmp_path / "cache"
    warm_env = _env(VISIONPIPE_WARM_IDLE="32", XDG_CACHE_HOME=str(cache))
    proc, stage = _started(tmp_path, "time.sleep(120)", warm_env)
    server = psutil.Process(stage).ppid()
    os.kill(server, sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "ended before the stage did" in err
    assert _dead(stage), "the stage outlived the warm process"
    if sig == signal.SIGTERM:  # (SIGKILL leaves it no time to tidy up)
        assert _dead(server) and not list(cache.glob("visionpipe/*.log")), "an empty log stays"


def test_a_command_s_reset_connection_ends_its_stage_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The loop's one thread serves every stage: an error reading one command's connection
    # must end that command's stage, not the warm process and every other stage with it.
    class Reset:
        def recv(self, n: int) -> bytes:
            raise ConnectionResetError(104, "Connection reset by peer")

    killed: list[int] = []
    monkeypatch.setattr(warm, "_kill_tree", killed.append)
    server = object.__new__(warm._Server)
    server.stages = {11: Reset(), 12: Reset()}
    server.sel = type("Sel", (), {"unregister": lambda self, conn: None})()
    server._from_command(11, server.stages[11])
    assert killed == [11]


def test_a_command_gone_before_it_was_accepted_leaves_the_warm_process_serving() -> None:
    class Listener:
        def accept(self) -> None:
            raise ConnectionAbortedError(103, "Software caused connection abort")

    server = object.__new__(warm._Server)
    assert server._accept(Listener()) is None  # no error: the loop goes on


def test_a_warm_process_that_fails_says_why_in_its_log_and_an_idle_one_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("VISIONPIPE_WARM_IDLE", "soon")  # refused before its imports
    failing = warm._start_server("test-failing")
    assert failing.wait(timeout=120) == 1
    log = warm.log_path("test-failing")
    assert log.parent == tmp_path / "visionpipe"
    assert "VISIONPIPE_WARM_IDLE='soon' is not a number of seconds" in log.read_text()
    warm.forget_empty_log("test-failing")
    assert log.is_file()  # what it said stays
    log.write_text("")
    warm.forget_empty_log("test-failing")  # as an idle exit does
    assert not log.exists()
