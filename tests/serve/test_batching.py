"""MicroBatcher: concurrent submissions coalesced into one call, each gets its own rows."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from seqtwins.serve.batching import MicroBatcher


class SlowEncoder:
    """Row r -> [r[0], len(r)]; records the size of every call; each call takes ``delay``."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls: list[int] = []
        self.running = 0
        self.overlap = False
        self.lock = threading.Lock()

    def __call__(self, rows: list[np.ndarray]) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.overlap |= self.running > 1
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        self.calls.append(len(rows))
        return np.array([[r[0], len(r)] for r in rows], dtype=np.float32)


def rows_of(job: int, n: int) -> list[np.ndarray]:
    return [np.full(i + 1, job * 100 + i) for i in range(n)]


async def _run(batcher: MicroBatcher, jobs: list[list[np.ndarray]], stagger: float = 0.0):
    await batcher.start()
    try:
        tasks = []
        for rows in jobs:
            tasks.append(asyncio.create_task(batcher.submit(rows)))
            await asyncio.sleep(stagger)
        return await asyncio.gather(*tasks)
    finally:
        await batcher.stop()


def test_waiting_requests_share_one_call():
    enc = SlowEncoder()
    batcher = MicroBatcher(enc, max_rows=512)
    jobs = [rows_of(j, 3) for j in range(10)]
    # the first is encoded alone; the nine that arrive while it runs form one call
    out = asyncio.run(_run(batcher, jobs[:1] + jobs[1:], stagger=0.0))
    assert enc.calls[0] <= 30 and sum(enc.calls) == 30 and len(enc.calls) <= 2
    for j, got in enumerate(out):
        assert got.tolist() == [[j * 100 + i, i + 1] for i in range(3)]
    assert batcher.stats.requests == 10 and batcher.stats.rows == 30
    assert not enc.overlap


def test_a_lone_request_is_not_delayed():
    enc = SlowEncoder(delay=0.0)
    batcher = MicroBatcher(enc)
    start = time.perf_counter()
    asyncio.run(_run(batcher, [rows_of(0, 1)]))
    assert enc.calls == [1] and time.perf_counter() - start < 1.0


def test_calls_stay_within_max_rows():
    enc = SlowEncoder(delay=0.02)
    batcher = MicroBatcher(enc, max_rows=6)
    jobs = [rows_of(j, 4) for j in range(7)]
    out = asyncio.run(_run(batcher, jobs))
    assert max(enc.calls) <= 6 and sum(enc.calls) == 28
    assert [o[:, 0].tolist() for o in out] == [[j * 100 + i for i in range(4)] for j in range(7)]


def test_an_encoder_error_fails_its_requests_only():
    state = {"fail": True}

    def flaky(rows):
        if state.pop("fail", False):
            raise RuntimeError("boom")
        return np.zeros((len(rows), 2), np.float32)

    async def scenario():
        batcher = MicroBatcher(flaky)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(rows_of(0, 2))
            return await batcher.submit(rows_of(1, 3))
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()).shape == (3, 2)


def test_a_client_that_left_is_skipped():
    enc = SlowEncoder(delay=0.05)

    async def scenario():
        batcher = MicroBatcher(enc)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(rows_of(0, 1)))
            await asyncio.sleep(0.01)  # the first call is running
            gone = asyncio.create_task(batcher.submit(rows_of(1, 5)))
            kept = asyncio.create_task(batcher.submit(rows_of(2, 2)))
            await asyncio.sleep(0)
            gone.cancel()
            return await first, await kept
        finally:
            await batcher.stop()

    first, kept = asyncio.run(scenario())
    assert enc.calls == [1, 2] and kept[:, 0].tolist() == [200, 201]
