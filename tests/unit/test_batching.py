"""The batcher: concurrent submissions share calls up to max_batch rows, each gets its own rows
back, and a failing call fails only the submissions in it."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from visionpipe.batching import Batcher, BatcherStopped


class Recorder:
    """A model that doubles its input and records the size of every call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.sizes.append(len(rows))
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError(f"bad row {self.fail_on}")
        return rows * 2


async def _submit_all(batcher: Batcher, requests: list[np.ndarray]) -> list[object]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.close()


def _requests(sizes: list[int]) -> list[np.ndarray]:
    start, out = 0, []
    for n in sizes:
        out.append(np.arange(start, start + n, dtype=np.float32))
        start += n
    return out


def test_concurrent_submissions_share_calls_and_get_their_own_rows() -> None:
    model = Recorder()
    requests = _requests([1, 2, 1, 3, 1, 1, 2, 1])
    answers = asyncio.run(_submit_all(Batcher(model, max_batch=4, wait_s=0.05), requests))
    for rows, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer, rows * 2)
    assert sum(model.sizes) == 12 and max(model.sizes) <= 4
    assert len(model.sizes) < len(requests)


def test_max_batch_one_is_one_call_per_row_and_large_requests_are_split() -> None:
    model = Recorder()
    answers = asyncio.run(_submit_all(Batcher(model, max_batch=1, wait_s=0.0), _requests([1, 3])))
    assert model.sizes == [1, 1, 1, 1]
    np.testing.assert_array_equal(answers[1], np.array([1, 2, 3]) * 2)
    model = Recorder()
    (answer,) = asyncio.run(_submit_all(Batcher(model, max_batch=4, wait_s=0.0), _requests([10])))
    assert model.sizes == [4, 4, 2]
    np.testing.assert_array_equal(answer, np.arange(10) * 2)


def test_a_failing_call_fails_only_its_submissions() -> None:
    model = Recorder(fail_on=0)
    batcher = Batcher(model, max_batch=1, wait_s=0.0)
    first, second = asyncio.run(_submit_all(batcher, _requests([1, 1])))
    assert isinstance(first, RuntimeError) and "bad row 0" in str(first)
    np.testing.assert_array_equal(second, [2.0])
    assert batcher.stats.calls == 1 and batcher.stats.images == 1


def test_a_request_that_ends_early_leaves_none_of_its_chunks_to_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client that hangs up cancels its request (serve's handler cancellation); one whose
    # first chunk fails gets its error. Either way its other chunks are not run.
    import time

    def slow(rows: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return model(rows)

    async def scenario(rows: np.ndarray, cancel: bool) -> None:
        batcher = Batcher(slow, max_batch=1, wait_s=0.0)
        await batcher.start()
        try:
            task = asyncio.create_task(batcher.submit(rows))
            await asyncio.sleep(0.08)  # the first chunk's call under way
            if cancel:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
            await asyncio.sleep(0.3)  # what the worker does next
        finally:
            await batcher.close()

    for cancel, fail_on in ((True, None), (False, 0)):
        model = Recorder(fail_on)
        with caplog.at_level("ERROR", logger="asyncio"):
            asyncio.run(scenario(np.arange(10, dtype=np.float32), cancel))
        assert len(model.sizes) <= 2, model.sizes  # the one under way, at most one beside it
    assert "never retrieved" not in caplog.text, caplog.text


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Batcher(Recorder(), max_batch=0, wait_s=0.0)


class _Crash(BaseException):
    """What no `except Exception` catches: the worker task dies of it."""


def test_a_dead_worker_fails_waiting_and_later_submissions_instead_of_leaving_them_hanging() -> (
    None
):
    def crash(rows: np.ndarray) -> np.ndarray:
        raise _Crash("boom")

    async def scenario() -> tuple[list[object], Batcher]:
        batcher = Batcher(crash, max_batch=1, wait_s=0.0)
        await batcher.start()
        first = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(r) for r in _requests([1, 1])), return_exceptions=True),
            timeout=10,
        )
        try:
            await batcher.submit(np.zeros(1, np.float32))
        except BatcherStopped as exc:
            first.append(exc)
        return first, batcher

    answers, batcher = asyncio.run(scenario())
    assert not batcher.alive
    assert len(answers) == 3 and all(isinstance(a, BatcherStopped) for a in answers), answers
    assert "boom" in str(answers[0]) and "not running" in str(answers[2])


def test_the_model_runs_in_its_own_thread_not_behind_the_loop_s_pool() -> None:
    # The server decodes images in threads too: a model call queued behind twenty 64-megapixel
    # decodes kept a tiny request waiting 31 s.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    async def scenario() -> np.ndarray:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        busy = [loop.run_in_executor(None, release.wait) for _ in range(4)]  # all taken
        batcher = Batcher(lambda rows: rows * 2, max_batch=8, wait_s=0)
        await batcher.start()
        try:
            return await asyncio.wait_for(batcher.submit(np.ones((1, 3))), timeout=10)
        finally:
            release.set()
            await asyncio.gather(*busy)
            await batcher.close()

    assert asyncio.run(scenario()).tolist() == [[2.0, 2.0, 2.0]]
