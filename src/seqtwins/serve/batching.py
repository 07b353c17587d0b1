"""Server-side micro-batching: concurrent requests coalesced into one encoder call.

One worker task owns the encoder. Requests put their rows on an asyncio queue and await a
future; the worker takes the first waiting request and every other one already queued (up
to ``max_rows`` rows), runs the encoder once on all of them in a single background thread
(the event loop keeps accepting requests meanwhile), and hands each request its slice.
There is no timer: a lone request is encoded at once, and requests that arrive while the
encoder is busy form the next batch, so batches grow exactly when the load does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("seqtwins.serve")


@dataclass
class _Job:
    rows: list[np.ndarray]
    future: asyncio.Future[np.ndarray]


@dataclass
class BatchStats:
    """Counters: requests served, encoder calls, rows encoded, the largest call."""

    requests: int = 0
    calls: int = 0
    rows: int = 0
    largest: int = 0


class MicroBatcher:
    """Coalesces :meth:`submit` calls into calls of ``encode(rows) -> (len(rows), D)``.

    Use inside a running event loop: ``await start()``, ``await submit(rows)``, ``await
    stop()``. ``encode`` runs in one dedicated thread, never two calls at a time."""

    def __init__(
        self, encode: Callable[[list[np.ndarray]], np.ndarray], max_rows: int = 512
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be positive")
        self.encode = encode
        self.max_rows = max_rows
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None  # taken from the queue but did not fit the last call
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="seqtwins-encoder")
        self._task = asyncio.create_task(self._work(), name="seqtwins-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued(self) -> int:
        """Requests waiting for the encoder (not counting the call in progress)."""
        waiting = self._queue.qsize() if self._queue is not None else 0
        return waiting + (self._carry is not None)

    async def submit(self, rows: list[np.ndarray]) -> np.ndarray:
        """Embeddings ``(len(rows), D)`` of ``rows``, encoded with whatever else waits."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(rows, future))
        return await future

    def _take(self, first: _Job) -> list[_Job]:
        """``first`` and the queued jobs that fit in ``max_rows`` with it."""
        assert self._queue is not None
        jobs, total = [first], len(first.rows)
        while self._carry is None and not self._queue.empty():
            job = self._queue.get_nowait()
            if total + len(job.rows) > self.max_rows:
                self._carry = job  # first in the next call
                break
            jobs.append(job)
            total += len(job.rows)
        return [j for j in jobs if not j.future.done()]  # a client that left is skipped

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = await self._queue.get()
            jobs = self._take(first)
            if not jobs:
                continue
            rows = [r for j in jobs for r in j.rows]
            try:
                out = await loop.run_in_executor(self._executor, self.encode, rows)  # (R, D)
            except Exception as e:  # the requests fail, the worker lives on
                log.exception("encoder call failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.stats.requests += len(jobs)
            self.stats.calls += 1
            self.stats.rows += len(rows)
            self.stats.largest = max(self.stats.largest, len(rows))
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(out[start : start + len(j.rows)])
                start += len(j.rows)
