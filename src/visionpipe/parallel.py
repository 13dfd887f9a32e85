"""Chunks of work spread over worker processes, their results handed back in input order.

`ordered_map` is `map` on all cores: the results, and their order, are those of a plain loop in
one process, so a preprocess on 2 or 64 cores writes the same bytes. It keeps a bounded number of
chunks in flight (unlike `Executor.map`, which submits everything at once), so memory does not
grow with the input.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    # Not fork: the parent has numpy's BLAS threads, and forking a threaded process can
    # deadlock (Python 3.12 warns about it). The fork server starts workers from a clean
    # process that has already imported the decoding modules.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "visionpipe.images"])
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_map(
    fn: Callable[[T], R], chunks: Iterable[T], workers: int, in_flight: int | None = None
) -> Iterator[R]:
    """`fn(chunk)` for each chunk, in order; in `workers` processes when above 1.

    `fn` must be a module-level function (or a partial of one): it is pickled to the workers.
    At most `in_flight` chunks (default 2 per worker) are submitted and not yet handed back.
    """
    if workers <= 1:
        yield from map(fn, chunks)
        return
    limit = in_flight or 2 * workers
    pool = ProcessPoolExecutor(workers, mp_context=_context())
    pending: deque[Future[R]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # On an error (or the caller stopping early) queued chunks are dropped, not decoded.
        pool.shutdown(wait=True, cancel_futures=True)
