"""Chunks of work spread over worker processes, their results handed back in input order.

`Workers.map` is `map` on all cores: the results, and their order, are those of a plain loop in
one process, so a preprocess on 2 or 64 cores writes the same bytes. It keeps a bounded number of
chunks in flight (unlike `Executor.map`, which submits everything at once), so memory does not
grow with the input. The processes start in the background when `Workers` is made, so they get
ready while the caller does its own first work.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _context() -> multiprocessing.context.BaseContext:
    # Not fork: the parent has numpy's BLAS threads, and forking a threaded process can deadlock
    # (Python 3.12 warns about it). The fork server imports the project's modules once and forks
    # each worker from that clean process; a worker still runs the main script's top level (as
    # multiprocessing does), which then finds its imports done.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(sorted(m for m in sys.modules if m.startswith("visionpipe.")))
        return ctx
    return multiprocessing.get_context("spawn")


def _start_fork_server() -> None:
    """Start the fork server (if this platform uses one) with Ctrl-C ignored, as it ignores it
    itself once its imports are done: a Ctrl-C meanwhile printed its KeyboardInterrupt traceback
    around the stage's one-line message. Its workers inherit that; this process's own Ctrl-C
    stops them (`Workers.__exit__`, or `_exit_with`)."""
    if _context().get_start_method() != "forkserver":
        return
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set a signal handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _exit_with(pid: int) -> None:
    """A worker's initializer: end the worker when process `pid`, which made the pool, ends. A
    stage killed with SIGKILL runs no cleanup, and its workers (children of the fork server,
    each holding the pipes that would tell them) would wait for work forever, keeping the fork
    server and its memory alive with them."""

    def watch() -> None:
        try:
            select.select([os.pidfd_open(pid)], [], [])  # readable once `pid` has ended
        except (AttributeError, OSError):  # no pidfd (not Linux, or `pid` already gone): poll
            while _alive(pid):
                time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return False
    return True  # or PermissionError: it exists, run by another user


def _pool(n: int) -> ProcessPoolExecutor | None:
    """`n` worker processes, or None where the system gives none: the pool's locks live in
    /dev/shm, which a container may have full (Docker's is 64 MB), read-only or missing."""
    try:
        return ProcessPoolExecutor(
            n, mp_context=_context(), initializer=_exit_with, initargs=(os.getpid(),)
        )
    except OSError as exc:
        log.warning(
            "worker processes cannot start (%s: their locks need a writable /dev/shm with "
            "space): working in this one process, slower but with the same result",
            exc,
        )
        return None


class Workers:
    """`n` worker processes (none for n <= 1: `map` then runs in this process)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool = _pool(n) if n > 1 else None
        if self._pool is None:
            self.n = 1
        # Starting a process waits for the fork server to import the project's modules (a
        # quarter of a second here): a thread does the waiting, so the caller goes on meanwhile.
        self._starting = threading.Thread(target=self._start, daemon=True)
        if self._pool is not None:
            _start_fork_server()
            self._starting.start()

    def _start(self) -> None:
        assert self._pool is not None
        try:
            for _ in range(self.n):
                self._pool.submit(int)  # a process per task while none is idle: n processes
        except Exception:  # `map`'s own submit meets the same error and raises it
            return

    def map(self, fn: Callable[[T], R], chunks: Iterable[T]) -> Iterator[R]:
        """`fn(chunk)` for each chunk, in order. `fn` must be a module-level function (or a
        partial of one): it is pickled to the workers. At most 2 chunks per worker are submitted
        and not yet handed back."""
        if self._pool is None:
            yield from map(fn, chunks)
            return
        self._starting.join()
        limit = 2 * self.n
        pending: deque[Future[R]] = deque()
        for chunk in chunks:
            pending.append(self._pool.submit(fn, chunk))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._starting.join()
            # After an error (or a caller that stopped early) queued chunks are dropped.
            self._pool.shutdown(wait=True, cancel_futures=True)
