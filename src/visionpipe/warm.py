"""Warm stage starts: torch and the other heavy libraries imported once, by a background process
that forks a ready copy of itself for each stage.

    PYTHONPATH=src python -m visionpipe.warm stages/train.py

runs the stage script as `python stages/train.py` would (same arguments, working directory,
environment, standard streams and exit status), but in a child forked from a process that has
already imported torch, torch._dynamo, the ONNX exporter, DVCLive and their kind: each stage then
starts in a fraction of a second instead of several. The project's own modules are never
preloaded: the child imports them from the stage's PYTHONPATH, as a fresh process would, so DVC's
code deps keep their meaning.

The first stage that finds no warm process starts one (it lives on while it is used, and exits
after VISIONPIPE_WARM_IDLE seconds without work, 600 by default) and waits for it; that costs what
importing the libraries in the stage would have. One warm process serves one Python install, one
version of this file, one set of the environment variables that libraries read when imported
(threads, CUDA, Python's own), one set of process limits and one view of the files (a container
or sandbox with its own mounts has its own; `inherited_limits`): a change of any starts another.
VISIONPIPE_WARM=0 runs every stage in its own fresh process. Only on Linux; elsewhere stages
always run in their own process.

If the stage's command is killed, the warm process kills the stage and everything it started, as
the kill would have done to a stage running in the command's own process.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

# What the warm process imports before serving: the heavy third-party modules of the torch
# stages. Never visionpipe's own (they are the stages' DVC deps and change between runs).
PRELOAD = (
    "numpy",
    "torch",
    "torch._dynamo",  # torch.optim's first step and torch.export import it (seconds)
    "torch.export",
    "torch.onnx._internal.exporter._core",
    "torch.onnx._internal.exporter._registration",
    "onnx",
    "onnxscript",
    "dvclive",
    "dvc.repo",  # DVCLive opens the project's DVC repo and git
    "scmrepo.git",
    "hydra",  # the train stage composes conf/ to warn when params.yaml differs from it
    "torch.utils.tensorboard",
    "networkx",  # the ONNX exporter's
    "PIL.Image",
    "pydantic.main",
    "yaml",
    # What a stage imports the first time it uses a feature (about 1 s a stage otherwise):
    # train's DVCLive (DVC's experiments and params, git), hparams and image logs, ...
    "dvc.repo.experiments",
    "dvc.repo.metrics.show",
    "dvc.repo.params.show",
    "dvc.repo.plots",
    "dulwich.porcelain",
    "hydra._internal.core_plugins.basic_launcher",
    "tensorboard.plugins.hparams.api_pb2",
    "tensorboard.plugins.hparams.metadata",
    "PIL.ImageDraw",
    "PIL.ImageFont",
    "PIL.PngImagePlugin",
    # ... and export's torch.export and its decompositions. Not onnxruntime (the parity check's):
    # its import starts a native thread, which a forked stage would lack.
    "torch.export._trace",
    "torch._functorch.aot_autograd",
    "torch._export.serde.serialize",
    "torch.onnx._internal.exporter._compat",
    "torch.fx.experimental.validator",
    "sympy.combinatorics",
)
# Environment variables read when those modules load: a warm process serves only the values it
# was started with.
KEY_PREFIXES = (
    "CUBLAS",
    "CUDA",
    "CUDNN",
    "GOMP_",
    "KMP_",
    "LD_",
    "MKL_",
    "NCCL_",
    "NVIDIA_",
    "OMP_",
    "OPENBLAS_",
    "PYTHON",
    "PYTORCH_",
    "TORCH",
    "VISIONPIPE_WARM",
)
# Ctrl-C before a stage's own handling begins (waiting for the warm process, in its imports).
STARTING_INTERRUPTED = "interrupted (Ctrl-C) while the stage was starting; nothing was written"
START_TIMEOUT_S = 300  # a cold disk cache can make torch's first import take a minute


def enabled(env: dict[str, str]) -> bool:
    return env.get("VISIONPIPE_WARM", "1") != "0" and sys.platform == "linux"


def idle_seconds(env: dict[str, str]) -> float:
    raw = env.get("VISIONPIPE_WARM_IDLE", "600")
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(
            f"VISIONPIPE_WARM_IDLE={raw!r} is not a number of seconds: set it to e.g. 600"
        ) from None


def server_key(env: dict[str, str]) -> str:
    """Which warm process may run a stage for this install and environment."""
    site = sysconfig.get_paths()["purelib"]
    parts = [sys.executable, sys.version, str(os.getuid()), str(os.stat(site).st_mtime_ns)]
    # This file too: a warm process keeps running the code it started with.
    parts.append(hashlib.sha256(Path(__file__).read_bytes()).hexdigest())
    parts += sorted(
        f"{k}={v}" for k, v in env.items() if k.startswith(KEY_PREFIXES) and k != "PYTHONPATH"
    )
    parts += inherited_limits()
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def inherited_limits() -> list[str]:
    """What a forked stage inherits from the warm process, not from its command: priority, CPUs,
    resource limits, umask and control group. A warm process started by another command would
    run this one's stage free of its `nice`, `taskset`, `ulimit -v`/`-f`, or inside another
    batch job's cgroup (killed when that job ends); the one this command starts inherits them."""
    import resource

    limits = [
        f"{name}={resource.getrlimit(getattr(resource, name))}"
        for name in sorted(dir(resource))
        if name.startswith("RLIMIT_")
    ]
    mask = os.umask(0)
    os.umask(mask)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    limits += [f"cgroup={cgroup}", f"files={files_seen_by('self')}"]
    return [f"nice={os.nice(0)}", f"cpus={cpus}", f"umask={mask:o}", *limits]


def files_seen_by(pid: int | str) -> str:
    """Process `pid`'s mount namespace and root folder; "" when /proc cannot tell. The abstract
    socket address is shared by every process of a network namespace: a container run with the
    host's network, a chroot or an `unshare -m` sandbox reaches it too, yet sees other files
    (params.yaml, the repo, a read-only mount) under the same paths."""
    try:
        root = os.stat(f"/proc/{pid}/root")
        return f"{os.readlink(f'/proc/{pid}/ns/mnt')} root={root.st_dev}:{root.st_ino}"
    except OSError:
        return ""


def address(key: str) -> str:
    # Linux's abstract socket namespace: no file to leave behind; the address is freed when
    # the warm process exits, and binding it twice fails, so two starts cannot both serve.
    return f"\0visionpipe-warm-{key}"


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--serve":
        serve(argv[1])
        return
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m visionpipe.warm SCRIPT [ARGS...]")
    env = dict(os.environ)
    if "DVC_STAGE" in env and sys.platform == "linux":  # set by DVC for each stage's command
        # DVC killed alone (`kill <pid>`, a supervisor) leaves its stage's command running:
        # it would train on unseen, writing the workspace the next run writes too. SIGTERM
        # passes to the stage, which stops as on Ctrl-C.
        die_with_parent(os.getppid(), signal.SIGTERM)
    conn = None
    try:
        if enabled(env):
            idle_seconds(env)  # a bad setting is the user's to see, not the warm process's
            conn = connect(env)
        if conn is None:
            run_here(argv)  # the stage's own Ctrl-C handling starts after its imports
            return
    except KeyboardInterrupt:
        if env.get("VISIONPIPE_DEBUG"):
            raise
        print(STARTING_INTERRUPTED, file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # ended by SIGINT, as Python ends
        os.kill(os.getpid(), signal.SIGINT)
    status = run_there(conn, argv, env)
    if status < 0:  # the stage died of a signal: so does this process, for whoever waits on it
        if -status not in (signal.SIGKILL, signal.SIGSTOP):  # these two have no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


def run_here(argv: list[str]) -> None:
    """Run the script in this process, as `python SCRIPT ARGS...` would."""
    sys.argv = list(argv)
    sys.path[0] = str(Path(argv[0]).resolve().parent)
    runpy.run_path(argv[0], run_name="__main__")


def connect(env: dict[str, str]) -> socket.socket | None:
    """A connection to a ready warm process, started if there is none; None if none can serve."""
    key = server_key(env)
    started: subprocess.Popen | None = None
    gone_since: float | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(address(key))
        except OSError:
            conn.close()
            if started is None:
                started = _start_server(key)
            elif started.poll() is not None:
                # Exit 0: another warm process holds the address and answers within moments.
                # Otherwise it could not bind (a sandbox without abstract sockets) or preload.
                gone_since = gone_since or time.monotonic()
                if started.returncode != 0 or time.monotonic() - gone_since > 5:
                    return None  # run the stage here
            time.sleep(0.05)
            continue
        # An abstract address is anyone's to take: only a warm process of this user, among
        # these files, gets the stage's streams and environment (which may hold credentials).
        if not _own_kind(conn):
            conn.close()
            print(
                "visionpipe.warm: the warm process's address is held by a process of another"
                " user or container; running the stage in this process",
                file=sys.stderr,
            )
            return None
        # The warm process says "ready" once its imports are done; if it dies first, the stage
        # has not started and can run here instead.
        try:
            conn.settimeout(START_TIMEOUT_S)
            if conn.makefile("rb").readline() == b"ready\n":
                conn.settimeout(None)
                return conn
        except OSError:  # TimeoutError included: a warm process that never gets ready
            pass
        conn.close()
        return None
    return None


def _own_kind(conn: socket.socket) -> bool:
    """Whether the process at the other end of `conn` runs as this user and sees the files this
    process sees (pid 0: it is in a PID namespace this process cannot see into)."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    place = files_seen_by("self")
    return uid == os.getuid() and bool(place) and pid > 0 and files_seen_by(pid) == place


def log_path(key: str) -> Path:
    """Where the warm process of `key` writes its own errors: this user's cache folder, which
    no other user can plant a link in; removed when it exits having written nothing."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "visionpipe" / f"warm-{key}.log"


def _start_server(key: str) -> subprocess.Popen:
    env = dict(os.environ)
    # The warm process runs from / (a queued experiment's folder is deleted after it), so it
    # finds this module through an absolute path.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    log = log_path(key)
    try:
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        out: int | io.BufferedWriter = open(log, "ab")  # noqa: SIM115 (closed below)
    except OSError:  # a read-only home (a sandbox): its errors go nowhere, as they must
        out = subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "visionpipe.warm", "--serve", key],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def run_there(conn: socket.socket, argv: list[str], env: dict[str, str]) -> int:
    """Have the warm process run the stage with this process's streams; its exit status
    (negative: killed by that signal). Signals this process gets are passed on to the stage."""
    request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": env}).encode()
    socket.send_fds(conn, [struct.pack("!I", len(request)) + request], [0, 1, 2])

    def forward(signum: int, _frame: object) -> None:
        conn.sendall(struct.pack("!i", signum))

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:  # ignored (nohup's SIGHUP): not for the stage
            signal.signal(sig, forward)
    reply = conn.makefile("rb").readline()
    if not reply.startswith(b"exit "):
        print(
            "visionpipe.warm: the warm process ended before the stage did: killed (by the"
            " kernel's out-of-memory killer, or another process), or failed, saying why in"
            f" {log_path(server_key(env))}",
            file=sys.stderr,
        )
        return 1
    return int(reply.split()[1])


def serve(key: str) -> None:
    """Import the heavy libraries once, then fork a child per stage until idle for a while."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(key))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return  # another warm process holds this key's address and serves these stages
        raise  # no abstract sockets here (a sandbox): exit 1, and the stages run themselves
    listener.listen(64)  # stages that connect during the imports wait in the backlog
    own_path = set(_pythonpath())
    base_path = [p for p in sys.path[1:] if str(Path(p).resolve()) not in own_path]
    # Python's default SIGTERM/SIGHUP end the process at once, skipping the `finally` below that
    # kills the stages: they would train on, unseen by DVC, which was told they failed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    idle = idle_seconds(dict(os.environ))  # a bad setting fails before seconds of imports
    preload()
    server = _Server(listener, base_path, idle)
    try:
        server.loop()
    finally:  # a stage must not outlive the process that reports its end
        for pid in server.stages:
            _kill_tree(pid)
        forget_empty_log(key)


def forget_empty_log(key: str) -> None:
    """At an idle exit, or one on SIGTERM or SIGHUP: a log the warm process wrote nothing to
    goes (errors stay in it)."""
    with contextlib.suppress(OSError):
        if log_path(key).stat().st_size == 0:
            log_path(key).unlink()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def preload() -> None:
    import importlib
    import threading

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # an optional library this install lacks: its stages import it themselves
    keep_torchlib_ops()
    import torch

    if torch.cuda.is_initialized():
        # A forked child cannot use CUDA its parent initialised; each stage starts its own.
        raise SystemExit("visionpipe.warm: an import initialised CUDA; not serving")
    if threading.active_count() != 1:
        # fork() copies only the calling thread: a child could wait forever on a lock a
        # vanished thread held. Better no warm process than a hung stage.
        raise SystemExit("visionpipe.warm: an import started a thread; not serving")


def keep_torchlib_ops() -> None:
    """Every ONNX export builds its table of ATen->ONNX functions from torchlib's list of them,
    which onnxscript makes anew each time by parsing about 500 functions' sources (about 1 s):
    made once here, the list is what each forked stage's export builds from (about 0.1 s)."""
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis
        from torch.onnx._internal.exporter import _registration

        ops = onnxscript_apis.get_torchlib_ops()
        _registration.ONNXRegistry.from_torchlib()  # its other lookups, cached once
    except (ImportError, AttributeError):
        return  # another torch or onnxscript: each export makes the list itself
    onnxscript_apis.get_torchlib_ops = lambda: list(ops)  # the same functions, in a new list


class _Server:
    def __init__(self, listener: socket.socket, base_path: list[str], idle: float) -> None:
        self.listener, self.base_path, self.idle = listener, base_path, idle
        self.pid = os.getpid()
        self.stages: dict[int, socket.socket] = {}  # a running stage's pid -> its command
        self.sel = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        # A child's exit wakes the loop: SIGCHLD writes to the pipe the selector watches.
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._reap)

    def loop(self) -> None:
        last_busy = time.monotonic()
        while self.stages or time.monotonic() - last_busy < self.idle:
            for event, _ in self.sel.select(timeout=1.0):
                event.data(event.fileobj)
            if self.stages:
                last_busy = time.monotonic()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except ConnectionAbortedError:  # the command went before it was accepted
            return
        # Only this user's own stages run as this user, and only those that see the files this
        # process sees: the request's folder and script are paths.
        if not _own_kind(conn):
            conn.close()
            return
        try:
            conn.settimeout(10)
            conn.sendall(b"ready\n")
            request, fds = _receive(conn)
            conn.settimeout(None)
        except (OSError, ValueError):
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            self._become_stage(conn, request, fds)
        for fd in fds:
            os.close(fd)
        self.stages[pid] = conn
        self.sel.register(conn, selectors.EVENT_READ, functools.partial(self._from_command, pid))

    def _from_command(self, pid: int, conn: socket.socket) -> None:
        """A signal to pass on to the stage, or the command's end (killed): kill the stage."""
        if pid not in self.stages:
            return  # reaped earlier in this round of events
        try:
            data = conn.recv(4)
        except OSError:  # reset: the command went, data unread; its end all the same
            data = b""
        if len(data) == 4:
            _signal(pid, struct.unpack("!i", data)[0])
            return
        self.sel.unregister(conn)
        _kill_tree(pid)

    def _reap(self, wake_r: int) -> None:
        _drain(wake_r)
        for pid in list(self.stages):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            conn = self.stages.pop(pid)
            # OSError: the command is gone (killed), nobody waits for the status; KeyError: its
            # connection was unregistered when it went.
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            with contextlib.suppress(KeyError):
                self.sel.unregister(conn)
            conn.close()

    def _become_stage(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        """In the forked child: turn into the stage's process, run it, and exit. Never returns."""
        code = 1
        try:
            os.setpgid(0, 0)  # its own group, so the warm process can kill all it starts
            die_with_parent(self.pid)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.sel.close()
            for sock in (self.listener, *self.stages.values(), conn):
                sock.close()
            os.close(self.wake_r)
            _adopt(request, fds, self.base_path)
            code = _run_script(request["argv"])
        except BaseException:
            import traceback

            traceback.print_exc()  # on the command's stderr, once _adopt has taken it over
        finally:
            os._exit(code)


def parent_death_signal() -> int:
    """The signal the kernel is to send this process when its parent dies; 0 for none (Linux)."""
    import ctypes

    bound = ctypes.c_int(0)
    pr_get_pdeathsig = 2  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_get_pdeathsig, ctypes.byref(bound))
    return bound.value


def die_with_parent(parent_pid: int, signum: int | None = None) -> None:
    """Have the kernel send `signum` (SIGKILL if None) to this process when its parent
    `parent_pid` dies, even of a SIGKILL that runs none of its cleanup (Linux): a stage must not
    outlive the warm process that reports its end, nor a torchrun rank its torchrun, nor a
    stage's command its DVC. (SIGKILL is named here, not as the default: Windows has none, and
    `visionpipe predict` imports this module there.)"""
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(
        pr_set_pdeathsig, signal.SIGKILL if signum is None else signum
    )
    if os.getppid() != parent_pid:  # it died before the request took effect
        os._exit(1)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """The stage request (length-prefixed JSON) and the command's stdin, stdout and stderr."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(data) < 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("not a stage request")
    (size,) = struct.unpack("!I", data[:4])
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just ended; the reaper reports it
        os.kill(pid, signum)


def _kill_tree(pid: int) -> None:
    """SIGKILL the stage, its process group and every descendant (torchrun's ranks start
    sessions of their own), as killing the command would have killed an unwarmed stage."""
    import psutil

    try:
        victims = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue


def _pythonpath() -> list[str]:
    """This process's PYTHONPATH entries as absolute paths (relative ones from its folder)."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return [str(Path(p).resolve()) for p in entries if p]


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return


def _adopt(request: dict, fds: list[int], base_path: list[str]) -> None:
    """Take on the command's streams, folder, environment, arguments and module path, and forget
    the project modules this process imported (the stage imports its own copy's)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    _reopen_stdio()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tempfile

    tempfile.tempdir = None  # recomputed from this stage's TMPDIR
    argv = request["argv"]
    sys.argv = list(argv)
    sys.path[:] = [str(Path(argv[0]).resolve().parent), *_pythonpath(), *base_path]
    for name in [n for n in sys.modules if n == "visionpipe" or n.startswith("visionpipe.")]:
        del sys.modules[name]


def _reopen_stdio() -> None:
    """sys.stdin/stdout/stderr over the command's descriptors, buffered as Python buffers a
    fresh process's (stdout line by line on a terminal; stderr always)."""
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        writing = fd > 0
        raw = open(fd, "wb" if writing else "rb", buffering=0, closefd=False)  # noqa: SIM115
        stream = io.TextIOWrapper(
            io.BufferedWriter(raw) if writing else io.BufferedReader(raw),
            encoding=old.encoding,
            errors=old.errors,
            line_buffering=writing and (fd == 2 or os.isatty(fd)),
            write_through=writing and bool(os.environ.get("PYTHONUNBUFFERED")),
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_script(argv: list[str]) -> int:
    """Run the stage script as __main__ and return its exit status as a fresh process would
    (exit handlers run, streams flushed; a KeyboardInterrupt ends it by SIGINT)."""
    import atexit
    import traceback

    code = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # before the stage's own handling began: in its imports
        if os.environ.get("VISIONPIPE_DEBUG"):
            traceback.print_exc()
        else:
            print(STARTING_INTERRUPTED, file=sys.stderr)
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: its reader has gone
            stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main(sys.argv[1:])
