"""Logging set-up and the error handling shared by the stage scripts and the CLI."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from visionpipe import fsutil, paths, warm
from visionpipe.names import is_control

log = logging.getLogger("visionpipe")


_DVC_CACHE = (
    "DVC's cache (.dvc/cache, or where `dvc cache dir` put it) keeps every output's data "
    "(`dvc gc` prunes it, `dvc cache dir` moves it to another disk)"
)


def setup(level: int = logging.INFO) -> None:
    # Logs go to stderr, unbuffered; stdout (the predict table, torch hub's "Downloading" line)
    # is block-buffered when piped (`| tee`, CI) and would land after the error it preceded.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    # A terminal or locale that cannot show a class or file name (猫 in a latin-1 one) gets it
    # as \u732b rather than a traceback in place of the table, or of the error naming it.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler()
    handler.setFormatter(_Escaping("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])
    # The ONNX exporter's passes log every rewrite at INFO; keep the stage output readable.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Escaping(logging.Formatter):
    """Log lines with the control characters a name may hold escaped (a zip member named
    `a\x1b]0;title\x07.jpg` would retitle the terminal, `\x1b[2J` clear it); line breaks and
    tabs stay, as messages and tracebacks use them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "".join(c if c in "\n\t" or not is_control(c) else repr(c)[1:-1] for c in text)


def is_user_error(exc: BaseException) -> bool:
    """Errors raised by visionpipe for bad input carry a message a user can act on, as does a
    missing file the system names; one it does not name ("[Errno 2] No such file or
    directory" alone) says nothing a user can act on, and keeps its traceback."""
    if isinstance(exc, FileNotFoundError):
        return exc.errno is None or exc.filename is not None
    return type(exc).__module__.startswith("visionpipe.")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached a stage: a cancelled CI job, a batch scheduler's time limit,
    `timeout`, a closed terminal. Raised as Ctrl-C's KeyboardInterrupt is, so that the atomic
    writes' `finally` blocks remove their temporary files; Python's default for these signals
    ends the process on the spot and leaves them (a half checkpoint in checkpoints/)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    # The stop taken: its copies (`uv run` passes a process group's signal on) are let pass
    # while it unwinds and is said (stop_said gives the handlers back). A handler that does
    # nothing, not SIG_IGN: CPython reports a signal pending as its handler becomes SIG_IGN.
    for sig in stop_signals(interrupt=False):
        signal.signal(sig, _let_pass)
    raise Stopped(signum)


def _let_pass(_signum: int, _frame: object) -> None:
    """A stop signal's handler while a stop already taken is said and written: nothing."""


def stop_signals(interrupt: bool = True) -> tuple[signal.Signals, ...]:
    """The signals that ask a command to stop, those of this system: SIGINT (Ctrl-C) if
    `interrupt`, SIGTERM, and SIGHUP where there is one (a closed terminal; not on Windows)."""
    names = ("SIGINT", "SIGTERM", "SIGHUP") if interrupt else ("SIGTERM", "SIGHUP")
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


@contextlib.contextmanager
def stops_held(held: bool = True) -> Iterator[None]:
    """If `held`, SIGINT, SIGTERM and SIGHUP do nothing inside the block (in the main thread,
    where handlers are set): a stop already taken, whose work is being written, is not cut short
    by the next one; the former handlers come back after."""
    if not held or threading.current_thread() is not threading.main_thread():
        yield
        return
    former = {sig: signal.signal(sig, _let_pass) for sig in stop_signals()}
    try:
        yield
    finally:
        _give_back(former)


@contextlib.contextmanager
def stops_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` inside the block; the former handlers come back after,
    but for a block a stop ended: the process ends then, and a copy of the signal must not cut
    its last words short. A signal ignored already (`nohup`'s SIGHUP) stays ignored. (Windows
    has no SIGHUP.)"""
    stopping = [s for s in stop_signals(interrupt=False) if signal.getsignal(s) != signal.SIG_IGN]
    former = {sig: signal.signal(sig, _raise_stopped) for sig in stopping}
    try:
        yield
    except Stopped:
        _after_stop.update(former)  # let pass (_raise_stopped) until the stop is said
        raise
    except BaseException:
        _give_back(former)
        raise
    _give_back(former)


_after_stop: dict[signal.Signals, Any] = {}  # the handlers a stop's end gives back


def stop_said() -> None:
    """The handlers a stop let pass, given back once it is said: a caller that goes on (a
    notebook calling the CLI's main) is stopped by them again."""
    _give_back(_after_stop)
    _after_stop.clear()


def _give_back(handlers: dict[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _thread_error(args: threading.ExceptHookArgs) -> None:
    """A background writer's (TensorBoard's event thread) full disk or refused file in one
    line: the stage's next write fails too and stops it with the same message."""
    exc = args.exc_value
    found = (fsutil.disk_full_cause(exc) or fsutil.refused_cause(exc)) if exc else None
    if found is None or os.environ.get("VISIONPIPE_DEBUG"):
        threading.__excepthook__(args)
    elif found.errno in fsutil.FULL_ERRNOS:
        named = fsutil.output_name(found.filename) if found.filename else None
        log.warning("%s", fsutil.disk_full_message(named))
    else:
        log.warning("%s", fsutil.refused_message(found))


def _stop_with_dvc() -> None:
    """Under DVC (which sets DVC_STAGE), have the kernel send SIGTERM when DVC dies: killed
    alone (`kill <pid>`, a supervisor), DVC leaves its stage running on, unseen, writing the
    workspace that the next run writes too. Linux only; a process already bound to its parent's
    end (a warm stage, a torchrun rank) keeps that binding."""
    if "DVC_STAGE" in os.environ and sys.platform == "linux" and not warm.parent_death_signal():
        warm.die_with_parent(os.getppid(), signal.SIGTERM)


def run_stage(main: Callable[[], int | None], interrupted: Callable[[], str] | None = None) -> None:
    """Run a stage's main(): a user error prints its message (no traceback) and exits 1; Ctrl-C
    prints one line (plus `interrupted()`, what happens next) and exits 130, the shell's code
    for it, SIGTERM and SIGHUP likewise with 143 and 129; a full disk prints one line saying where
    and how much is free, a refused write (permissions, a read-only mount, a file-size limit) one
    saying which file and what to do (each plus `interrupted()`), exit 1. A params.yaml that
    changed while main() ran fails the stage too (`refuse_changed_params`).

    Set VISIONPIPE_DEBUG=1 to see the traceback anyway. Anything else is a bug and keeps its
    traceback.
    """
    setup()
    threading.excepthook = _thread_error
    _refuse_arguments(main)
    _say_if_outside_dvc(main)

    def then() -> str:  # asked when the stage stops: what it leaves may have changed meanwhile
        text = interrupted() if interrupted else ""
        return f"; {text}" if text else ""

    try:
        with stops_on_signals():
            _stop_with_dvc()
            paths.refuse_git_tracked_outputs()
            _refuse_unlisted_code()
            code = _run_watching_params(main)
            _warn_unlisted_code()
    except KeyboardInterrupt as exc:
        # Ctrl-C is an ordinary way to stop a run (train resumes from its checkpoint): the
        # traceback of wherever the loop happened to be would only bury that.
        if os.environ.get("VISIONPIPE_DEBUG"):
            raise
        _exit_interrupted(exc, then())
    except BrokenPipeError:  # `python stages/predict.py | head -1`: the reader has its lines
        sys.exit(stdout_gone())
    except Exception as exc:
        if os.environ.get("VISIONPIPE_DEBUG"):
            raise
        # torch.save, stopped mid-write, reports the stop as a RuntimeError about zip positions.
        stop = fsutil.find_cause(exc, lambda e: isinstance(e, KeyboardInterrupt))
        if stop is not None:
            _exit_interrupted(stop, then())
        full = fsutil.disk_full_cause(exc)
        if full is not None:
            # A full disk is the user's to fix, wherever the write was (DVCLive, TensorBoard).
            log.error("%s%s", _disk_full_text(full), then())
            sys.exit(1)
        refused = fsutil.refused_cause(exc)
        if refused is not None:  # a read-only folder or mount, a file-size limit
            log.error("%s%s", fsutil.refused_message(refused), then())
            sys.exit(1)
        if isinstance(exc, UnicodeError) and _ascii_locale():
            log.error("%s: %s", exc, ASCII_LOCALE)
            sys.exit(1)
        if not is_user_error(exc):
            raise
        log.error("%s%s", exc, _outputs_removed(exc))
        sys.exit(1)
    sys.exit(code or 0)


def _outputs_removed(exc: Exception) -> str:
    """For a stage DVC ran that stops on a bad param: DVC removed its outputs as it started it,
    which the error alone would leave a user to find in `ls models`."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or type(exc).__name__ != "ConfigError":
        return ""
    if paths.QUEUED_COPY in Path.cwd().as_posix():  # a queued run's copy: the workspace's stay
        return ""
    kept, same = paths.outputs_in_git(paths.dvc_stage() or stage)
    # From a sub-folder (DVC names the stage `../dvc.yaml:train`), git reads paths from there.
    up = posixpath.dirname(stage.rpartition(":")[0])
    kept = [posixpath.join(up, path) for path in kept]
    back = f"uv run dvc checkout --force {stage}" + (
        f" && git checkout -- {' '.join(kept)}" if same else ""
    )
    # After an experiment applied since the commit, git's copies are the commit's, not the last.
    unsaid = f"; not {', '.join(kept)}, which the next run writes" if kept and not same else ""
    return (
        f"\n(DVC removed the {stage} stage's outputs as it started it: the next run with the"
        f" value fixed makes them again, and `{back}` brings back the last ones meanwhile{unsaid})"
    )


def stdout_gone() -> int:
    """The exit status of a command whose stdout reader closed the pipe, after pointing stdout
    at nowhere (Python's own flush at exit then finds nothing to fail on): 141, 128 + SIGPIPE,
    what a shell reports for a command that signal stopped, as `yes | head -1` ends `yes`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def _refuse_arguments(main: Callable[[], int | None]) -> None:
    """Exit 2 where a stage script run as one (not a test's function) was given arguments:
    `--help`, `--epochs 3`, taken for nothing, would run the whole stage."""
    if main.__module__ != "__main__" or not sys.argv[1:]:
        return
    log.error(
        "%s takes no arguments (got %s): a stage reads its settings from params.yaml; set "
        "them with `dvc exp run -S key=value` or `visionpipe params key=value`",
        sys.argv[0],
        " ".join(sys.argv[1:]),
    )
    sys.exit(2)


def _say_if_outside_dvc(main: Callable[[], int | None]) -> None:
    """A stage script run as one, not by DVC (which names the stage in DVC_STAGE): say that
    dvc.lock will not record its outputs, whose metrics a commit would then show beside an
    older model."""
    script = main.__module__ == "__main__" and sys.argv[0].endswith(".py")
    rank = "LOCAL_RANK" in os.environ  # a DDP rank torchrun started: its launcher said it
    if script and not rank and not os.environ.get("DVC_STAGE"):
        log.info(
            "%s runs outside DVC (not by `dvc repro` or `dvc exp run`): dvc.lock and DVC's "
            "cache do not record what it writes; `uv run dvc commit` records the outputs as "
            "they are",
            sys.argv[0],
        )


ASCII_LOCALE = (
    "this Python reads and writes file names as ASCII (the C or POSIX locale, with Python's "
    "UTF-8 mode off), so a name with other letters cannot be used: run with LANG=C.UTF-8 "
    "(or PYTHONUTF8=1) set"
)


def _ascii_locale() -> bool:
    return codecs.lookup(sys.getfilesystemencoding()).name == "ascii"


def _disk_full_text(full: OSError) -> str:
    """Where the disk is full and what to do; the DVC cache's share of it where the full disk
    is a file's the stage writes (for a nameless one it is likely not the project's disk)."""
    if isinstance(full, fsutil.DiskFullError):  # names its file, or stdout
        return f"{full}{_cache_hint(full.filename) if full.filename else ''}"
    if not full.filename:
        return fsutil.disk_full_message(None)
    name = fsutil.output_name(full.filename)
    return f"{fsutil.disk_full_message(name)}{_cache_hint(name)}"


def _cache_hint(path: str | Path | None) -> str:
    """DVC's cache's share of a full disk, where the cache is on it."""
    return f". {_DVC_CACHE}" if path is None or fsutil.shares_disk_with_dvc_cache(path) else ""


class ParamsChangedError(RuntimeError):
    """params.yaml changed while a stage ran: its outputs are of the params before."""


class CodeChangedError(RuntimeError):
    """A code file of the stage changed while it ran: its outputs are of the code before."""


_params_at_start: bytes | None = None  # params.yaml as the running stage found it


def _read_params() -> bytes | None:
    try:
        return paths.PARAMS.read_bytes()
    except OSError:
        return None  # the stage's own loader says what is wrong with it


def _refuse_unlisted_code() -> None:
    """Refuse to run a DVC stage that imports project code dvc.yaml does not list among its deps
    (a model in a module of its own): an edit to it would re-run nothing."""
    stage = paths.dvc_stage()
    if stage and Path("dvc.yaml").is_file():
        paths.refuse_unlisted_code(stage, _loaded_files(), _script())


def _warn_unlisted_code() -> None:
    """Name the project code a stage imported while it ran (inside a function) that dvc.yaml
    does not list among its deps: its outputs are made, but an edit to it re-runs nothing."""
    stage = paths.dvc_stage()
    if (
        stage
        and Path("dvc.yaml").is_file()
        and (late := paths.unlisted_code(stage, _loaded_files(), _script()))
    ):
        log.warning(
            "stage %s imported %s as it ran, which dvc.yaml does not list among its deps: DVC"
            " will not re-run it when that code changes; add to the deps of %s in dvc.yaml:%s",
            stage,
            ", ".join(late),
            stage,
            "".join(f"\n      - {f}" for f in late),
        )


def _script() -> str | None:
    """The stage script running (`stages/train.py`, as the command names it)."""
    return sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else None


def _loaded_files() -> list[str]:
    return [f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))]


def _code_digests() -> dict[Path, str]:
    """The running DVC stage's code deps (dvc.yaml), each by the hash of its bytes."""
    stage = paths.dvc_stage()
    if not stage:
        return {}
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in paths.code_deps(stage)}


def _run_watching_params(main: Callable[[], int | None]) -> int | None:
    """main(), failed if params.yaml (`refuse_changed_params`) or the stage's code changes
    meanwhile."""
    global _params_at_start
    _params_at_start = _read_params()
    code_at_start = _code_digests()
    try:
        code = main()
        refuse_changed_params()
        if os.environ.get("LOCAL_RANK", "0") == "0":  # once a machine, not once per rank
            _refuse_changed_code(code_at_start)
        return code
    finally:
        _params_at_start = None  # a test's next stage in this process reads its own


# How long a change must stay to fail a stage: `dvc exp run --queue` rewrites params.yaml and
# stashes uncommitted code for a moment, then puts them back.
SETTLE_S = 5.0


def _stays_changed(changed: Callable[[], bool], settle: float) -> bool:
    """Whether `changed()` holds now and still after `settle` seconds, looked at 4 times a
    second: a change put back meanwhile is none."""
    deadline = time.monotonic() + settle
    while changed():
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.25)
    return False


def _refuse_changed_code(at_start: dict[Path, str]) -> None:
    """Fail a stage whose code was edited while it ran (and stays edited, `SETTLE_S`): DVC
    hashes its deps at the stage's end, and would record the edited code as what made these
    outputs, so that `dvc repro` after the edit runs nothing."""

    def changed() -> list[str]:
        now = _code_digests()
        return [str(f) for f, digest in at_start.items() if now.get(f) != digest]

    if not _stays_changed(lambda: bool(changed()), SETTLE_S):
        return
    undo = ""
    if paths.dvc_stage() == "train":  # its checkpoint outlives the failure
        undo = "; or undo the edit, and `dvc repro` writes this run's outputs, training nothing"
    raise CodeChangedError(
        f"{', '.join(changed())} changed while this stage ran: the stage stops rather than have"
        " DVC record its outputs as made by the edited code; run it again (`dvc repro`) to"
        f" make them with the code as it is now{undo}"
    )


def params_changed(settle: float = SETTLE_S) -> bool:
    """Whether params.yaml differs from what the running stage read at its start, and stays so
    for `settle` seconds (`SETTLE_S`)."""
    start = _params_at_start
    return start is not None and _stays_changed(lambda: _read_params() != start, settle)


def refuse_changed_params(kept: str = "") -> None:
    """Fail a stage whose params.yaml changed under it: DVC records the params it finds at the
    stage's end beside the outputs, and would pair these outputs with params they were not made
    with (a second `dvc exp run -S` in the same workspace rewrites params.yaml before it finds
    the first one running). `kept`: what the stage keeps for a later run."""
    if params_changed():
        raise ParamsChangedError(
            f"{paths.PARAMS} changed while this stage ran (another `dvc exp run` or `dvc repro`"
            " in this workspace?): the stage stops rather than have DVC record what it made"
            f" beside params it was not made with{kept}. Run one experiment at a time in a"
            " workspace, or queue several:"
            " `dvc exp run --queue -S ...`, then `dvc queue start`"
        )


def stop_text(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the command, in words, and its exit status: 128 + the signal, as a shell's."""
    if isinstance(exc, Stopped):
        return f"stopped by {signal.Signals(exc.signum).name}", 128 + exc.signum
    return "interrupted (Ctrl-C)", 128 + signal.SIGINT


def _exit_interrupted(exc: KeyboardInterrupt, then: str) -> NoReturn:
    # Stopping: a second Ctrl-C would only interrupt torch's exit handlers, with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    text, code = stop_text(exc)
    # torchrun passes a stop on to every rank of the machine: its local rank 0 says it once.
    if os.environ.get("LOCAL_RANK", "0") == "0":
        log.error("%s%s", text, then)
    sys.exit(code)
