"""Dynamic batching: requests to one model queued, merged along the batch dim, run off the event
loop, and split back.

A model is batchable when every input and output has the same symbolic first dim. Requests
whose other dims and dtypes agree are merged up to max_batch rows, waiting at most max_delay
after the first; the others, and every request to a model without a batch dim, run alone. Runs
of one model go through one worker thread (the Session serialises them anyway), so the event
loop never blocks on inference. A merged run that fails is re-run request by request, so that
one request's bad values never fail the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from infer.errors import InferError

__all__ = ["ModelWorker", "Overloaded", "batch_dim"]


class Overloaded(InferError):
    """The model's queue is full (HTTP 503)."""


def batch_dim(inputs: Sequence[Any], outputs: Sequence[Any]) -> str | None:
    """Return the symbolic first dim every input and output shares, else None."""
    firsts = {spec.shape[0] if spec.shape else None for spec in [*inputs, *outputs]}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple[Any, ...] | None  # what must agree to merge; None: runs alone
    future: asyncio.Future[list[np.ndarray]]
    queued: float


class ModelWorker:
    """The queue and worker thread of one model (run: the Session's run(None, feeds))."""

    def __init__(
        self,
        name: str,
        run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
        batchable: bool,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observe: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.batchable = batchable and max_batch > 1
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._observe = observe or (lambda _name, _rows, _wait: None)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")

    @property
    def depth(self) -> int:
        """Requests waiting (not yet running)."""
        waiting = self._queue.qsize() if self._queue is not None else 0
        return waiting + (self._carry is not None)

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Return the model's outputs on feeds, run in a batch when it can be."""
        assert self._queue is not None, "start() the worker first"
        rows, key = self._batch_key(feeds)
        pending = _Pending(
            feeds, rows, key, asyncio.get_running_loop().create_future(), time.perf_counter()
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(
                f"model {self.name!r}: {self.max_queue} requests are already waiting; try again"
            ) from None
        return await pending.future

    def _batch_key(self, feeds: Mapping[str, np.ndarray]) -> tuple[int, tuple[Any, ...] | None]:
        arrays = list(feeds.values())
        if not self.batchable or not arrays or any(a.ndim == 0 for a in arrays):
            return 0, None
        rows = arrays[0].shape[0]
        if rows < 1 or rows > self.max_batch or any(a.shape[0] != rows for a in arrays):
            return rows, None
        key = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))
        return rows, key

    async def _next(self, timeout: float | None) -> _Pending | None:
        assert self._queue is not None
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            if first is None or first.future.done():  # its caller gave up (timed out)
                continue
            batch, rows = [first], first.rows
            if first.key is not None:
                deadline = loop.time() + self.max_delay_s
                while rows < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    more = await self._next(remaining)
                    if more is None:
                        break
                    if more.future.done():
                        continue
                    if more.key != first.key or rows + more.rows > self.max_batch:
                        self._carry = more  # runs first next time
                        break
                    batch.append(more)
                    rows += more.rows
            await self._execute(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for pending in batch:
            self._observe(self.name, len(batch), started - pending.queued)
        if len(batch) == 1:
            merged = batch[0].feeds
        else:
            merged = {
                name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
            }
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, merged)
        except Exception as exc:
            if len(batch) > 1:
                for pending in batch:
                    await self._execute([pending])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        offset = 0
        for pending in batch:
            if len(batch) == 1:
                result = outputs
            else:
                result = [o[offset : offset + pending.rows].copy() for o in outputs]
                offset += pending.rows
            if not pending.future.done():
                pending.future.set_result(result)
