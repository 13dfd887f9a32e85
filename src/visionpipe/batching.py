"""Micro-batching for the prediction service: the images of concurrent requests in one model call.

Each onnxruntime call costs a fixed overhead (argument checks, waking its threads) on top of the
per-image work; a request that waits a moment for others shares that overhead with them. One
worker task takes the first waiting request, collects more until `max_batch` images or `wait_s`
seconds have passed, runs the model once in a thread (the event loop keeps accepting requests
meanwhile) and hands each request its own rows. Requests already queued when the worker becomes
free join the next call even with `wait_s` 0, so under load calls grow by themselves; with
`max_batch` 1 every image is a call of its own. bench/serve_load.py measures what it pays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchStats:
    """What the batcher has done since it started: model calls, images, the largest call."""

    calls: int = 0
    images: int = 0
    largest: int = 0


class BatcherStopped(RuntimeError):
    """The worker is not running (the server is stopping, or an error killed it): no call will
    answer a submission."""


@dataclass
class _Item:
    rows: np.ndarray
    done: asyncio.Future[np.ndarray] = field(repr=False)


class Batcher:
    """Runs `run(inputs) -> outputs` (row i of the outputs answers row i of the inputs) over the
    rows of concurrent `submit` calls, at most `max_batch` rows a call."""

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, wait_s: float
    ) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0; got {max_batch}, {wait_s}")
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: _Item | None = None  # the item that did not fit the last call
        self._worker: asyncio.Task[None] | None = None
        self._busy: list[_Item] = []  # the items of the call in progress
        # The model's own thread: in the loop's shared pool a call would wait behind whatever
        # else is queued there (the server's image decodes), the fastest request with it.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="model")

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="batcher")
        self._worker.add_done_callback(self._fail_waiting)

    def _fail_waiting(self, worker: asyncio.Task[None]) -> None:
        """A worker that stopped answers no one: fail every submission still waiting, rather
        than leave its request hanging."""
        cause = None if worker.cancelled() else worker.exception()
        error = BatcherStopped(
            f"the model worker has stopped: {cause!r}" if cause else "the server is stopping"
        )
        waiting = [*self._busy, *([self._held] if self._held else [])]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.done.done():
                item.done.set_exception(error)

    async def close(self) -> None:
        worker = self._worker
        # A worker that died has told those waiting why (_fail_waiting); awaiting it would raise.
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """The outputs for `rows`, from one or more batched calls (more when rows > max_batch)."""
        if not self.alive:
            raise BatcherStopped("the model worker is not running")
        loop = asyncio.get_running_loop()
        items = [
            _Item(rows[i : i + self.max_batch], loop.create_future())
            for i in range(0, len(rows), self.max_batch)
        ]
        for item in items:
            self._queue.put_nowait(item)
        try:
            return np.concatenate([await item.done for item in items])
        except BaseException:
            # Ended early (its client left, or a chunk's call failed): the chunks still queued
            # are work for nobody, and a later failure of one would be an exception no one reads.
            for item in items:
                item.done.cancel()
            raise

    async def _next(self, timeout: float) -> _Item | None:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Item]:
        """The first waiting item, then more until max_batch rows or wait_s seconds."""
        loop = asyncio.get_running_loop()
        first = self._held or await self._queue.get()
        self._held = None
        items, rows = [first], len(first.rows)
        deadline = loop.time() + self.wait_s
        while rows < self.max_batch:
            item = await self._next(deadline - loop.time())
            if item is None:
                break
            if rows + len(item.rows) > self.max_batch:
                self._held = item
                break
            items.append(item)
            rows += len(item.rows)
        return items

    async def _work(self) -> None:
        while True:
            items = await self._collect()
            # A request whose client went away was cancelled: no work for it.
            items = [item for item in items if not item.done.done()]
            if not items:
                continue
            self._busy = items
            try:
                inputs = np.concatenate([item.rows for item in items])
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._thread, self.run, inputs)
            except Exception as exc:  # handed to every waiting request, whose handler reports it
                for item in items:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.images += len(inputs)
            self.stats.largest = max(self.stats.largest, len(inputs))
            start = 0
            for item in items:
                if not item.done.done():
                    item.done.set_result(outputs[start : start + len(item.rows)])
                start += len(item.rows)
